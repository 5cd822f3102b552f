"""End to end over TLS and WebSocket, with real processes on 127.0.0.1.

- TLS between two babelsip instances: sipp uac (UDP) → babelsip A → TLS →
  babelsip B → sipp uas (UDP), record-routed, every call complete (INVITE,
  ACK, BYE all cross the TLS hop); and the same A with a next hop whose
  certificate it does not trust: the calls fail at once (503 → 500), no
  clear-text fallback.
- The same over a WebSocket hop, ws: and wss: (RFC 7118): A opens a
  client WebSocket connection to B's listener, offering `sip`, over TLS
  with B's certificate verified for wss, and every message of every call
  crosses on the connection A opened.
- sipp itself over TLS (`-t l1`) when the installed sipp is built with
  OpenSSL (Debian's is not: skipped with that reason).
- A WebSocket UA (tests/e2e/ws_client.py, wsproto) registers with digest on
  the quickstart routes over ws:, and a sipp uac on UDP calls it: the
  INVITE reaches it over the connection it registered on (its Contact has
  an .invalid host), it answers, the ACK and the BYE come the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e import routes_support as rs
from tests.e2e import sipp
from tests.e2e.ws_client import SDP, WsUA
from tests.shell.tls_certs import make_pki, openssl_available

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None, reason="sipp is not installed (Debian package sip-tester)"),
    pytest.mark.skipif(not openssl_available(), reason="the openssl command is not installed"),
]

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "routes"
CALLS = 5


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_flags(pki, ca=None):
    return ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-ca", str(ca or pki.ca),
            "--ctl-socket", "none"]


def run_calls(workdir: Path, port_a: int, uas_port: int, calls: int = CALLS):
    with sipp.start_sipp_server(str(rs.quick_uas_rr(workdir)), workdir, port=uas_port, timeout=30):
        return sipp.run_sipp("uac_rr", workdir, port=sipp.free_port(), remote=(sipp.LOCALHOST, port_a),
                             calls=calls, rate=10, timeout=20)


def test_calls_cross_a_tls_hop_between_two_babelsip(tmp_path, pki):
    uas = sipp.free_port()
    a_udp, a_tls, b_udp, b_tls = (sipp.free_port() for _ in range(4))
    b = sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{b_udp}", "--listen", f"tls:127.0.0.1:{b_tls}",
                             "--relay-to", f"sip:127.0.0.1:{uas}", *tls_flags(pki)])
    with b, sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{a_udp}",
                                 "--listen", f"tls:127.0.0.1:{a_tls}",
                                 "--relay-to", f"sip:127.0.0.1:{b_tls};transport=tls",
                                 *tls_flags(pki)]) as a:
        result = run_calls(tmp_path, a_udp, uas)
        assert result.successful == CALLS and result.failed == 0, result.summary() + a.log()[-3000:]
    assert "handshake" not in a.log() + b.log()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_calls_cross_a_websocket_hop_between_two_babelsip(tmp_path, pki, scheme):
    uas = sipp.free_port()
    a_udp, a_ws, b_udp, b_ws = (sipp.free_port() for _ in range(4))
    hop = f"sip:127.0.0.1:{b_ws};transport=ws" if scheme == "ws" else f"sips:127.0.0.1:{b_ws};transport=ws"
    b = sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{b_udp}", "--listen", f"{scheme}:127.0.0.1:{b_ws}",
                             "--relay-to", f"sip:127.0.0.1:{uas}", *tls_flags(pki)])
    with b, sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{a_udp}",
                                 "--listen", f"{scheme}:127.0.0.1:{a_ws}",
                                 "--relay-to", hop, *tls_flags(pki)]) as a:
        result = run_calls(tmp_path, a_udp, uas)
        assert result.successful == CALLS and result.failed == 0, result.summary() + a.log()[-3000:] + b.log()[-3000:]
        a_stats, b_stats = status_of(a)[scheme], status_of(b)[scheme]
    # A opened one connection and B accepted it: the in-dialog requests
    # (ACK, BYE) and all answers reused it.
    assert b_stats["accepted"] == 1 and a_stats["accepted"] == 0, (a_stats, b_stats)
    assert a_stats["handshake_failures"] == b_stats["handshake_failures"] == 0
    assert b_stats["upgrades_refused"] == 0


def status_of(proxy: sipp.ProxyProcess) -> dict:
    """The transports' statistics, from the status line SIGUSR1 logs."""
    mark = proxy.log_mark()
    os.kill(proxy.pid, signal.SIGUSR1)
    found = rs.wait_until(lambda: next((line for line in proxy.log_since(mark) if "status: {" in line), None), 10)
    assert found, proxy.log()[-2000:]
    return json.loads(found.split("status: ", 1)[1])["transports"]


def test_untrusted_tls_next_hop_fails_the_request_at_once_and_never_falls_back(tmp_path, pki):
    other = make_pki(tmp_path / "other", name="not trusted by A")
    uas = sipp.free_port()
    a_udp, a_tls, b_udp, b_tls = (sipp.free_port() for _ in range(4))
    b = sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{b_udp}", "--listen", f"tls:127.0.0.1:{b_tls}",
                             "--relay-to", f"sip:127.0.0.1:{uas}", *tls_flags(pki)])
    with b, sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{a_udp}",
                                 "--listen", f"tls:127.0.0.1:{a_tls}",
                                 "--relay-to", f"sips:127.0.0.1:{b_tls}",
                                 *tls_flags(pki, ca=other.ca)]) as a:
        local = sipp.free_port()
        request = sipp.options_request("127.0.0.1", uas, local).replace(
            f"OPTIONS sip:127.0.0.1:{uas}".encode(), f"OPTIONS sip:bob@127.0.0.1:{uas}".encode())
        started = time.monotonic()
        replies = sipp.udp_exchange(a_udp, [request], local_port=local, settle=1.0, deadline=10)
        # The branch's transport error is a 503, which reaches the caller as 500
        # (§16.7), at once rather than at Timer F; nothing went out in the clear.
        assert [sipp.status_code(r) for r in replies] == [500], replies
        assert time.monotonic() - started < 5
        assert "tls handshake with 127.0.0.1" in a.log(), a.log()[-3000:]
        assert "OPTIONS" not in b.log()


def sipp_has_tls() -> bool:
    if sipp.sipp_binary() is None:
        return False
    out = subprocess.run([sipp.sipp_binary(), "-t", "l1", "-sn", "uac", "127.0.0.1:9", "-m", "1",
                          "-timeout", "1s", "-nostdin"], capture_output=True, text=True, timeout=10)
    return "compile SIPp with OpenSSL" not in out.stdout + out.stderr


@pytest.mark.skipif(not sipp_has_tls(), reason="the installed sipp is built without TLS "
                                                "(\"To use a TLS transport you must compile SIPp with OpenSSL\")")
def test_sipp_uac_over_tls_through_babelsip_to_a_udp_uas(tmp_path, pki):
    uas, udp, tls = sipp.free_port(), sipp.free_port(), sipp.free_port()
    # sipp reads its own certificate as cacert.pem/cakey.pem in its working directory.
    shutil.copy(pki.cert, tmp_path / "cacert.pem")
    shutil.copy(pki.key, tmp_path / "cakey.pem")
    with sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{udp}", "--listen", f"tls:127.0.0.1:{tls}",
                              "--relay-to", f"sip:127.0.0.1:{uas}", *tls_flags(pki)]):
        with sipp.start_sipp_server(str(rs.quick_uas_rr(tmp_path)), tmp_path, port=uas, timeout=30):
            result = sipp.run_sipp("uac_rr", tmp_path, port=sipp.free_port(), remote=(sipp.LOCALHOST, tls),
                                   transport="tls", calls=CALLS, rate=10, timeout=20)
    assert result.successful == CALLS and result.failed == 0, result.summary()


def test_tls_listener_without_a_certificate_is_refused_at_start():
    out = subprocess.run(sipp.babelsip_command() + ["run", "--listen", "tls:127.0.0.1:0", "--relay-to",
                                                    "sip:127.0.0.1:9", "--ctl-socket", "none"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "a tls: or wss: listener needs --tls-cert FILE and --tls-key FILE" in out.stderr


# ---------------------------------------------------------------- WebSocket
def test_websocket_ua_registers_with_digest_and_receives_a_call(tmp_path):
    routes = tmp_path / "routes"
    shutil.copytree(QUICKSTART, routes)
    udp, ws = sipp.free_port(), sipp.free_port()
    with sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{udp}", "--listen", f"ws:127.0.0.1:{ws}",
                              "--routes", str(routes), "--ctl-socket", "none"]) as proxy:
        ua = WsUA("127.0.0.1", ws, "bob")
        try:
            assert ua.register("secret", "babelsip") == 200
            # uac_rr: ACK and BYE follow the dialog (Contact of the 200, Record-Route).
            caller = sipp.start_sipp("uac_rr", tmp_path, port=sipp.free_port(), remote=("127.0.0.1", udp),
                                     calls=1, timeout=15, extra=["-s", "bob"])
            with caller:
                invite = ua.receive(timeout=10)
                assert invite is not None and invite.method == "INVITE", proxy.log()[-3000:]
                # Reached over the flow it registered on, its .invalid Contact kept as the R-URI.
                assert ua.invalid in invite.uri
                assert invite.header("via").startswith("SIP/2.0/WS 127.0.0.1:")
                rr = invite.header_values("record-route")
                assert rr == [f"<sip:127.0.0.1:{ws};transport=ws;lr>", f"<sip:127.0.0.1:{udp};lr>"]
                ua.answer(invite, 180, "Ringing", to_tag="ws1")
                ua.answer(invite, 200, "OK", to_tag="ws1", body=SDP)
                ack = ua.receive(timeout=10)
                assert ack is not None and ack.method == "ACK"
                bye = ua.receive(timeout=10)
                assert bye is not None and bye.method == "BYE"
                ua.answer(bye, 200, "OK")
                result = caller.wait(20)
            assert result.successful == 1 and result.failed == 0, result.summary() + proxy.log()[-3000:]
        finally:
            ua.close()
