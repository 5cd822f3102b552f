"""End to end: `babelsip run --workers 2`, two core processes on one address.

Every call must complete whichever worker its messages land on (the kernel
spreads datagrams over the workers' SO_REUSEPORT sockets by source, TCP
connections by accept, and a worker hands a message whose Call-ID another
worker owns to it): with loss and retransmissions, with CANCEL, over UDP
and TCP. A registration made through one worker is found by the other
(the LMDB store the parent creates). A worker killed with SIGKILL under
load is restarted while the other keeps serving.

The workers' statistics are read from the status line each logs on SIGUSR1
(which the parent passes on).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e import routes_support as rs
from tests.e2e import sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None,
                       reason="sipp is not installed (Debian package sip-tester; `make test` installs it)"),
]

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "routes"
SERVING = re.compile(r"\[w(\d+)\] .*worker \d+ of (\d+) serving \(pid (\d+)\)")
TIMEOUT = 40.0


def start_fleet(args: list[str], workers: int = 2) -> sipp.ProxyProcess:
    port = sipp.free_port()
    proxy = sipp.start_babelsip(["run", "--workers", str(workers),
                                 "--listen", f"udp:{sipp.LOCALHOST}:{port}",
                                 "--listen", f"tcp:{sipp.LOCALHOST}:{port}", *args],
                                ready_timeout=40)
    # One worker may answer before the other serves: the parent says when all do.
    ready = rs.wait_until(lambda: f"{workers} worker processes serving" in proxy.log(), 40)
    assert ready, proxy.log()[-3000:]
    return proxy


def port_of(proxy: sipp.ProxyProcess) -> int:
    return proxy.listens[0][2]


def worker_pids(proxy: sipp.ProxyProcess) -> dict[int, int]:
    """Worker index -> pid of its latest start."""
    pids = {}
    for line in list(proxy.lines):
        match = SERVING.search(line)
        if match:
            pids[int(match.group(1))] = int(match.group(3))
    return pids


def worker_statistics(proxy: sipp.ProxyProcess, workers: int = 2) -> dict[int, dict]:
    """Each worker's statistics, from the status line it logs on SIGUSR1."""
    mark = proxy.log_mark()
    os.kill(proxy.pid, signal.SIGUSR1)
    found: dict[int, dict] = {}
    deadline = time.monotonic() + 10
    while len(found) < workers and time.monotonic() < deadline:
        for line in proxy.log_since(mark):
            match = re.search(r"\[w(\d+)\] babelsip: status: (\{.*\})$", line)
            if match:
                found[int(match.group(1))] = json.loads(match.group(2))
        time.sleep(0.05)
    assert len(found) == workers, proxy.log()[-3000:]
    return found


def why(proxy: sipp.ProxyProcess, *results: sipp.SippResult) -> str:
    return "\n".join([r.summary() for r in results] + ["babelsip log (end):\n" + proxy.log()[-4000:]])


def run_calls(tmp_path: Path, proxy: sipp.ProxyProcess, uac: str, uas: str, *, calls: int,
              rate: float, transport: str = "udp", lost: float | None = None,
              uas_port: int) -> tuple[sipp.SippResult, sipp.SippResult]:
    with sipp.start_sipp_server(uas, tmp_path, name=f"uas-{uuid.uuid4().hex[:6]}", port=uas_port,
                                transport=transport, timeout=TIMEOUT + 20, lost=lost) as server:
        result = sipp.run_sipp(uac, tmp_path, name=f"uac-{uuid.uuid4().hex[:6]}",
                               port=sipp.free_port(), remote=(sipp.LOCALHOST, port_of(proxy)),
                               transport=transport, calls=calls, rate=rate, timeout=TIMEOUT,
                               lost=lost)
        return result, server.stop(grace=10)


@pytest.fixture
def relay(tmp_path):
    """Two workers relaying every initial request to one uas port (UDP and TCP)."""
    uas_port = sipp.free_port()

    def start(transport: str = "udp") -> sipp.ProxyProcess:
        target = f"sip:{sipp.LOCALHOST}:{uas_port}" + (";transport=tcp" if transport == "tcp" else "")
        return start_fleet(["--relay-to", target])
    start.uas_port = uas_port
    return start


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_every_call_completes_across_two_workers(tmp_path, relay, transport):
    with relay(transport) as proxy:
        uac, uas = run_calls(tmp_path, proxy, "uac", "uas", calls=300, rate=150,
                             transport=transport, uas_port=relay.uas_port)
        assert uac.successful == 300 and uac.failed == 0, why(proxy, uac, uas)
        assert uas.successful == 300 and uas.failed == 0, why(proxy, uac, uas)
        stats = worker_statistics(proxy)
    # Both workers served calls, and messages were handed between them: the
    # Call-ID decides the owner, not the socket a message arrived on.
    assert all(s["core"]["client_txns"] > 0 for s in stats.values()), stats
    assert sum(s["fleet"]["handed"] for s in stats.values()) > 0, stats
    assert sum(s["fleet"]["handed"] for s in stats.values()) == \
        sum(s["fleet"]["received"] for s in stats.values()), stats
    assert all(s["internal_errors"] == 0 for s in stats.values()), stats


def test_calls_complete_with_loss_and_retransmissions(tmp_path, relay):
    with relay() as proxy:
        uac, uas = run_calls(tmp_path, proxy, "uac", "uas", calls=100, rate=50, lost=10,
                             uas_port=relay.uas_port)
    # 10 % loss both ways at each sipp: retransmissions (through any worker)
    # recover nearly every call, as with one process (test_sipp_relay.py).
    assert uac.successful >= 97, why(proxy, uac, uas)


def test_cancel_reaches_the_worker_that_holds_the_invite(tmp_path, relay):
    with relay() as proxy:
        uac, uas = run_calls(tmp_path, proxy, "uac_cancel", "uas_ring_cancel", calls=30, rate=30,
                             uas_port=relay.uas_port)
        assert uac.successful == 30 and uac.failed == 0, why(proxy, uac, uas)
        assert uas.successful == 30 and uas.failed == 0, why(proxy, uac, uas)


def test_a_registration_through_one_worker_is_found_by_the_other(tmp_path):
    routes = tmp_path / "routes"
    shutil.copytree(QUICKSTART, routes)
    with start_fleet(["--routes", str(routes)]) as proxy:
        server = rs.RoutesServer(port_of(proxy), routes, tmp_path, proxy)
        with rs.uas(tmp_path, "alice-phone") as (uas_port, uas):
            reg = sipp.run_sipp("services_register_auth", tmp_path, name="reg-alice",
                                port=sipp.free_port(), remote=(sipp.LOCALHOST, server.port),
                                calls=1, timeout=15,
                                extra=["-s", "alice", "-au", "alice", "-ap", "secret",
                                       "-key", "contact_port", str(uas_port)] + rs.ABORT_UNEXPECTED)
            assert reg.successful == 1, why(proxy, reg)
            # 40 calls have 40 Call-IDs: both workers look alice up.
            call = rs.run_uac(server, name="uac-to-alice", service="alice", calls=40, rate=40,
                              timeout=TIMEOUT)
            (phone,) = rs.stop_all(uas)
        assert call.successful == 40 and call.failed == 0, why(proxy, call, phone)
        stats = worker_statistics(proxy)
    assert all(s["core"]["consults"] >= 5 for s in stats.values()), stats


def test_a_killed_worker_is_restarted_and_the_other_keeps_serving(tmp_path, relay):
    with relay() as proxy:
        before = worker_pids(proxy)
        assert sorted(before) == [0, 1], proxy.log()[-2000:]
        with sipp.start_sipp_server("uas", tmp_path, name="uas-kill", port=relay.uas_port,
                                    timeout=TIMEOUT + 20) as server:
            uac = sipp.start_sipp("uac", tmp_path, name="uac-kill", port=sipp.free_port(),
                                  remote=(sipp.LOCALHOST, port_of(proxy)), calls=300, rate=75,
                                  timeout=TIMEOUT)
            with uac:
                time.sleep(1.5)
                os.kill(before[1], signal.SIGKILL)
                back = rs.wait_until(lambda: worker_pids(proxy).get(1) not in (None, before[1]), 15)
                under_load = uac.wait()
            assert back, proxy.log()[-3000:]
            # After the restart, every call completes again.
            after = sipp.run_sipp("uac", tmp_path, name="uac-after", port=sipp.free_port(),
                                  remote=(sipp.LOCALHOST, port_of(proxy)), calls=60, rate=60,
                                  timeout=TIMEOUT)
            server.stop(grace=10)
        assert proxy.alive(), proxy.log()[-3000:]
        assert worker_pids(proxy)[0] == before[0], "the other worker kept running"
    # Only the calls the killed worker held in that instant may fail.
    assert under_load.successful >= 250, why(proxy, under_load)
    assert after.successful == 60 and after.failed == 0, why(proxy, after)
    assert "worker 1 (pid %d) exited with status -9" % before[1] in proxy.log()


def test_sigterm_stops_every_worker_and_the_parent_cleanly(relay):
    proxy = relay()
    pids = list(worker_pids(proxy).values())
    assert proxy.stop(grace=15) == 0, proxy.log()[-3000:]
    assert rs.wait_until(lambda: not any(_alive(pid) for pid in pids), 5), pids
    assert "stopping the workers" in proxy.log()


def test_workers_stop_when_the_parent_is_killed(relay):
    proxy = relay()
    pids = list(worker_pids(proxy).values())
    try:
        os.kill(proxy.pid, signal.SIGKILL)
        # The lifeline pipe's end of file tells them.
        assert rs.wait_until(lambda: not any(_alive(pid) for pid in pids), 10), pids
    finally:
        proxy.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (not yet reaped by its parent's parent) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_one_management_socket_answers_for_every_worker(tmp_path, relay):
    ctl = tmp_path / "babelsip.ctl"
    with start_fleet(["--relay-to", f"sip:{sipp.LOCALHOST}:{relay.uas_port}",
                      "--ctl-socket", str(ctl)]) as proxy:
        uac, uas = run_calls(tmp_path, proxy, "uac", "uas", calls=60, rate=60,
                             uas_port=relay.uas_port)
        assert uac.successful == 60, why(proxy, uac, uas)
        answer = subprocess.run(sipp.babelsip_command() + ["ctl", "--socket", str(ctl), "--json",
                                                           "core.info"],
                                capture_output=True, text=True, timeout=20)
        assert answer.returncode == 0, answer.stderr
        info = json.loads(answer.stdout)
        assert info["workers"] == 2
        assert sorted(w["worker"] for w in info["per_worker"]) == [0, 1]
        assert {w["pid"] for w in info["per_worker"]} == set(worker_pids(proxy).values())
        stats = subprocess.run(sipp.babelsip_command() + ["ctl", "--socket", str(ctl), "--json",
                                                          "tm.stats"],
                               capture_output=True, text=True, timeout=20)
        assert stats.returncode == 0, stats.stderr
        # Summed over the workers: every INVITE and BYE of the 60 calls, once.
        assert json.loads(stats.stdout)["created"] >= 120, stats.stdout


def test_one_scrape_shows_the_whole_server(tmp_path, relay):
    from prometheus_client.parser import text_string_to_metric_families
    import urllib.request
    http_port = sipp.free_port()
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with start_fleet(["--relay-to", f"sip:{sipp.LOCALHOST}:{relay.uas_port}",
                      "--http", f"{sipp.LOCALHOST}:{http_port}", "--http-token-file", str(token),
                      "--ctl-socket", str(tmp_path / "ctl")]) as proxy:
        uac, uas = run_calls(tmp_path, proxy, "uac", "uas", calls=50, rate=50,
                             uas_port=relay.uas_port)
        assert uac.successful == 50 and uac.retransmissions == 0, why(proxy, uac, uas)
        with urllib.request.urlopen(f"http://{sipp.LOCALHOST}:{http_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("babelsip_worker_processes", ())] == 2
    # Every INVITE and BYE of the 50 calls, counted once, by whichever worker owned it.
    assert samples[("babelsip_sip_requests_received_total", (("method", "INVITE"),))] == 50, text
    assert samples[("babelsip_sip_requests_received_total", (("method", "BYE"),))] == 50, text
