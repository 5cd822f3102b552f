"""TcpRuntime against real `python -m babelsip_sdk serve` logic servers."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from host.routes.runtime import LoadError, RuntimeSpec, ScriptError
from runtimes.jsonline import TcpRuntime

SDK = Path(__file__).resolve().parents[2] / "sdk" / "python"
ROUTE = """
import os, time
CONCURRENCY = 8  # handlers on threads: pings are answered while one sleeps
def on_request(req):
    if req.ruri_user == "slow":
        time.sleep(0.5)
    req.reply(200, os.environ["SERVER_NAME"])
"""


def start_server(route: Path, name: str, port: int = 0):
    env = dict(os.environ, PYTHONPATH=str(SDK), SERVER_NAME=name)
    proc = subprocess.Popen([sys.executable, "-m", "babelsip_sdk", "serve", "--listen",
                             f"127.0.0.1:{port}", str(route)], env=env, stderr=subprocess.PIPE)
    line = proc.stderr.readline().decode()
    m = re.search(r"on 127\.0\.0\.1:(\d+)", line)
    assert m, line
    return proc, int(m.group(1))


@pytest.fixture
def servers(tmp_path):
    route = tmp_path / "logic.py"
    route.write_text(ROUTE)
    procs = []

    def start(name, port=0):
        proc, port = start_server(route, name, port)
        procs.append(proc)
        return proc, port

    yield start
    for p in procs:
        p.kill()
        p.wait()
        p.stderr.close()


def event(user="bob"):
    return {"hook": "on_request", "method": "INVITE", "ruri": f"sip:{user}@x", "ruri_user": user,
            "headers": [], "vars": {}}


def spec(tmp_path, endpoints, **opts):
    options = (("endpoints", tuple(endpoints)), ("ping_interval", 0.2), ("grace", 0.3)) + tuple(opts.items())
    return RuntimeSpec("remote", tmp_path / "remote.remote", "tcp", options=options)


async def primary_and_backup(tmp_path, port_a, port_b) -> TcpRuntime:
    """A started failover pool of the two servers, both connected."""
    rt = TcpRuntime(spec(tmp_path, [f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"]))
    await rt.start()
    with trio.fail_after(5):
        while rt.statistics()["ready"] < 2:
            await trio.sleep(0.02)
    return rt


async def test_failover_between_two_servers_and_back(servers, tmp_path):
    (a, port_a), (b, port_b) = servers("A"), servers("B")
    rt = await primary_and_backup(tmp_path, port_a, port_b)
    try:
        assert (await rt.handle("on_request", event())).reason == "A"   # primary first
        outcome = []

        async def slow():
            try:
                outcome.append((await rt.handle("on_request", event("slow"))).reason)
            except ScriptError as e:
                outcome.append(e.kind)

        async with trio.open_nursery() as n:
            n.start_soon(slow)
            await trio.sleep(0.1)
            a.kill()            # the primary stops with an event in flight:
            a.wait()
        assert outcome == ["B"]  # it goes to the backup, not to the fallback
        with trio.fail_after(3):
            assert (await rt.handle("on_request", event())).reason == "B"
        stats = rt.statistics()
        assert [e["up"] for e in stats["endpoints"]] == [False, True]
        # the primary comes back on its port: reconnect with backoff, then traffic returns
        servers("A2", port_a)
        with trio.fail_after(8):
            while (await rt.handle("on_request", event())).reason != "A2":
                await trio.sleep(0.1)
    finally:
        await rt.aclose()


async def test_events_lost_with_a_connection_go_once_to_the_next_server(servers, tmp_path):
    """submit(), the path the core takes: events in flight when the primary
    dies are answered by the backup; when the backup dies too, they get
    the loss (fallback), not a third try."""
    (a, port_a), (b, port_b) = servers("A"), servers("B")
    rt = await primary_and_backup(tmp_path, port_a, port_b)
    try:
        async def answers_when_killed(count, server):
            """`count` slow events submitted, then `server` killed under them."""
            answers = []

            def done(result):
                answers.append(result.reason if not isinstance(result, ScriptError) else result.kind)

            deadline = time.monotonic() + 3   # the sessions' clock
            for _ in range(count):
                assert rt.submit("on_request", event("slow"), deadline, done)
            await trio.sleep(0.1)
            server.kill()
            server.wait()
            with trio.fail_after(3):
                while len(answers) < count:
                    await trio.sleep(0.02)
            return answers

        assert await answers_when_killed(3, a) == ["B", "B", "B"]
        # the backup dies too, with none left: the loss, not another try
        assert await answers_when_killed(2, b) == ["crash", "crash"]
    finally:
        await rt.aclose()


async def test_least_balance_uses_both(servers, tmp_path):
    _, pa = servers("A")
    _, pb = servers("B")
    rt = TcpRuntime(spec(tmp_path, [f"127.0.0.1:{pa}", f"127.0.0.1:{pb}"], balance="least"))
    await rt.start()
    names = []

    async def one():
        names.append((await rt.handle("on_request", event("slow"))).reason)

    try:
        with trio.fail_after(5):
            while rt.statistics()["ready"] < 2:
                await trio.sleep(0.02)
        async with trio.open_nursery() as n:
            for _ in range(4):
                n.start_soon(one)
        assert sorted(set(names)) == ["A", "B"]
    finally:
        await rt.aclose()


async def test_start_with_one_endpoint_down_then_all_down(servers, tmp_path):
    _, port = servers("A")
    with trio.socket.socket() as s:          # a port with nobody listening
        await s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    rt = TcpRuntime(spec(tmp_path, [f"127.0.0.1:{dead}", f"127.0.0.1:{port}"]))
    await rt.start()
    try:
        assert (await rt.handle("on_request", event())).reason == "A"
    finally:
        await rt.aclose()
    with pytest.raises(LoadError, match="cannot start"):
        await TcpRuntime(spec(tmp_path, [f"127.0.0.1:{dead}"])).start()


async def test_remote_file_lists_endpoints(servers, tmp_path):
    _, port = servers("A")
    path = tmp_path / "lcr.remote"
    path.write_text(f'endpoints = ["127.0.0.1:{port}"]\nbalance = "least"\n')
    rt = TcpRuntime(RuntimeSpec("lcr", path, "tcp"))
    await rt.start()
    try:
        assert rt.balance == "least"
        assert (await rt.handle("on_request", event())).reason == "A"
    finally:
        await rt.aclose()
    path.write_text('endpoints = ["nohost"]\n')
    with pytest.raises(LoadError, match="HOST:PORT"):
        await TcpRuntime(RuntimeSpec("lcr", path, "tcp")).start()
    path.write_text("endpoints = [\n")
    with pytest.raises(LoadError, match="bad TOML"):
        await TcpRuntime(RuntimeSpec("lcr", path, "tcp")).start()
