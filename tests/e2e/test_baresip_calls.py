"""Real softphones through babelsip: two baresip 1.0 phones (alice, bob)
register with digest authentication at the quickstart route
(examples/quickstart/routes: registrar + proxy for alice and bob, password
"secret") and call each other through it; a phone with a wrong password is
refused its registration and cannot be called.

The server runs as a subprocess on 127.0.0.1 (free ports), the phones are
driven by tests/e2e/baresip.py."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from tests.e2e import sipp
from tests.e2e.baresip import (Baresip, RegistrationFailed, account_line, baresip_binary, hang_up,
                               traced_phone)
from tests.e2e.sipp import LOCALHOST, free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(baresip_binary() is None,
                       reason="baresip not installed (/usr/bin/baresip, Debian package baresip-core)"),
]

ROUTES = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "routes"


@contextlib.contextmanager
def quickstart_server(workdir: Path, *, tcp: bool = False):
    """babelsip serving the quickstart route on 127.0.0.1:<free port> (UDP,
    and TCP on the same port number when asked). Yields (port, proxy)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = ["run", "--listen", f"udp:{LOCALHOST}:{port}"]
    if tcp:
        args += ["--listen", f"tcp:{LOCALHOST}:{port}"]
    args += ["--routes", str(ROUTES), "--log-level", "debug"]
    with sipp.start_babelsip(args, ready_timeout=30) as proxy:
        try:
            yield port, proxy
        finally:
            proxy.stop()
            (workdir / f"babelsip-{port}.log").write_text(proxy.log() + "\n")


def _phone(tmp_path: Path, name: str, line: str) -> Baresip:
    return traced_phone(tmp_path, name, line, ports=free_port)


def _arrived_over(phone: Baresip, request: str, server_port: int) -> set[str]:
    """Transports ("UDP"/"TCP") over which `phone` received a `request` (e.g.
    "INVITE") from the server, from its sip_trace log: a "PROTO src -> dst"
    line precedes each message. (Over TCP dst is the phone's end of the
    connection it registered over: the server reuses that flow.)"""
    lines = phone.log().splitlines()
    seen = set()
    for head, first in zip(lines, lines[1:]):
        parts = head.split()
        if (len(parts) == 4 and parts[2] == "->" and first.startswith(request + " ")
                and parts[1].endswith(f":{server_port}")):
            seen.add(parts[0])
    return seen


def _why(proxy, *phones: Baresip) -> str:
    return "\n".join([p.log_tail() for p in phones] + ["--- babelsip log (end) ---", proxy.log()[-4000:]])


@pytest.mark.parametrize("bob_transport", ["udp", "tcp"])
def test_registered_phones_call_each_other_through_the_proxy(tmp_path, bob_transport):
    """REGISTER with digest (401 challenge, then 200), INVITE to
    sip:bob@127.0.0.1 (the server's own domain, no port) found by lookup,
    auto-answer, both sides established, BYE from alice closes both."""
    with quickstart_server(tmp_path / "server", tcp=bob_transport == "tcp") as (port, proxy):
        outbound = f"sip:{LOCALHOST}:{port}"
        alice = _phone(tmp_path, "alice", account_line("alice", password="secret", outbound=outbound))
        bob = _phone(tmp_path, "bob", account_line("bob", password="secret", outbound=outbound,
                                                    transport=bob_transport))
        with alice, bob:
            alice.wait_registered(timeout=5)
            bob.wait_registered(timeout=5)

            alice.dial(f"sip:bob@{LOCALHOST}")
            a_up = alice.wait_event("CALL_ESTABLISHED", timeout=10)
            b_up = bob.wait_event("CALL_ESTABLISHED", timeout=10)
            assert a_up["direction"] == "outgoing" and b_up["direction"] == "incoming", (a_up, b_up)
            assert a_up["id"] == b_up["id"], _why(proxy, alice, bob)
            assert b_up["accountaor"] == f"sip:bob@{LOCALHOST}"
            alice.wait_event("CALL_RTPESTAB", timeout=5)
            bob.wait_event("CALL_RTPESTAB", timeout=5)

            a_down, b_down = hang_up(alice, bob, a_up["id"])
            # bob's side closed because the BYE reached him (not a timeout)
            assert "peer" in b_down.get("param", ""), (b_down, _why(proxy, alice, bob))
            assert "user" in a_down.get("param", ""), a_down
        # digest: each phone was challenged once, then accepted
        for phone in (alice, bob):
            log = phone.log()
            assert "401 Unauthorized" in log and 'Authorization: Digest username="' in log, phone.log_tail()
        want = {bob_transport.upper()}
        assert _arrived_over(bob, "INVITE", port) == want, bob.log_tail()
        assert _arrived_over(bob, "BYE", port) == want, bob.log_tail()
        assert _arrived_over(alice, "INVITE", port) == set()


def test_wrong_password_is_not_registered_and_cannot_be_called(tmp_path):
    """bob's password is wrong: his REGISTER is challenged again (401) and
    baresip gives up (REGISTER_FAIL); nothing is saved, so alice's call to
    him ends with 480 (known user, not registered) and his phone never rings."""
    with quickstart_server(tmp_path / "server") as (port, proxy):
        outbound = f"sip:{LOCALHOST}:{port}"
        alice = _phone(tmp_path, "alice", account_line("alice", password="secret", outbound=outbound))
        bob = _phone(tmp_path, "bob", account_line("bob", password="wrong", outbound=outbound))
        with alice, bob:
            alice.wait_registered(timeout=5)
            with pytest.raises(RegistrationFailed) as info:
                bob.wait_registered(timeout=5)
            event = info.value.event
            assert event is not None and event["type"] == "REGISTER_FAIL", str(info.value)
            assert event.get("param", "").startswith(("401", "403")), event

            alice.dial(f"sip:bob@{LOCALHOST}")
            closed = alice.wait_event("CALL_CLOSED", timeout=10)
            assert closed.get("param", "").startswith("480"), (closed, _why(proxy, alice, bob))
            assert alice.find_event({"CALL_RINGING", "CALL_ESTABLISHED"}) is None
            time.sleep(0.3)  # nothing late either
            assert _arrived_over(bob, "INVITE", port) == set(), bob.log_tail()
            assert bob.find_event({"CALL_INCOMING", "CALL_ESTABLISHED", "CALL_REMOTE_SDP"}) is None
