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
route. What the route does then is recorded by the test (see the control's
docstring).

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
from tests.e2e.baresip import Baresip, BaresipTimeout, account_line, baresip_binary
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
def core(name: str, workdir: Path, store_url: str, secret: str) -> Iterator[tuple[int, sipp.ProxyProcess]]:
    """One babelsip core: UDP and TCP on 127.0.0.1:<port>, the quickstart
    route, the shared --store, debug log. Yields (port, proxy)."""
    here = workdir / name
    here.mkdir(parents=True, exist_ok=True)
    port = free_udp_tcp_port()
    args = ["run", "--listen", f"udp:{LOCALHOST}:{port}", "--listen", f"tcp:{LOCALHOST}:{port}",
            "--routes", str(ROUTES), "--store", store_url, "--log-level", "debug"]
    env = dict(os.environ, BABELSIP_AUTH_SECRET=secret, BABELSIP_STATE_DIR=str(here / "state"))
    env.pop("PYTHONPATH", None)
    with sipp.start_babelsip(args, ready_timeout=30.0, env=env) as proxy:
        try:
            yield port, proxy
        finally:
            proxy.stop()
            (here / f"babelsip-{name}-{port}.log").write_text(proxy.log() + "\n")


def phone(tmp_path: Path, name: str, line: str) -> Baresip:
    return Baresip(tmp_path / name, sip_port=free_port(), ctrl_port=free_port(), accounts=[line],
                   sip_trace=True)


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

            alice.hangup()
            a_down = alice.wait_event("CALL_CLOSED", timeout=5)
            b_down = bob.wait_event("CALL_CLOSED", timeout=5)
            assert a_down["id"] == b_down["id"] == a_up["id"]
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
