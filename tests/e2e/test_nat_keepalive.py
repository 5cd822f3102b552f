"""The server's keepalive keeps a NATed phone reachable (real baresip phones
in network namespaces, tests/e2e/netns.py).

    bob (phone ns, 10.77.0.2) -- router: nft masquerade fully-random,
                                  conntrack UDP timeout 3 s --
        babelsip (server ns, 203.0.113.2:5060, quickstart route)
        alice   (peer ns, 203.0.113.3, public: no NAT)

bob registers from behind the NAT (his Via says 10.77.0.2, the server sees
203.0.113.1:<random port>), then stays silent: regint=600 (the server grants
600 s: no re-REGISTER during the test) and baresip 1.0 sends no keepalive of
its own unless an account says `sipnat=outbound` (none does; no stun/natpmp
module is loaded). The router forgets a UDP mapping 3 s after its last
datagram. After 7 s of silence alice calls sip:bob@203.0.113.2:

* with `--keepalive 1` the server's OPTIONS pings (answered by bob) keep the
  mapping alive: the INVITE reaches bob and the call is established;
* with `--keepalive 0` (control) nothing crosses the NAT during the 7 s, the
  mapping is gone, the INVITE to 203.0.113.1:<port> ends at the router (no
  mapping: ICMP port unreachable) and bob never sees the call — so it is the
  pings, not something bob sends, that keep the pinhole open.

Needs root, ip, nft (skips otherwise) and baresip."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

import pytest

from tests.e2e.baresip import Baresip, BaresipTimeout, account_line, baresip_binary
from tests.e2e.netns import NatLab, require_root_and_tools

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(baresip_binary() is None,
                       reason="baresip not installed (/usr/bin/baresip, Debian package baresip-core)"),
]

REPO = Path(__file__).resolve().parents[2]
ROUTES = REPO / "examples" / "quickstart" / "routes"
SIP_PORT = 5060
PHONE_SIP_PORT = 5062
CTRL_PORT = 4444
UDP_TIMEOUT = 3      # the router's conntrack UDP timeout (s)
IDLE = 7             # bob's silence before the call: > 2 x UDP_TIMEOUT


@pytest.fixture(autouse=True)
def _needs_netns():
    require_root_and_tools()


class Server:
    """babelsip running inside a namespace; its output is kept for assertions."""

    def __init__(self, lab: NatLab, keepalive: int, workdir: Path, routes: Path = ROUTES):
        self.workdir = workdir
        self.lines: deque[str] = deque(maxlen=20000)
        argv = lab.python_argv("-m", "host", "run", "--listen", f"udp:{lab.server_ip}:{SIP_PORT}",
                               "--routes", str(routes), "--keepalive", str(keepalive),
                               "--log-level", "debug")
        self.proc = lab.popen(lab.server, argv, cwd=REPO, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_listening(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any("listening on udp:" in line for line in list(self.lines)):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"babelsip not listening (rc={self.proc.poll()}):\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=2)
        (self.workdir / "babelsip.log").write_text(self.log() + "\n")


def _phone(lab: NatLab, ns: str, ip: str, workdir: Path, user: str, *,
           outbound: bool = False, regint: int = 600) -> Baresip:
    """A phone whose account is sip:<user>@203.0.113.2 (password "secret").
    Without outbound (the default here) baresip sends to the AOR's domain,
    203.0.113.2:5060, with no Route header (see the xfail test below for
    what an outbound proxy on port 5060 does to this server)."""
    line = account_line(user, lab.server_ip, password="secret",
                        outbound=f"sip:{lab.server_ip}:{SIP_PORT}" if outbound else None,
                        regint=regint)
    return Baresip(workdir, sip_port=PHONE_SIP_PORT, ctrl_port=CTRL_PORT, sip_host=ip,
                   accounts=[line], prefix=NatLab.exec_argv(ns, []), sip_trace=True,
                   ctrl_socket=lambda: lab.socket(ns, type=socket.SOCK_STREAM), name=user,
                   max_lifetime=120)


def _received(phone: Baresip, method: str, since: int = 0) -> int:
    """How many `method` requests the phone received (its sip_trace log: a
    "UDP src -> dst" line, then the request line), in log text after `since`."""
    return len(re.findall(rf"^UDP \S+ -> \S+\n{method} sip:", phone.log()[since:], re.M))


def _quickstart_with_fix_contact(directory: Path) -> Path:
    """The quickstart route plus `on_reply: fix_contact` (a NATed callee's
    200 OK then names the address it came from, not 10.77.0.2)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (ROUTES / "main.lua").read_text()
    (directory / "main.lua").write_text(text + "\nfunction on_reply(req, reply)\n  req:fix_contact()\nend\n")
    return directory


def _call_after_idle(tmp_path: Path, keepalive: int, *, idle: float = IDLE, routes: Path = ROUTES,
                     alice_outbound: bool = False, bob_outbound: bool = False) -> dict:
    """Build the lab, register bob (behind the NAT) and alice, stay idle
    `idle` seconds, then alice calls sip:bob@203.0.113.2 and (if it is
    established) hangs up. Returns what the tests assert on."""
    with NatLab(peer=True) as lab:
        lab.set_udp_timeout(UDP_TIMEOUT)  # before bob's first datagram: his mapping gets it
        server = Server(lab, keepalive, tmp_path, routes)
        try:
            server.wait_listening()
            bob = _phone(lab, lab.phone, lab.phone_ip, tmp_path / "bob", "bob", outbound=bob_outbound)
            alice = _phone(lab, lab.peer, lab.peer_ip, tmp_path / "alice", "alice", outbound=alice_outbound)
            with bob, alice:
                out = {"keepalive": keepalive}

                def why() -> str:
                    return "\n".join([str({k: v for k, v in out.items()}), alice.log_tail(50),
                                      bob.log_tail(50), "--- babelsip log (end) ---",
                                      server.log()[-4000:], "--- router conntrack ---",
                                      *lab.conntrack_entries()])
                out["why"] = why
                bob.wait_registered(timeout=5)
                alice.wait_registered(timeout=5)
                before = len(bob.log())
                time.sleep(idle)
                out["options_idle"] = _received(bob, "OPTIONS", before)
                out["registering"] = len(bob.events("REGISTERING"))  # 1: no re-REGISTER while idle
                mark_a, mark_b, before = alice.mark(), bob.mark(), len(bob.log())
                alice.dial(f"sip:bob@{lab.server_ip}")
                try:
                    ev = alice.wait_event({"CALL_ESTABLISHED", "CALL_CLOSED"}, timeout=8, since=mark_a)
                    out["alice"] = ev["type"], ev.get("param")
                except BaresipTimeout:
                    out["alice"] = None
                out["bob_invites"] = _received(bob, "INVITE", before)
                try:
                    bob.wait_event("CALL_ESTABLISHED", timeout=3, since=mark_b)
                    out["bob_established"] = True
                except BaresipTimeout:
                    out["bob_established"] = False
                if out["alice"] is None or out["alice"][0] == "CALL_ESTABLISHED":
                    alice.hangup()
                    alice.wait_event("CALL_CLOSED", timeout=5, since=mark_a)
                try:
                    bob.wait_event("CALL_CLOSED", timeout=2, since=mark_b)
                    out["bob_closed"] = True
                except BaresipTimeout:
                    out["bob_closed"] = False
                out["bob_byes"] = _received(bob, "BYE", before)
                out["why"] = why()
                return out
        finally:
            server.stop()


def test_server_pings_keep_the_nat_pinhole_open(tmp_path):
    """--keepalive 1: after 7 s of silence from bob (the mapping lives 3 s),
    alice's INVITE still reaches him through the NAT and his 200 comes back:
    the call is established on alice's side."""
    out = _call_after_idle(tmp_path, keepalive=1)
    assert out["registering"] == 1, out["why"]
    assert out["options_idle"] >= IDLE // 2, out["why"]  # the pings reached bob through the NAT
    assert out["bob_invites"] >= 1, out["why"]
    assert out["alice"] is not None and out["alice"][0] == "CALL_ESTABLISHED", out["why"]


def test_without_pings_the_pinhole_closes_and_bob_is_unreachable(tmp_path):
    """Control, --keepalive 0: the same call must fail. Nothing crossed the
    NAT while bob was idle (so bob sends nothing that keeps it open), the
    mapping is gone and the INVITE never reaches him."""
    out = _call_after_idle(tmp_path, keepalive=0)
    assert out["registering"] == 1, out["why"]
    assert out["options_idle"] == 0, out["why"]
    assert out["bob_invites"] == 0, out["why"]
    assert out["alice"] is None or out["alice"][0] == "CALL_CLOSED", out["why"]
    assert not out["bob_established"], out["why"]


def test_whole_call_with_a_nated_callee_when_the_route_fixes_contacts(tmp_path):
    """The quickstart route plus on_reply fix_contact, after the same idle
    time with --keepalive 1: both sides established, alice's BYE reaches bob."""
    out = _call_after_idle(tmp_path, keepalive=1, routes=_quickstart_with_fix_contact(tmp_path / "routes"))
    assert out["options_idle"] >= IDLE // 2, out["why"]
    assert out["alice"] is not None and out["alice"][0] == "CALL_ESTABLISHED", out["why"]
    assert out["bob_established"] and out["bob_closed"] and out["bob_byes"] >= 1, out["why"]


def test_nated_callee_gets_ack_and_bye_after_idle_with_the_quickstart_route(tmp_path):
    """After the 7 s idle time with --keepalive 1, the whole call: the core
    points bob's Contact in his 180/200 at his NAT address (he was reached
    through his flow), so alice's ACK and BYE reach him through the NAT.
    (Failed before 90835a3: his private Contact went to alice unchanged and
    the proxy relayed ACK/BYE to 10.77.0.2: "Network is unreachable".)"""
    out = _call_after_idle(tmp_path, keepalive=1)
    assert out["alice"] is not None and out["alice"][0] == "CALL_ESTABLISHED", out["why"]
    assert out["bob_established"] and out["bob_closed"] and out["bob_byes"] >= 1, out["why"]


def test_call_through_an_outbound_proxy_on_port_5060(tmp_path):
    """Both phones name the server as outbound proxy (Route
    <sip:203.0.113.2:5060;lr>) while their Request-URIs (REGISTER
    sip:203.0.113.2, INVITE sip:bob@203.0.113.2) are the server's too:
    loose routing, not a strict router's rewrite. (Failed before 90835a3:
    host/sip/proxy_rules.py process_route replaced the Request-URI by the
    Route value, the digest uri no longer matched it and every REGISTER got
    401.)"""
    out = _call_after_idle(tmp_path, keepalive=1, idle=0, alice_outbound=True, bob_outbound=True)
    assert out["alice"] is not None and out["alice"][0] == "CALL_ESTABLISHED", out["why"]
    assert out["bob_established"] and out["bob_closed"], out["why"]
