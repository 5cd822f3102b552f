"""End to end: TLS and WebSocket listeners with `babelsip run --workers 2`.

A connection lives in the worker that accepted it; a message on it whose
Call-ID the other worker owns is handed over, and the owner's answers and
requests go back through the holder (a SEND frame). These tests make sure
that really happens, from the workers' own statistics (SIGUSR1 status
lines, as test_workers.py reads them):

- TLS into two workers: sipp → babelsip A → one TLS connection → fleet →
  sipp uas; and out of two workers: sipp → fleet → TLS → babelsip B → uas.
- A WebSocket UA (tests/e2e/ws_client.py) calling through the fleet, with
  Call-IDs chosen so that both workers own some of its calls.
- The same UA registered over ws: on the quickstart routes and called from
  a UDP sipp caller: calls whose Call-ID the worker not holding the UA's
  connection owns reach it too (the binding's flow, sent through the holder).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from host.fleet.ownership import owner_of
from tests.e2e import routes_support as rs
from tests.e2e import sipp
from tests.e2e.test_workers import QUICKSTART, TIMEOUT, why, worker_statistics
from tests.e2e.ws_client import SDP, WsUA
from tests.shell.tls_certs import make_pki, openssl_available

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None, reason="sipp is not installed (Debian package sip-tester)"),
    pytest.mark.skipif(not openssl_available(), reason="the openssl command is not installed"),
]

CALLS = 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_flags(pki):
    return ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-ca", str(pki.ca),
            "--ctl-socket", "none"]


def start_fleet(listen: list[str], args: list[str]) -> sipp.ProxyProcess:
    flags = [flag for entry in listen for flag in ("--listen", entry)]
    proxy = sipp.start_babelsip(["run", "--workers", "2", *flags, *args], ready_timeout=40)
    assert rs.wait_until(lambda: "2 worker processes serving" in proxy.log(), 40), proxy.log()[-3000:]
    return proxy


def relay_calls(tmp_path: Path, entry_port: int, uas_port: int, calls: int = CALLS) -> sipp.SippResult:
    with sipp.start_sipp_server(str(rs.quick_uas_rr(tmp_path)), tmp_path, name=f"uas-{uuid.uuid4().hex[:6]}",
                                port=uas_port, timeout=TIMEOUT):
        return sipp.run_sipp("uac_rr", tmp_path, name=f"uac-{uuid.uuid4().hex[:6]}", port=sipp.free_port(),
                             remote=(sipp.LOCALHOST, entry_port), calls=calls, rate=20, timeout=TIMEOUT)


def assert_handed_through_the_holder(stats: dict, transport: str) -> None:
    """One worker holds the connection; the other owned some of the calls,
    so it was handed their messages and sent its own through the holder."""
    held = {w: s["transports"][transport]["accepted"] for w, s in stats.items()}
    assert sorted(held.values()) == [0, 1], stats
    other = next(w for w, n in held.items() if n == 0)
    assert stats[other]["fleet"]["received"] > 0, stats
    assert stats[other]["fleet"]["sent_via"] > 0, stats
    holder = 1 - other
    assert stats[holder]["fleet"]["sends_received"] == stats[other]["fleet"]["sent_via"], stats
    assert all(s["internal_errors"] == 0 for s in stats.values()), stats


def test_calls_over_a_tls_connection_into_two_workers(tmp_path, pki):
    uas, a_udp, a_tls, f_udp, f_tls = (sipp.free_port() for _ in range(5))
    fleet = start_fleet([f"udp:127.0.0.1:{f_udp}", f"tls:127.0.0.1:{f_tls}"],
                        ["--relay-to", f"sip:127.0.0.1:{uas}", *tls_flags(pki)])
    with fleet, sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{a_udp}",
                                     "--listen", f"tls:127.0.0.1:{a_tls}",
                                     "--relay-to", f"sip:127.0.0.1:{f_tls};transport=tls",
                                     *tls_flags(pki)]) as a:
        result = relay_calls(tmp_path, a_udp, uas)
        assert result.successful == CALLS and result.failed == 0, why(fleet, result) + a.log()[-2000:]
        stats = worker_statistics(fleet)
    assert_handed_through_the_holder(stats, "tls")
    assert all(s["transports"]["tls"]["handshake_failures"] == 0 for s in stats.values()), stats


def test_calls_out_of_two_workers_over_tls(tmp_path, pki):
    uas, f_udp, f_tls, b_udp, b_tls = (sipp.free_port() for _ in range(5))
    b = sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{b_udp}", "--listen", f"tls:127.0.0.1:{b_tls}",
                             "--relay-to", f"sip:127.0.0.1:{uas}", *tls_flags(pki)])
    with b, start_fleet([f"udp:127.0.0.1:{f_udp}", f"tls:127.0.0.1:{f_tls}"],
                        ["--relay-to", f"sips:127.0.0.1:{b_tls}", *tls_flags(pki)]) as fleet:
        result = relay_calls(tmp_path, f_udp, uas)
        assert result.successful == CALLS and result.failed == 0, why(fleet, result) + b.log()[-2000:]
        stats = worker_statistics(fleet)
    # Both workers owned calls; each reached B over TLS, verified.
    assert all(s["core"]["client_txns"] > 0 for s in stats.values()), stats
    assert sum(s["fleet"]["handed"] for s in stats.values()) > 0, stats
    assert all(s["transports"]["tls"]["handshake_failures"] == 0 for s in stats.values()), stats


def test_a_websocket_ua_calls_through_two_workers(tmp_path):
    uas, f_udp, f_ws = (sipp.free_port() for _ in range(3))
    call_ids = [f"ws-{i}@fleet" for i in range(1, 5)]
    assert {owner_of(f"\r\nCall-ID: {c}\r\n\r\n".encode(), 2) for c in call_ids} == {0, 1}
    with start_fleet([f"udp:127.0.0.1:{f_udp}", f"ws:127.0.0.1:{f_ws}"],
                     ["--relay-to", f"sip:127.0.0.1:{uas}", "--ctl-socket", "none"]) as fleet:
        with sipp.start_sipp_server("uas", tmp_path, port=uas, timeout=TIMEOUT) as server:
            ua = WsUA("127.0.0.1", f_ws, "carol")
            try:
                results = [ua.call(f"sip:dave@127.0.0.1:{uas}", call_id) for call_id in call_ids]
            finally:
                ua.close()
            server.stop(grace=5)
        assert results == [(200, 200)] * len(call_ids), results + [fleet.log()[-3000:]]
        stats = worker_statistics(fleet)
    assert_handed_through_the_holder(stats, "ws")


def test_a_ua_registered_over_websocket_is_called_through_either_worker(tmp_path):
    routes = tmp_path / "routes"
    shutil.copytree(QUICKSTART, routes)
    udp, ws = sipp.free_port(), sipp.free_port()
    # sipp numbers its calls from 1: these Call-IDs are owned by both workers.
    calls = 4
    call_ids = [f"ws-{i}@fleet" for i in range(1, calls + 1)]
    owners = [owner_of(f"\r\nCall-ID: {c}\r\n\r\n".encode(), 2) for c in call_ids]
    assert set(owners) == {0, 1}
    with start_fleet([f"udp:127.0.0.1:{udp}", f"ws:127.0.0.1:{ws}"],
                     ["--routes", str(routes), "--ctl-socket", "none"]) as fleet:
        ua = WsUA("127.0.0.1", ws, "bob")
        try:
            assert ua.register("secret", "babelsip") == 200
            holder = next(w for w, s in worker_statistics(fleet).items()
                          if s["transports"]["ws"]["connections"] == 1)
            caller = sipp.start_sipp("uac_rr", tmp_path, port=sipp.free_port(), remote=("127.0.0.1", udp),
                                     calls=calls, timeout=TIMEOUT,
                                     extra=["-s", "bob", "-cid_str", "ws-%u@fleet", "-l", "1"])
            reached = []
            with caller:
                for _ in range(calls):
                    invite = ua.receive(timeout=15)
                    assert invite is not None and invite.method == "INVITE", fleet.log()[-3000:]
                    assert ua.invalid in invite.uri    # over the flow it registered on
                    reached.append(invite.call_id)
                    ua.answer(invite, 200, "OK", to_tag=f"t{len(reached)}", body=SDP)
                    ack = ua.receive(timeout=10)
                    assert ack is not None and ack.method == "ACK", fleet.log()[-3000:]
                    bye = ua.receive(timeout=10)
                    assert bye is not None and bye.method == "BYE", fleet.log()[-3000:]
                    ua.answer(bye, 200, "OK")
                result = caller.wait(30)
            assert result.successful == calls and result.failed == 0, why(fleet, result)
        finally:
            ua.close()
        stats = worker_statistics(fleet)
    assert reached == call_ids
    # Calls owned by the worker that does not hold bob's connection reached him.
    assert any(owner != holder for owner in owners), (owners, holder)
    other = 1 - holder
    assert stats[other]["fleet"]["sent_via"] > 0, stats
    assert all(s["internal_errors"] == 0 for s in stats.values()), stats


def test_tls_listener_with_workers_still_needs_its_certificate():
    out = subprocess.run(sipp.babelsip_command() + ["run", "--workers", "2", "--listen", "wss:127.0.0.1:0",
                                                    "--relay-to", "sip:127.0.0.1:9", "--ctl-socket", "none"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "a tls: or wss: listener needs --tls-cert FILE and --tls-key FILE" in out.stderr
