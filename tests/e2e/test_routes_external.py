"""End to end: sipp -> `babelsip run --routes DIR` with external routes -> sipp.

Routes in Python, Perl, Java and a plain executable (JavaScript speaking
sdk/PROTOCOL.md with no SDK) run as worker processes of the server; a
`.remote` route is served by logic servers over TCP. Each test writes its
routes folder in tmp_path, starts its own uas(es), server, uac(s) and logic
servers on fresh 127.0.0.1 ports, and stops them all on the way out. Routes
record-route and the sipps are route-set aware (uac_rr/uas_rr), so only
initial requests reach the routes.

Covers issue 4's end-to-end list: every SDK through sipp; `kill -9` of a
worker mid-run; workers that print garbage, hang, or die at start; hot reload
of a Perl route under load; TCP failover between two logic servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.e2e import sipp
from tests.e2e import routes_support as rs

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None,
                       reason="sipp is not installed (Debian package sip-tester; `make test` installs it)"),
]

needs_perl = pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
needs_java = pytest.mark.skipif(shutil.which("javac") is None or shutil.which("java") is None,
                                reason="a JDK is not installed (Debian package default-jdk-headless)")
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")

SDK_PYTHON = sipp.REPO / "sdk" / "python"

# The same route in every language: record-route and relay to one uas.
RELAY = {
    "main.py": """\
def on_request(req):
    req.record_route()
    req.relay(f"sip:{{req.ruri_user}}@127.0.0.1:{port}")
""",
    "main.pl": """\
use strict;
use warnings;

sub on_request {{
    my ($req) = @_;
    $req->record_route;
    $req->relay('sip:' . $req->ruri_user . '@127.0.0.1:{port}');
}}

1;
""",
    "Main.java": """\
import babelsip.Request;
import babelsip.Route;

public class Main implements Route {{
    @Override
    public void onRequest(Request req) {{
        req.recordRoute();
        req.relay("sip:" + req.ruriUser() + "@127.0.0.1:{port}");
    }}
}}
""",
    # Any executable: JavaScript speaking the line-JSON protocol itself.
    "main.js": """\
#!/usr/bin/env node
'use strict';
const TARGET = '127.0.0.1:{port}';
function send(m) {{ process.stdout.write(JSON.stringify(m) + '\\n'); }}
require('readline').createInterface({{ input: process.stdin }})
  .on('line', (line) => {{
    if (!line.trim()) return;
    const msg = JSON.parse(line);
    if (msg.type === 'hello') {{
      send({{ type: 'ready', protocol: 1, sdk: 'e2e-node/1', hooks: ['on_request'] }});
    }} else if (msg.type === 'event') {{
      send({{ type: 'decision', id: msg.id, verbs: [
        ['record_route'], ['relay', 'sip:' + msg.event.ruri_user + '@' + TARGET]] }});
    }} else if (msg.type === 'ping') {{
      send({{ type: 'pong', id: msg.id }});
    }} else if (msg.type === 'shutdown') {{
      process.stdout.end(() => process.exit(0));
    }}
  }})
  .on('close', () => process.exit(0));
""",
}


def relay_route(file: str, port: int) -> str:
    return RELAY[file].format(port=port)


# --------------------------------------------------------------------------
# every SDK


@pytest.mark.parametrize("file, toml", [
    ("main.py", ""),
    pytest.param("main.pl", "", marks=needs_perl),
    pytest.param("Main.java", "", marks=needs_java),
    pytest.param("main.js", "", marks=needs_node),
], ids=["python", "perl", "java", "exec-node"])
def test_sdk_route_relays_300_calls(tmp_path, file, toml):
    calls = 300
    with rs.uas(tmp_path, "uas") as (uas_port, uas):
        files = {file: relay_route(file, uas_port)}
        if toml:
            files["routes.toml"] = toml
        routes = rs.make_routes(tmp_path / "routes", files, executables=("main.js",))
        # Java: javac of the SDK (first run) and of the route happen at load.
        with rs.routes_server(routes, tmp_path, ready_timeout=60) as server:
            # Routes are loaded before the server listens: fail fast, and clearly.
            assert server.log_lines(r"route main: generation 1 loaded"), server.why()
            uac = rs.run_uac(server, name="uac", calls=calls, rate=150)
            (uas_result,) = rs.stop_all(uas)
    rs.assert_clean(server, uac, calls, uas_result)


# --------------------------------------------------------------------------
# a worker killed mid-run


SLOW_RELAY_PY = """\
import time


def on_request(req):
    time.sleep(0.02)   # some work, so that a worker has events in flight when it dies
    req.record_route()
    req.relay(f"sip:{{req.ruri_user}}@127.0.0.1:{port}")
"""


def test_kill_9_of_a_worker_mid_run(tmp_path):
    calls, rate = 600, 100
    toml = "[routes.main]\npool = 2\n"
    with rs.uas(tmp_path, "uas") as (uas_port, uas):
        routes = rs.make_routes(tmp_path / "routes", {
            "main.py": SLOW_RELAY_PY.format(port=uas_port), "routes.toml": toml})
        with rs.routes_server(routes, tmp_path) as server:
            before = server.workers("babelsip_sdk.runner")
            assert len(before) == 2, f"expected 2 workers, found {before}\n" + server.why()
            victim = before[0]
            with rs.start_uac(server, name="uac", calls=calls, rate=rate) as uac:
                assert rs.wait_until(lambda: uas.snapshot().created >= 150, 10), server.why(uas.snapshot())
                os.kill(victim, signal.SIGKILL)
                assert server.wait_log(rf"pid {victim}\D.*killed by SIGKILL", 5), server.why()
                replaced = rs.wait_until(
                    lambda: [p for p in server.workers("babelsip_sdk.runner") if p not in before], 5)
                assert replaced, "the killed worker was not restarted\n" + server.why()
                result = uac.wait()
            assert server.ping() == 200, server.why(result)
            after = rs.run_uac(server, name="uac-after", calls=200, rate=100)
            (uas_result,) = rs.stop_all(uas)
    # The killed worker's in-flight calls got the fallback (500): sipp counts
    # those as unexpected messages. Nothing else may fail, and only a few.
    assert result.successful + result.failed == calls, server.why(result)
    assert result.failed <= 0.05 * calls, server.why(result)
    assert set(result.failure_reasons) <= {"FailedUnexpectedMessage"}, server.why(result)
    if result.failed:
        assert server.log_lines(r"route main#\d+ on_request: .*\[crash\]"), server.why(result)
    assert after.successful == 200 and after.failed == 0, server.why(after)
    assert uas_result.successful == result.successful + 200, server.why(result, after, uas_result)
    assert server.alive(), server.why(result, after)


# --------------------------------------------------------------------------
# workers that misbehave

GARBAGE_WORKER = """\
#!/bin/sh
# Answers the handshake and pings, then writes garbage for every event.
while IFS= read -r line; do
  case "$line" in
    *'"type":"hello"'*) printf '%s\\n' '{"type":"ready","protocol":1,"hooks":["on_request"]}' ;;
    *'"type":"event"'*) printf '%s\\n' 'this is not JSON {{{' ;;
    *'"type":"ping"'*)
      id=$(printf '%s' "$line" | sed 's/.*"id":\\([0-9]*\\).*/\\1/')
      printf '{"type":"pong","id":%s}\\n' "$id" ;;
  esac
done
"""

DEAD_WORKER = """\
#!/bin/sh
echo "cannot open /nonexistent/dialplan.db: no such file" >&2
exit 3
"""

HANGING_ROUTE = """\
import time


def on_request(req):
    time.sleep(3600)   # never answers, and (one thread) never answers pings either
"""

MISBEHAVING_TOML = """\
[[match]]
route = "garbage"
ruri_user = "^garbage$"

[[match]]
route = "hang"
ruri_user = "^hang$"

[[match]]
route = "dead"
ruri_user = "^dead$"

[routes.garbage]
pool = 1
deadline = 0.5
fallback = 580

[routes.hang]
pool = 1
deadline = 0.3
fallback = 581

[routes.dead]
pool = 1
deadline = 0.5
fallback = 582
"""
MISBEHAVING = {"garbage": 580, "hang": 581, "dead": 582}


def test_misbehaving_workers_get_fallbacks_and_the_server_keeps_serving(tmp_path):
    misbehaving_calls = 6
    with rs.uas(tmp_path, "uas") as (uas_port, uas):
        routes = rs.make_routes(tmp_path / "routes", {
            "main.py": relay_route("main.py", uas_port), "garbage": GARBAGE_WORKER,
            "dead": DEAD_WORKER, "hang.py": HANGING_ROUTE, "routes.toml": MISBEHAVING_TOML,
        }, executables=("garbage", "dead"))
        with rs.routes_server(routes, tmp_path) as server:
            scenarios = {route: rs.expect_final_scenario(tmp_path, code, within=1.5)
                         for route, code in MISBEHAVING.items()}
            results, normal_result, after, uas_result = rs.run_beside_normal_calls(
                server, uas, scenarios, calls_each=misbehaving_calls)

    for route, result in results.items():
        assert result.successful == misbehaving_calls and result.failed == 0, (
            f"route {route}: every call must get its fallback {MISBEHAVING[route]}\n" + server.why(result))
    rs.assert_clean(server, normal_result, 100)
    assert after.successful == 50 and after.failed == 0, server.why(after)
    assert uas_result.successful == 150, server.why(normal_result, after, uas_result)
    # Why, in the server's log: a protocol error, a hang, a crash at start
    # quoting the worker's last stderr line.
    assert server.log_lines(r"route garbage\b.*protocol"), server.why()
    assert server.log_lines(r"route hang\b.*(hung|missed \d+ pings|deadline)"), server.why()
    assert server.log_lines(r"route dead\b.*exited with status 3.*nonexistent/dialplan\.db"), server.why()


# --------------------------------------------------------------------------
# hot reload of a Perl route under load


@needs_perl
def test_perl_route_hot_reload_under_load(tmp_path):
    calls, rate = 700, 100
    with rs.uas(tmp_path, "uas-a") as (port_a, uas_a), rs.uas(tmp_path, "uas-b") as (port_b, uas_b):
        routes = rs.make_routes(tmp_path / "routes", {"main.pl": relay_route("main.pl", port_a)})
        with rs.routes_server(routes, tmp_path) as server:
            with rs.start_uac(server, name="uac", calls=calls, rate=rate) as uac:
                assert rs.wait_until(lambda: uas_a.snapshot().created >= 200, 10), server.why(uas_a.snapshot())
                rs.write_atomically(routes / "main.pl", relay_route("main.pl", port_b))
                assert server.wait_log(r"route main: generation 2 loaded", 5), server.why()
                assert rs.wait_until(lambda: uas_b.snapshot().created > 0, 5), server.why(uas_b.snapshot())
                assert uac.proc.poll() is None, "the run ended before the reload: slow it down"
                result = uac.wait()
            a, b = rs.stop_all(uas_a, uas_b)
    rs.assert_clean(server, result, calls, a, b)
    assert a.successful > 0 and b.successful > 0, server.why(result, a, b)


# --------------------------------------------------------------------------
# TCP logic servers

LOGIC_ROUTE = """\
import os

import time

TARGET = os.environ["E2E_TARGET"]   # each logic server relays to its own uas


def on_request(req):
    time.sleep(0.005)   # some work, so that events are in flight when a server dies
    req.record_route()
    req.relay(f"sip:{req.ruri_user}@{TARGET}")
"""


def start_logic_server(route: str, port: int, target_port: int, log_path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SDK_PYTHON), "E2E_TARGET": f"127.0.0.1:{target_port}"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "babelsip_sdk", "serve", "--listen", f"127.0.0.1:{port}", route],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    if not rs.wait_until(lambda: proc.poll() is not None or sipp.tcp_connectable(port), 10):
        rs.stop_gently(proc)
        raise RuntimeError(f"logic server on {port} did not start: {log_path.read_text()}")
    if proc.poll() is not None:
        raise RuntimeError(f"logic server on {port} exited: {log_path.read_text()}")
    return proc


def test_tcp_route_fails_over_when_the_primary_logic_server_stops(tmp_path):
    calls, rate = 600, 100
    logic = tmp_path / "logic" / "route.py"
    logic.parent.mkdir()
    logic.write_text(LOGIC_ROUTE)
    primary_port, backup_port = sipp.free_port(), sipp.free_port()
    with rs.uas(tmp_path, "uas-primary") as (port_a, uas_a), \
         rs.uas(tmp_path, "uas-backup") as (port_b, uas_b):
        primary = start_logic_server(str(logic), primary_port, port_a, tmp_path / "primary.log")
        try:
            backup = start_logic_server(str(logic), backup_port, port_b, tmp_path / "backup.log")
            try:
                remote = (f'endpoints = ["127.0.0.1:{primary_port}", "127.0.0.1:{backup_port}"]\n'
                          'balance = "failover"\n')
                routes = rs.make_routes(tmp_path / "routes", {"main.remote": remote})
                with rs.routes_server(routes, tmp_path) as server:
                    with rs.start_uac(server, name="uac", calls=calls, rate=rate) as uac:
                        assert rs.wait_until(lambda: uas_a.snapshot().created >= 150, 10), \
                            server.why(uas_a.snapshot())
                        primary.kill()   # SIGKILL: the logic host goes away without a goodbye
                        primary.wait(timeout=5)
                        assert rs.wait_until(lambda: uas_b.snapshot().created > 0, 5), \
                            server.why(uas_b.snapshot())
                        assert uac.proc.poll() is None, "the run ended before the failover"
                        result = uac.wait()
                    a, b = rs.stop_all(uas_a, uas_b)
            finally:
                rs.stop_gently(backup)
        finally:
            rs.stop_gently(primary)
    # Events in flight on the primary when it died get the fallback (500):
    # the host cannot know whether the logic server decided them, and the
    # protocol has no retry of an event on another endpoint. A few at most.
    assert result.successful + result.failed == calls, server.why(result, a, b)
    assert result.failed <= 0.02 * calls, server.why(result, a, b)
    assert set(result.failure_reasons) <= {"FailedUnexpectedMessage"}, server.why(result)
    assert a.successful > 0 and b.successful > 0, server.why(result, a, b)
    assert a.successful + b.successful == result.successful, server.why(result, a, b)
    assert server.alive(), server.why(result)
