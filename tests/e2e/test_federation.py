"""End to end: federation of two babelsip cores sharing one Redis store.

Core A and core B are two `babelsip run` processes on 127.0.0.1 (different
free ports, UDP and TCP on each), both with `--store redis://...` (one
private redis-server on a free port) and the quickstart route
(examples/quickstart/routes/main.lua: digest REGISTER for alice/bob,
record_route + lookup for calls to local users).

- bob's baresip registers at A over TCP: his binding's flow is that TCP
  connection, which only A holds (Binding.core = A's advertised address).
- alice's baresip registers at B over UDP and calls sip:bob@127.0.0.1
  through B. B's lookup finds bob's binding owned by A and relays the INVITE
  through A with a Route `<sip:A;lr;bsflow=TOKEN>` signed with the cluster
  secret (host/services/location.py `LocationService.target`); A delivers it
  over bob's connection without consulting its route, record-routing
  (host/sip/proxy_requests.py, the `flow` branch).

What proves it, without capturing packets: bob's baresip runs with
sip_trace, whose log prints "PROTO src -> dst" before each message. The
INVITE and the BYE arrive at bob over TCP *from A's listening port to the
very local port bob registered from* (the flow); the INVITE bob receives
carries a Record-Route of A above one of B, and a Via of A above one of B.
A's debug log names the request too. The call is established on both
phones, RTP flows both ways, alice hangs up, both see CALL_CLOSED.

Control: A runs with a different BABELSIP_AUTH_SECRET. A cannot validate
B's token, so it treats the Route as an ordinary one of its own and asks its
route; the quickstart route relays the Request-URI (bob's Contact). On
127.0.0.1 that Contact is baresip's own TCP listener, so A reaches it over a
*new* connection and the call still comes up, but not over the flow (that is
what the 127.0.0.1 control asserts). Behind a real NAT (network namespaces,
tests/e2e/netns.py, root needed) the Contact is unreachable: there the same
call with the same secret is established through A, and with another secret
at A it is not established and bob never sees an INVITE.

A failed outgoing TCP connection is reported to its client transaction at
once (host/shell/server.py `_on_tcp_error`), so a relay over TCP to a
refused address fails in well under a second, not at the route's timeout.

Last, examples/geo/README.md is run as written (its fixed loopback ports):
the block after "To start the two sites:" (redis-server, the pool of two
logic servers, two cores whose route is served by that pool), then its two
baresip account lines, and a call each way; the X-Logic-Server header each
INVITE gets shows that the shared primary decided at both sites, and after
the primary is stopped, that the backup decides at both; X-Geo-Call, a
counter in the store, that both sites' decisions share script data.

Every process (redis-server, babelsip x2, baresip x2) is stopped by the
context manager that started it, also when an assertion fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e import sipp
from tests.e2e.baresip import (Baresip, BaresipTimeout, account_line, baresip_binary, hang_up,
                               traced_phone)
from tests.e2e.sipp import LOCALHOST, free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None or REDIS_CLI is None,
                       reason="redis-server/redis-cli are not installed (Debian package redis-server)"),
    pytest.mark.skipif(baresip_binary() is None,
                       reason="baresip not installed (/usr/bin/baresip, Debian package baresip-core)"),
]

ROUTES = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "routes"
SECRET = "federation-test-cluster-secret-0123"
OTHER_SECRET = "a-different-secret-for-core-A-9876"
BOB_AOR_KEY = "babelsip:aor:{sip:bob@127.0.0.1}"


@pytest.fixture
def redis(tmp_path):
    # The colleague's helper (tests/e2e/test_redis_store.py): one redis-server
    # on 127.0.0.1:<free port>, AOF in tmp_path, stopped with SIGTERM.
    from tests.e2e.test_redis_store import Redis
    server = Redis(free_port(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def free_udp_tcp_port() -> int:
    """A port number free for both UDP and TCP on 127.0.0.1 (bounded tries)."""
    for _ in range(50):
        port = free_port()
        if sipp.tcp_connectable(port, wait=0.1):
            continue
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOCALHOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for UDP and TCP")


@contextlib.contextmanager
def core(name: str, workdir: Path, store_url: str, secret: str,
         routes: Path = ROUTES) -> Iterator[tuple[int, sipp.ProxyProcess]]:
    """One babelsip core: UDP and TCP on 127.0.0.1:<port>, the quickstart
    route (or `routes`), the shared --store, debug log. Yields (port, proxy)."""
    here = workdir / name
    here.mkdir(parents=True, exist_ok=True)
    port = free_udp_tcp_port()
    args = ["run", "--listen", f"udp:{LOCALHOST}:{port}", "--listen", f"tcp:{LOCALHOST}:{port}",
            "--routes", str(routes), "--store", store_url, "--log-level", "debug"]
    env = dict(os.environ, BABELSIP_AUTH_SECRET=secret, BABELSIP_STATE_DIR=str(here / "state"))
    env.pop("PYTHONPATH", None)
    with sipp.start_babelsip(args, ready_timeout=30.0, env=env) as proxy:
        try:
            yield port, proxy
        finally:
            proxy.stop()
            (here / f"babelsip-{name}-{port}.log").write_text(proxy.log() + "\n")


def phone(tmp_path: Path, name: str, line: str) -> Baresip:
    return traced_phone(tmp_path, name, line, ports=free_port)


def trace(phone: Baresip) -> list[tuple[str, str, str, list[str]]]:
    """bob's sip_trace as (transport, src, dst, message lines): baresip prints
    "PROTO src -> dst" then the message, up to a blank line."""
    lines = phone.log().splitlines()
    out = []
    for i, head in enumerate(lines):
        parts = head.split()
        if len(parts) == 4 and parts[2] == "->" and parts[0] in ("UDP", "TCP"):
            body = []
            for line in lines[i + 1:i + 80]:
                if not line.strip():
                    break
                body.append(line)
            out.append((parts[0], parts[1], parts[2 + 1], body))
    return out


def messages(phone: Baresip, start: str) -> list[tuple[str, str, str, list[str]]]:
    """The traced messages whose first line starts with `start`."""
    return [m for m in trace(phone) if m[3] and m[3][0].startswith(start)]


def headers(body: list[str], name: str) -> list[str]:
    """Values of header `name` (and its compact form for Via) in order."""
    names = {name.lower()} | ({"v"} if name.lower() == "via" else set())
    values = []
    for line in body[1:]:
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() in names:
            values.extend(v.strip() for v in value.split(","))
    return values


def why(*parts) -> str:
    out = []
    for p in parts:
        if isinstance(p, Baresip):
            out.append(p.log_tail(60))
        else:
            out.append(f"--- {p[0]} log (end) ---\n" + p[1].log()[-5000:])
    return "\n".join(out)


def register_both(tmp_path, a_port, b_port):
    bob = phone(tmp_path, "bob", account_line(
        "bob", password="secret", outbound=f"sip:{LOCALHOST}:{a_port}", transport="tcp"))
    alice = phone(tmp_path, "alice", account_line(
        "alice", password="secret", outbound=f"sip:{LOCALHOST}:{b_port}"))
    return alice, bob


def bob_flow(bob: Baresip, a_port: int) -> str:
    """The local TCP address bob registered from at A (his flow's far end)."""
    regs = [m for m in messages(bob, "REGISTER ") if m[0] == "TCP" and m[2].endswith(f":{a_port}")]
    assert regs, bob.log_tail()
    locals_ = {m[1] for m in regs}
    assert len(locals_) == 1, locals_
    return locals_.pop()


def test_call_to_a_tcp_phone_at_core_A_entering_at_core_B_goes_through_A(redis, tmp_path):
    started = time.monotonic()
    with core("A", tmp_path, redis.url, SECRET) as (a_port, a), \
            core("B", tmp_path, redis.url, SECRET) as (b_port, b):
        alice, bob = register_both(tmp_path, a_port, b_port)
        with alice, bob:
            bob.wait_registered(timeout=5)
            alice.wait_registered(timeout=5)
            # bob's binding is in Redis, owned by A, over TCP.
            stored = redis.cli("HGETALL", BOB_AOR_KEY)
            assert f"{LOCALHOST}:{a_port}" in stored and "tcp" in stored, stored
            flow = bob_flow(bob, a_port)

            alice.dial(f"sip:bob@{LOCALHOST}")
            try:
                a_up = alice.wait_event("CALL_ESTABLISHED", timeout=10)
                b_up = bob.wait_event("CALL_ESTABLISHED", timeout=10)
            except BaresipTimeout as exc:
                raise AssertionError(f"{exc}\n{why(('A', a), ('B', b), bob)}") from None
            assert a_up["direction"] == "outgoing" and b_up["direction"] == "incoming"
            assert a_up["id"] == b_up["id"]
            alice.wait_event("CALL_RTPESTAB", timeout=5)
            bob.wait_event("CALL_RTPESTAB", timeout=5)

            a_down, b_down = hang_up(alice, bob, a_up["id"])
            assert "peer" in b_down.get("param", ""), (b_down, why(('A', a), ('B', b), bob))

        # The INVITE and the BYE reached bob over his registered flow: TCP,
        # from A's listening port to the local port he registered from.
        a_addr = f"{LOCALHOST}:{a_port}"
        for method in ("INVITE ", "BYE "):
            got = messages(bob, method)
            assert got, bob.log_tail()
            assert {(m[0], m[1], m[2]) for m in got} == {("TCP", a_addr, flow)}, (method, got)
        # ... and went through A after B: A's Record-Route and Via above B's.
        invite = messages(bob, "INVITE ")[0][3]
        rr = headers(invite, "record-route")
        assert len(rr) >= 2 and f":{a_port}" in rr[0] and f":{b_port}" in rr[-1], rr
        vias = headers(invite, "via")
        assert len(vias) >= 3 and f":{a_port}" in vias[0] and f":{b_port}" in vias[1], vias
        assert vias[0].upper().startswith("SIP/2.0/TCP") and vias[1].upper().startswith("SIP/2.0/UDP")
        # Nothing reached alice from A: her side only talks to B.
        assert all(m[1] != a_addr for m in trace(alice)), alice.log_tail()
        assert a.alive() and b.alive(), why(("A", a), ("B", b))
    print(f"federated call: {time.monotonic() - started:.1f}s")


def test_control_with_another_secret_at_A_the_call_is_not_delivered_over_the_flow(redis, tmp_path):
    """A's secret differs: B's flow token is not A's, so A does not deliver
    over bob's flow. It takes the Route for an ordinary Route of its own and
    asks its route, which (quickstart: the Request-URI, bob's Contact, is not
    a local user) relays to the Request-URI: a *new* TCP connection from A to
    the Contact bob's baresip listens on. On 127.0.0.1 that Contact is
    reachable, so the call still comes up -- but not over the flow. (Behind
    a NAT, where the Contact is unreachable, the same call fails: the NAT
    lab variant below.)"""
    started = time.monotonic()
    with core("A", tmp_path, redis.url, OTHER_SECRET) as (a_port, a), \
            core("B", tmp_path, redis.url, SECRET) as (b_port, b):
        alice, bob = register_both(tmp_path, a_port, b_port)
        with alice, bob:
            bob.wait_registered(timeout=5)
            alice.wait_registered(timeout=5)
            flow = bob_flow(bob, a_port)

            alice.dial(f"sip:bob@{LOCALHOST}")
            first = alice.wait_event({"CALL_CLOSED", "CALL_ESTABLISHED"}, timeout=40)
            alice.hangup()
            alice.wait_event("CALL_CLOSED", timeout=5)
        detail = why(("A", a), ("B", b), alice, bob)
        a_addr = f"{LOCALHOST}:{a_port}"
        contact_port = bob.sip_port
        invites = messages(bob, "INVITE ")
        # Nothing arrived at bob over his flow from A ...
        assert not [m for m in invites if (m[1], m[2]) == (a_addr, flow)], detail
        # ... what arrived came over a connection A opened to his Contact
        # (from an ephemeral port of A's, to the port bob listens on).
        assert invites and all(m[0] == "TCP" and m[2] == f"{LOCALHOST}:{contact_port}"
                               and m[1] != a_addr for m in invites), detail
        assert a.alive() and b.alive()
    print(f"control on 127.0.0.1: {time.monotonic() - started:.1f}s; alice saw {first['type']}")


# ------------------------------------- one pool of logic servers for both cores

GEO_LOGIC = Path(__file__).resolve().parents[2] / "examples" / "geo" / "logic" / "main.py"


@contextlib.contextmanager
def logic_server(name: str, workdir: Path) -> Iterator[tuple[int, "subprocess.Popen"]]:
    """`python -m babelsip_sdk serve` of examples/geo/logic/main.py on a free
    port, as LOGIC_NAME=name. Yields (port, process)."""
    import subprocess
    import sys
    from tests.e2e import routes_support as rs
    port = free_port()
    log_path = workdir / f"logic-{name}.log"
    env = dict(os.environ, LOGIC_NAME=name)
    env.pop("PYTHONPATH", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "babelsip_sdk", "serve", "--listen",
                                 f"{LOCALHOST}:{port}", str(GEO_LOGIC)], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        assert rs.wait_until(lambda: proc.poll() is not None or sipp.tcp_connectable(port), 10), \
            log_path.read_text()
        assert proc.poll() is None, log_path.read_text()
        yield port, proc
    finally:
        rs.stop_gently(proc)


def test_both_cores_are_decided_by_one_pool_of_logic_servers(redis, tmp_path):
    """examples/geo's arrangement on free ports: cores A and B, whose route
    `main` is served by the same two logic servers (failover). A call entering
    at B and one entering at A are both decided by the primary (the
    X-Logic-Server header it adds, seen by the callee) and count in one
    counter of the store (X-Geo-Call); with the primary killed, the next
    call entering at each core is decided by the backup."""
    started = time.monotonic()
    with logic_server("primary", tmp_path) as (primary_port, primary), \
            logic_server("backup", tmp_path) as (backup_port, _backup):
        routes = tmp_path / "routes"
        routes.mkdir()
        (routes / "main.remote").write_text(
            f'endpoints = ["{LOCALHOST}:{primary_port}", "{LOCALHOST}:{backup_port}"]\n'
            'balance = "failover"\n')
        with core("A", tmp_path, redis.url, SECRET, routes) as (a_port, a), \
                core("B", tmp_path, redis.url, SECRET, routes) as (b_port, b):
            alice, bob = register_both(tmp_path, a_port, b_port)   # alice at B, bob at A
            a_addr = f"{LOCALHOST}:{a_port}"
            with alice, bob:
                bob.wait_registered(timeout=5)
                alice.wait_registered(timeout=5)

                def call(caller, callee, uri):
                    """The call; (X-Logic-Server, X-Geo-Call) of the INVITE the callee got."""
                    mark_caller, mark_callee = caller.mark(), callee.mark()
                    caller.dial(uri)
                    try:
                        caller.wait_event("CALL_ESTABLISHED", timeout=10, since=mark_caller)
                        callee.wait_event("CALL_ESTABLISHED", timeout=10, since=mark_callee)
                    except BaresipTimeout as exc:
                        raise AssertionError(f"{exc}\n{why(('A', a), ('B', b), alice, bob)}") from None
                    caller.hangup()
                    caller.wait_event("CALL_CLOSED", timeout=5, since=mark_caller)
                    callee.wait_event("CALL_CLOSED", timeout=5, since=mark_callee)
                    got = [m for m in messages(callee, "INVITE ") if m[1] == a_addr]
                    assert got, callee.log_tail()
                    return headers(got[-1][3], "x-logic-server"), headers(got[-1][3], "x-geo-call")

                # alice's call enters at B (her outbound proxy), bob's at A;
                # both reach the callee from A (bob's flow; A relays to alice).
                assert call(alice, bob, f"sip:bob@{LOCALHOST}") == (["primary"], ["1"])
                assert call(bob, alice, f"sip:alice@{LOCALHOST}") == (["primary"], ["2"])
                primary.kill()        # the logic host goes away without a goodbye
                primary.wait(timeout=5)
                assert call(alice, bob, f"sip:bob@{LOCALHOST}") == (["backup"], ["3"])
                assert call(bob, alice, f"sip:alice@{LOCALHOST}") == (["backup"], ["4"])
            assert a.alive() and b.alive(), why(("A", a), ("B", b))
    # the counter is the route's key in Redis: route "main", under its prefix
    assert redis.cli("GET", "babelsip:kv:route:main:calls").strip() == "4"
    print(f"one logic pool for two cores: {time.monotonic() - started:.1f}s")


# ------------------------------------------------- the same behind a real NAT
#
#     bob (phone ns, 10.77.0.2) -- router (masquerade) --
#         server ns 203.0.113.2: redis-server (its 127.0.0.1:6390),
#                                core A :5070 (UDP+TCP), core B :5080 (UDP+TCP)
#         alice (peer ns, 203.0.113.3, public)
#
# bob registers at A over TCP from behind the NAT: his Contact (10.77.0.2)
# is unreachable from the server namespace, which has no route to the private
# net; only the TCP connection A accepted reaches him. Namespaces from
# tests/e2e/netns.py (root, ip, nft; skipped otherwise).

LAB_A, LAB_B, LAB_REDIS, LAB_PHONE_PORT, LAB_CTRL = 5070, 5080, 6390, 5062, 4444


class LabProcess:
    """A process inside a namespace of the lab, its output kept."""

    def __init__(self, lab, ns: str, argv: list[str], workdir: Path, name: str, env=None):
        import subprocess
        import threading
        from collections import deque
        self.name, self.workdir = name, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.lines: deque[str] = deque(maxlen=20000)
        self.proc = lab.popen(ns, argv, cwd=Path(__file__).resolve().parents[2], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_line(self, needle: str, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(needle in line for line in list(self.lines)):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no {needle!r} (rc={self.proc.poll()}):\n{self.log()[-4000:]}")

    def stop(self) -> None:
        import subprocess
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=6)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=2)
        (self.workdir / f"{self.name}.log").write_text(self.log() + "\n")


@contextlib.contextmanager
def lab_process(*args, **kw) -> Iterator[LabProcess]:
    proc = LabProcess(*args, **kw)
    try:
        yield proc
    finally:
        proc.stop()


def lab_core(lab, name: str, port: int, secret: str, workdir: Path):
    from tests.e2e.netns import NatLab
    argv = NatLab.python_argv("-m", "host", "run",
                              "--listen", f"udp:{lab.server_ip}:{port}",
                              "--listen", f"tcp:{lab.server_ip}:{port}",
                              "--routes", str(ROUTES), "--store", f"redis://127.0.0.1:{LAB_REDIS}/0",
                              "--log-level", "debug")
    env = dict(os.environ, BABELSIP_AUTH_SECRET=secret, BABELSIP_STATE_DIR=str(workdir / name / "state"))
    env.pop("PYTHONPATH", None)
    return lab_process(lab, lab.server, argv, workdir / name, name, env=env)


def lab_phone(lab, ns: str, ip: str, workdir: Path, user: str, outbound: str, transport: str) -> Baresip:
    import socket
    from tests.e2e.netns import NatLab
    line = account_line(user, lab.server_ip, password="secret", outbound=outbound, transport=transport)
    return Baresip(workdir / user, sip_port=LAB_PHONE_PORT, ctrl_port=LAB_CTRL, sip_host=ip,
                   accounts=[line], prefix=NatLab.exec_argv(ns, []), sip_trace=True,
                   ctrl_socket=lambda: lab.socket(ns, type=socket.SOCK_STREAM), name=user,
                   max_lifetime=120)


@pytest.mark.parametrize("a_secret", [SECRET, OTHER_SECRET], ids=["same-secret", "control-other-secret"])
def test_behind_a_nat_only_the_owner_core_reaches_the_tcp_phone(tmp_path, a_secret):
    """Same secret: the call entering at B is established through A, over
    bob's NATed TCP connection. Control (another secret at A): A does not
    deliver over the flow, its route relays to bob's private Contact, which
    nothing reaches: the call is not established and bob never sees it."""
    from tests.e2e.netns import NatLab, require_root_and_tools
    require_root_and_tools()
    started = time.monotonic()
    with NatLab(peer=True) as lab:
        redis_argv = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(LAB_REDIS), "--save", "",
                      "--appendonly", "no", "--daemonize", "no", "--dir", str(tmp_path)]
        with lab_process(lab, lab.server, redis_argv, tmp_path / "redis", "redis") as redis_proc:
            redis_proc.wait_line("Ready to accept connections", 10)
            with lab_core(lab, "A", LAB_A, a_secret, tmp_path) as a, \
                    lab_core(lab, "B", LAB_B, SECRET, tmp_path) as b:
                a.wait_line("listening on tcp:")
                b.wait_line("listening on tcp:")
                bob = lab_phone(lab, lab.phone, lab.phone_ip, tmp_path, "bob",
                                f"sip:{lab.server_ip}:{LAB_A}", "tcp")
                alice = lab_phone(lab, lab.peer, lab.peer_ip, tmp_path, "alice",
                                  f"sip:{lab.server_ip}:{LAB_B}", "udp")
                with bob, alice:
                    bob.wait_registered(timeout=5)
                    alice.wait_registered(timeout=5)
                    alice.dial(f"sip:bob@{lab.server_ip}")
                    first = alice.wait_event({"CALL_ESTABLISHED", "CALL_CLOSED"}, timeout=40)
                    detail = why(("A", a), ("B", b), alice, bob)
                    a_addr = f"{lab.server_ip}:{LAB_A}"
                    if a_secret == SECRET:
                        assert first["type"] == "CALL_ESTABLISHED", detail
                        bob.wait_event("CALL_ESTABLISHED", timeout=10)
                        # RTP: bob's stream reaches alice through the NAT. Not
                        # the other way: bob's SDP names his private address
                        # and nothing here anchors media (signalling only).
                        alice.wait_event("CALL_RTPESTAB", timeout=5)
                        alice.hangup()
                        alice.wait_event("CALL_CLOSED", timeout=5)
                        b_down = bob.wait_event("CALL_CLOSED", timeout=5)
                        assert "peer" in b_down.get("param", ""), detail
                        for method in ("INVITE ", "BYE "):
                            got = messages(bob, method)
                            assert got and {(m[0], m[1]) for m in got} == {("TCP", a_addr)}, (method, detail)
                        rr = headers(messages(bob, "INVITE ")[0][3], "record-route")
                        assert f":{LAB_A}" in rr[0] and f":{LAB_B}" in rr[-1], rr
                    else:
                        assert first["type"] == "CALL_CLOSED", detail
                        assert bob.find_event({"CALL_ESTABLISHED", "CALL_REMOTE_SDP"}) is None, detail
                        assert messages(bob, "INVITE ") == [], detail
                assert a.alive() and b.alive(), why(("A", a), ("B", b))
    print(f"NAT lab ({'same' if a_secret == SECRET else 'other'} secret): "
          f"{time.monotonic() - started:.1f}s; alice: {first['type']} {first.get('param', '')!r}")


def test_relay_over_tcp_to_a_refused_address_fails_at_once(redis, tmp_path):
    """The path of the control above, without the NAT: the quickstart route
    relays a non-local Request-URI; over TCP to a port nobody listens on the
    connection is refused at once, so the caller should get a 5xx at once."""
    with core("B", tmp_path, redis.url, SECRET) as (b_port, b):
        alice = phone(tmp_path, "alice", account_line(
            "alice", password="secret", outbound=f"sip:{LOCALHOST}:{b_port}"))
        closed_port = free_udp_tcp_port()
        with alice:
            alice.wait_registered(timeout=5)
            alice.dial(f"sip:bob@{LOCALHOST}:{closed_port};transport=tcp")
            try:
                end = alice.wait_event("CALL_CLOSED", timeout=5)
            except BaresipTimeout:
                alice.hangup()
                raise AssertionError("no final answer within 5 s of a refused TCP connection\n"
                                     + why(("B", b))) from None
            assert end.get("param", "").startswith("5"), end


# ------------------------------------------------ examples/geo, as it says

GEO = Path(__file__).resolve().parents[2] / "examples" / "geo"
GEO_PORTS = {"redis": 6391, "paris": 5160, "tokyo": 5260, "alice": 5070, "bob": 5072,
             "primary": 7161, "backup": 7162}


def geo_blocks() -> list[tuple[str, list[str]]]:
    """(the last sentence before it, lines) of each fenced block of the README."""
    blocks, fenced, last, lines = [], False, "", []
    for line in (GEO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if fenced:
                blocks.append((last, lines))
            fenced, lines = not fenced, []
            continue
        if fenced:
            lines.append(line)
        elif line.strip():
            last = line
    return blocks


def geo_start_commands() -> list[str]:
    found = [lines for text, lines in geo_blocks() if "To start the two sites" in text]
    assert len(found) == 1, geo_blocks()
    return [re.sub(r"\s+#.*$", "", line.strip()) for line in found[0] if line.strip()]


def geo_account(user: str) -> str:
    found = [line.strip() for _, lines in geo_blocks() for line in lines
             if line.strip().startswith(f"<sip:{user}@")]
    assert len(found) == 1, found
    return found[0] + ";regint=60"


def test_geo_example_as_its_readme_says(tmp_path):
    """The README's commands, as written (from the repository root, the
    venv's babelsip first on PATH), on its fixed loopback ports; then its two
    account lines in baresip: bob (tokyo, UDP) calls alice (paris, TCP)
    through paris, then alice calls bob, who is reached directly. Both
    calls are decided by the primary logic server; with the primary
    stopped, the same two calls are decided by the backup."""
    import signal
    import socket
    import subprocess
    import sys
    from tests.e2e import routes_support as rs
    for name, port in GEO_PORTS.items():
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((LOCALHOST, port))
                except OSError:
                    pytest.skip(f"examples/geo uses fixed port {port} ({name}), which is taken")
    repo = GEO.parents[1]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               BABELSIP_STATE_DIR=str(tmp_path / "state"))
    env.pop("PYTHONPATH", None)
    exports, procs, logs, lines = [], [], [], []
    try:
        for line in geo_start_commands():
            if line.startswith("export "):
                exports.append(line)
                continue
            assert line.endswith("&"), line
            log = tmp_path / f"bg{len(procs)}.log"
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(["bash", "-c", "; ".join(exports + [line[:-1].strip()])],
                                              cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))
            logs.append(log)
            lines.append(line)
            if "babelsip_sdk serve" in line:   # as in a terminal: serving before the cores start
                assert rs.wait_until(lambda: "serving" in log.read_text(errors="replace"), 10), \
                    log.read_text()
        assert len(procs) == 5 and len(exports) == 1
        logic = {name: i for i, line in enumerate(lines) for name in ("primary", "backup")
                 if f"LOGIC_NAME={name} " in line}
        assert sorted(logic) == ["backup", "primary"], lines
        cores = [i for i, line in enumerate(lines) if line.startswith("babelsip run")]
        assert len(cores) == 2, lines
        assert rs.wait_until(lambda: subprocess.run(
            [REDIS_CLI, "-p", str(GEO_PORTS["redis"]), "PING"], capture_output=True,
            text=True).stdout.strip() == "PONG", 10), logs[0].read_text()
        for log in (logs[i] for i in cores):
            assert rs.wait_until(lambda: "listening on tcp:" in log.read_text(errors="replace"), 30), \
                log.read_text()
            assert f"routes loaded from {GEO / 'routes'}: main (ok)" in log.read_text()

        alice = Baresip(tmp_path / "alice", sip_port=GEO_PORTS["alice"], ctrl_port=free_port(),
                        accounts=[geo_account("alice")], sip_trace=True)
        bob = Baresip(tmp_path / "bob", sip_port=GEO_PORTS["bob"], ctrl_port=free_port(),
                      accounts=[geo_account("bob")], sip_trace=True)
        with alice, bob:
            alice.wait_registered(timeout=5)
            bob.wait_registered(timeout=5)
            stored = subprocess.run([REDIS_CLI, "-p", str(GEO_PORTS["redis"]), "HGETALL",
                                     "babelsip:aor:{sip:alice@geo.example}"],
                                    capture_output=True, text=True).stdout
            assert '"core":"127.0.0.1:5160"' in stored, stored   # as the README shows it

            details = lambda: "\n".join([alice.log_tail(), bob.log_tail()]
                                        + [l.read_text(errors="replace")[-3000:] for l in logs[1:]])

            def decided(phone, sender):
                """(X-Logic-Server, X-Geo-Call) of the last INVITE `phone` got from `sender`."""
                got = [m for m in messages(phone, "INVITE ") if m[1] == sender]
                assert got, details()
                body = got[-1][3]
                return headers(body, "x-logic-server"), headers(body, "x-geo-call")
            bob.dial("sip:alice@geo.example")
            try:
                up = bob.wait_event("CALL_ESTABLISHED", timeout=10)
                alice.wait_event("CALL_ESTABLISHED", timeout=10)
            except BaresipTimeout as exc:
                raise AssertionError(f"{exc}\n{details()}") from None
            bob.wait_event("CALL_RTPESTAB", timeout=5)
            alice.wait_event("CALL_RTPESTAB", timeout=5)
            bob.hangup()
            bob.wait_event("CALL_CLOSED", timeout=5)
            assert "peer" in alice.wait_event("CALL_CLOSED", timeout=5).get("param", "")
            invite = messages(alice, "INVITE ")
            assert invite and {(m[0], m[1]) for m in invite} == {("TCP", "127.0.0.1:5160")}, details()
            rr = headers(invite[0][3], "record-route")
            assert ":5160" in rr[0] and rr[-1] == "<sip:127.0.0.1:5260;lr>", rr
            # tokyo's decision, by the shared primary, the service's first call
            assert decided(alice, "127.0.0.1:5160") == (["primary"], ["1"]), details()

            mark_a, mark_b = alice.mark(), bob.mark()
            alice.dial("sip:bob@geo.example")
            try:
                alice.wait_event("CALL_ESTABLISHED", timeout=10, since=mark_a)
                bob.wait_event("CALL_ESTABLISHED", timeout=10, since=mark_b)
            except BaresipTimeout as exc:
                raise AssertionError(f"{exc}\n{details()}") from None
            alice.hangup()
            alice.wait_event("CALL_CLOSED", timeout=5, since=mark_a)
            bob.wait_event("CALL_CLOSED", timeout=5, since=mark_b)
            # bob's UDP binding has no flow to keep: paris reached him itself.
            to_bob = [m for m in messages(bob, "INVITE ") if m[2] == f"127.0.0.1:{GEO_PORTS['bob']}"]
            assert to_bob and {(m[0], m[1]) for m in to_bob} == {("UDP", "127.0.0.1:5160")}, details()
            # (paris double record-routes, TCP in and UDP out: RFC 5658; no tokyo)
            rr = headers(to_bob[0][3], "record-route")
            assert rr and all(r.startswith("<sip:127.0.0.1:5160;") for r in rr), rr
            # paris's decision: the same primary, the same counter
            assert decided(bob, "127.0.0.1:5160") == (["primary"], ["2"]), details()

            # The primary logic server goes (kill %2): both sites fail over to the backup.
            os.killpg(procs[logic["primary"]].pid, signal.SIGTERM)
            procs[logic["primary"]].wait(timeout=5)
            for caller, callee, sender, number in ((bob, alice, "127.0.0.1:5160", "3"),
                                                   (alice, bob, "127.0.0.1:5160", "4")):
                mark_caller, mark_callee = caller.mark(), callee.mark()
                caller.dial(f"sip:{'alice' if callee is alice else 'bob'}@geo.example")
                try:
                    caller.wait_event("CALL_ESTABLISHED", timeout=10, since=mark_caller)
                    callee.wait_event("CALL_ESTABLISHED", timeout=10, since=mark_callee)
                except BaresipTimeout as exc:
                    raise AssertionError(f"{exc}\n{details()}") from None
                caller.hangup()
                caller.wait_event("CALL_CLOSED", timeout=5, since=mark_caller)
                callee.wait_event("CALL_CLOSED", timeout=5, since=mark_callee)
                assert decided(callee, sender) == (["backup"], [number]), details()
            for i in cores:
                assert procs[i].poll() is None, details()
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
