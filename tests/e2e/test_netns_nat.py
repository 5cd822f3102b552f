"""Sanity checks for the NAT lab in tests/e2e/netns.py: the phone's traffic
reaches the server masqueraded (router's public address, randomised port),
the server can answer through a fresh mapping, the mapping dies after the
(shortened) conntrack UDP timeout, and every namespace is gone afterwards.
Needs root, ip and nft; skips otherwise."""

from __future__ import annotations

import select
import socket
import subprocess
import time

import pytest

from tests.e2e.netns import NatLab, require_root_and_tools

pytestmark = pytest.mark.e2e

ECHO_PORT = 5070

# Runs inside the server namespace: answers each datagram with the source
# address it saw. Exits by itself after 10 s idle (the lab kills it anyway).
ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(10)
print("ready", flush=True)
while True:
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    s.sendto(f"{addr[0]} {addr[1]}".encode(), addr)
"""


@pytest.fixture(autouse=True)
def _needs_netns():
    require_root_and_tools()


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _recv(sock: socket.socket, timeout: float) -> tuple[bytes, tuple] | None:
    ready, _, _ = select.select([sock], [], [], timeout)
    return sock.recvfrom(2048) if ready else None


def test_phone_traffic_is_masqueraded_with_a_random_port():
    with NatLab() as lab:
        echo = lab.python(lab.server, ECHO_SERVER, str(ECHO_PORT), stdout=subprocess.PIPE, text=True)
        assert echo.stdout.readline().strip() == "ready"
        seen = []
        for _ in range(4):  # fully-random: each new socket's port maps elsewhere (p ~ 1 - 1/64k)
            with lab.socket(lab.phone) as phone:
                phone.bind((lab.phone_ip, 0))
                local_port = phone.getsockname()[1]
                got = None
                for _attempt in range(3):  # UDP: resend a few times, bounded
                    phone.sendto(b"who am i", (lab.server_ip, ECHO_PORT))
                    got = _recv(phone, 1.0)
                    if got:
                        break
                assert got, "no echo from the server through the NAT"
                data, src = got
                assert src == (lab.server_ip, ECHO_PORT)
                addr, port = data.decode().split()
                seen.append((local_port, addr, int(port)))
        assert all(addr == lab.router_public_ip for _, addr, _ in seen), seen
        assert any(local != port for local, _, port in seen), seen


def test_mapping_admits_the_server_while_fresh_and_closes_after_the_udp_timeout():
    """The behaviour the keepalive test builds on. Why it is deterministic:
    conntrack (= the NAT mapping) in the router is refreshed by every datagram
    in either direction and, once its timeout has passed with no traffic, a
    lookup treats the entry as gone even before garbage collection reaps it.
    A datagram from the server to <router public addr>:<mapped port> then
    matches no mapping, is not translated, and is delivered to the router
    itself, which has no socket there (ICMP port unreachable to the server) —
    it never reaches the phone. Both UDP timeout knobs are set to 2 s before
    any traffic so the entry is created with the short timeout; we then stay
    silent for 3.5 s (timeout + 1.5 s margin for jiffies rounding/slow CI)."""
    with NatLab() as lab:
        lab.set_udp_timeout(2)
        assert lab.read_sysctl(lab.router, "net.netfilter.nf_conntrack_udp_timeout") == "2"
        assert lab.read_sysctl(lab.router, "net.netfilter.nf_conntrack_udp_timeout_stream") == "2"
        with lab.socket(lab.server) as server, lab.socket(lab.phone) as phone:
            server.bind((lab.server_ip, ECHO_PORT))
            phone.bind((lab.phone_ip, 0))

            phone.sendto(b"open", (lab.server_ip, ECHO_PORT))
            got = _recv(server, 2.0)
            assert got, "the phone's datagram did not reach the server"
            mapped = got[1]
            assert mapped[0] == lab.router_public_ip

            # Fresh mapping: the server reaches the phone through it.
            server.sendto(b"fresh", mapped)
            got = _recv(phone, 2.0)
            assert got and got[0] == b"fresh", "the server could not reach the phone via a fresh mapping"
            last_traffic = time.monotonic()

            # No traffic either way past the timeout: the pinhole closes.
            time.sleep(max(0.0, last_traffic + 3.5 - time.monotonic()))
            leftovers = [e for e in lab.conntrack_entries() if f"dport={ECHO_PORT}" in e]
            server.sendto(b"late", mapped)
            got = _recv(phone, 1.0)
            assert got is None, f"datagram passed a mapping that should have expired: {got}, {leftovers}"

            # Control: the path itself still works; the phone reopens a mapping.
            phone.sendto(b"again", (lab.server_ip, ECHO_PORT))
            got = _recv(server, 2.0)
            assert got and got[0] == b"again"
            server.sendto(b"back", got[1])
            got = _recv(phone, 2.0)
            assert got and got[0] == b"back"


def test_flush_conntrack_closes_the_mapping_at_once():
    with NatLab() as lab:
        if not lab.conntrack_available():
            pytest.skip("conntrack tool does not work in the router namespace")
        with lab.socket(lab.server) as server, lab.socket(lab.phone) as phone:
            server.bind((lab.server_ip, ECHO_PORT))
            phone.bind((lab.phone_ip, 0))
            phone.sendto(b"open", (lab.server_ip, ECHO_PORT))
            got = _recv(server, 2.0)
            assert got
            assert any(f"dport={ECHO_PORT}" in e for e in lab.conntrack_entries())
            assert lab.flush_conntrack()
            server.sendto(b"after flush", got[1])
            assert _recv(phone, 1.0) is None


def test_peer_is_reachable_from_the_server_without_nat():
    with NatLab(peer=True) as lab:
        with lab.socket(lab.server) as server, lab.socket(lab.peer) as peer:
            server.bind((lab.server_ip, ECHO_PORT))
            peer.bind((lab.peer_ip, 0))
            peer_port = peer.getsockname()[1]
            peer.sendto(b"hi", (lab.server_ip, ECHO_PORT))
            got = _recv(server, 2.0)
            assert got and got[1] == (lab.peer_ip, peer_port)  # seen as is: no NAT


def test_everything_is_removed_after_the_block_also_on_error():
    with NatLab(peer=True) as lab:
        names = set(lab.namespaces)
        assert names <= _namespaces()
        sleeper = lab.popen(lab.server, ["sleep", "60"])
    assert not names & _namespaces()
    assert sleeper.poll() is not None

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with NatLab() as lab:
            names = set(lab.namespaces)
            raise Boom
    assert not names & _namespaces()
