"""Source-address steering of the workers' SO_REUSEPORT groups
(host/fleet/steering.py): the program against its Python twin in an
interpreter, then in the kernel: UDP and TCP on IPv4 loopback addresses,
UDP on IPv6 ones in a private network namespace."""

from __future__ import annotations

import collections
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host import cbpf
from host.fleet.steering import program, steer_by_source, worker_of

REPO = Path(__file__).resolve().parents[2]


def run(code, ip_header: bytes) -> int:
    """A classic BPF interpreter for the opcodes the program uses; loads at
    SKF_NET_OFF + n read the IP header, as the kernel's do."""
    pc, a, x = 0, 0, 0
    for _ in range(len(code)):
        op, jt, jf, k = code[pc]
        pc += 1
        if op in (cbpf.LD_W_ABS, cbpf.LD_B_ABS):
            offset = k - cbpf.SKF_NET_OFF
            a = ip_header[offset] if op == cbpf.LD_B_ABS else struct.unpack_from("!I", ip_header, offset)[0]
        elif op == cbpf.RSH_K:
            a >>= k
        elif op == cbpf.MUL_K:
            a = (a * k) & 0xFFFFFFFF
        elif op == cbpf.MOD_K:
            a %= k
        elif op == cbpf.XOR_X:
            a ^= x
        elif op == cbpf.TAX:
            x = a
        elif op == cbpf.JA:
            pc += k
        elif op == cbpf.JEQ_K:
            pc += jt if a == k else jf
        elif op == cbpf.RET_A:
            return a
        else:
            raise AssertionError(f"unknown opcode {op:#x}")
    raise AssertionError("fell off the end of the program")


def ipv4_header(src: str) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address("192.0.2.1").packed)


def ipv6_header(src: str) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, 8, 17, 64,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address("2001:db8::1").packed)


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_the_program_picks_what_worker_of_says_and_spreads_sources(count):
    code = program(count)
    picks = collections.Counter()
    for i in range(256):
        v4, v6 = f"10.{i}.7.{255 - i}", f"2001:db8:{i:x}::{i * 7:x}"
        assert run(code, ipv4_header(v4)) == worker_of(v4, count) < count
        assert run(code, ipv6_header(v6)) == worker_of(v6, count) < count
        picks[worker_of(v4, count)] += 1
    assert len(picks) == count and min(picks.values()) > 256 / count / 2, picks
    # A dual-stack socket sees IPv4 packets with IPv4 headers, and their
    # sources as IPv4-mapped addresses: the same pick.
    assert worker_of("::ffff:10.1.7.254", count) == worker_of("10.1.7.254", count)
    with pytest.raises(ValueError):
        program(0)


def group(kind: int, count: int) -> list[socket.socket]:
    members = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", members[0].getsockname()[1] if members else 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        sock.setblocking(False)
        members.append(sock)
    try:
        steer_by_source(members[0], count)
    except OSError as exc:
        for sock in members:
            sock.close()
        pytest.skip(f"the kernel refuses SO_ATTACH_REUSEPORT_CBPF: {exc}")
    return members


SOURCES = [f"127.0.0.{i}" for i in range(2, 14)]   # all on lo
PORTS_EACH = 6


def test_every_datagram_of_a_source_reaches_one_member_whatever_its_port():
    members = group(socket.SOCK_DGRAM, 3)
    port = members[0].getsockname()[1]
    try:
        for ip in SOURCES:
            for _ in range(PORTS_EACH):    # a new socket, a new source port each time
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                    sender.bind((ip, 0))
                    sender.sendto(ip.encode(), ("127.0.0.1", port))
        seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        deadline = time.monotonic() + 5
        while sum(map(sum, (c.values() for c in seen.values()))) < len(SOURCES) * PORTS_EACH \
                and time.monotonic() < deadline:
            for index, sock in enumerate(members):
                try:
                    seen[sock.recv(64).decode()][index] += 1
                except BlockingIOError:
                    time.sleep(0.001)
    finally:
        for sock in members:
            sock.close()
    assert {ip: dict(c) for ip, c in seen.items()} == {
        ip: {worker_of(ip, 3): PORTS_EACH} for ip in SOURCES}


def test_every_connection_of_a_source_reaches_one_listener():
    members = group(socket.SOCK_STREAM, 2)
    port = members[0].getsockname()[1]
    clients, accepted = [], collections.defaultdict(collections.Counter)
    try:
        for ip in SOURCES:
            for _ in range(PORTS_EACH):
                client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                client.bind((ip, 0))
                client.connect(("127.0.0.1", port))
                clients.append(client)
        deadline = time.monotonic() + 5
        while sum(map(sum, (c.values() for c in accepted.values()))) < len(clients) \
                and time.monotonic() < deadline:
            for index, listener in enumerate(members):
                try:
                    conn, (ip, _) = listener.accept()
                except BlockingIOError:
                    time.sleep(0.001)
                    continue
                conn.close()
                accepted[ip][index] += 1
    finally:
        for sock in (*clients, *members):
            sock.close()
    assert {ip: dict(c) for ip, c in accepted.items()} == {
        ip: {worker_of(ip, 2): PORTS_EACH} for ip in SOURCES}


# IPv6 sources need addresses of their own: added to lo in a private network
# namespace (root), where this driver prints each source's picks per member.
IPV6_DRIVER = """
import collections, json, socket, subprocess, sys, time
from host.fleet.steering import steer_by_source
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
sources = [f"fd00::{i:x}" for i in range(2, 14)]
for ip in sources:
    subprocess.run(["ip", "-6", "addr", "add", ip + "/128", "dev", "lo", "nodad"], check=True)
members = []
for _ in range(3):
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("::1", members[0].getsockname()[1] if members else 0))
    sock.setblocking(False)
    members.append(sock)
steer_by_source(members[0], 3)
for ip in sources:
    for _ in range(6):
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
            sender.bind((ip, 0))
            sender.sendto(ip.encode(), ("::1", members[0].getsockname()[1]))
time.sleep(0.2)
seen = collections.defaultdict(collections.Counter)
for index, sock in enumerate(members):
    while True:
        try:
            seen[sock.recv(64).decode()][index] += 1
        except BlockingIOError:
            break
print(json.dumps({ip: dict(c) for ip, c in seen.items()}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
                    reason="needs root, unshare and ip for a private network namespace")
def test_ipv6_sources_are_steered_by_their_whole_address():
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", IPV6_DRIVER], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert seen == {f"fd00::{i:x}": {str(worker_of(f"fd00::{i:x}", 3)): 6} for i in range(2, 14)}
