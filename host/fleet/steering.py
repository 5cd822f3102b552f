"""Which worker the kernel gives a datagram or a connection: by source address.

A SO_REUSEPORT group alone picks its member by a hash of the 4-tuple
(source and destination address and port), so one source sending from many
ports reaches every worker, and per-source flood limits, which each worker
keeps for what it receives (host/shell/flood.py), would let it through N
times. A classic BPF program attached to the group
(SO_ATTACH_REUSEPORT_CBPF, Linux 4.5) picks the member from the source
address alone: every datagram and every connection from one IP reaches the
same worker, whose buckets are then the whole server's. A message whose
Call-ID another worker owns is handed over after that check (ownership.py).

The program reads the source address from the IP header (IPv4, or the four
words of an IPv6 one xor-folded), mixes it with a multiplicative hash and
returns it modulo the group's size, in the order the parent bound the
members. `program(count)` is pure; `worker_of(ip, count)` is the same
function in Python, for tests and logs.
"""

from __future__ import annotations

import ipaddress
import socket

from host.cbpf import (JA, JEQ_K, LD_B_ABS, LD_W_ABS, MOD_K, MUL_K, RET_A, RSH_K, SKF_NET_OFF,
                       TAX, XOR_X, Program)

SO_ATTACH_REUSEPORT_CBPF = 51   # <asm-generic/socket.h>
GOLDEN = 0x9E3779B1             # Knuth's multiplicative hash: 2^32 / phi
IPV4_SOURCE, IPV6_SOURCE = 12, 8   # offsets of the source address in the headers


def program(count: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions returning the member index, 0..count-1."""
    if count < 1:
        raise ValueError("a group has at least one member")
    net = SKF_NET_OFF
    return [
        (LD_B_ABS, 0, 0, net),                    # version and header length
        (RSH_K, 0, 0, 4),
        (JEQ_K, 2, 0, 6),                         # IPv6: fold its source below
        (LD_W_ABS, 0, 0, net + IPV4_SOURCE),
        (JA, 0, 0, 10),
        (LD_W_ABS, 0, 0, net + IPV6_SOURCE),
        (TAX, 0, 0, 0),
        (LD_W_ABS, 0, 0, net + IPV6_SOURCE + 4),
        (XOR_X, 0, 0, 0),
        (TAX, 0, 0, 0),
        (LD_W_ABS, 0, 0, net + IPV6_SOURCE + 8),
        (XOR_X, 0, 0, 0),
        (TAX, 0, 0, 0),
        (LD_W_ABS, 0, 0, net + IPV6_SOURCE + 12),
        (XOR_X, 0, 0, 0),
        (MUL_K, 0, 0, GOLDEN),
        (RSH_K, 0, 0, 16),
        (MOD_K, 0, 0, count),
        (RET_A, 0, 0, 0),
    ]


def worker_of(ip: str, count: int) -> int:
    """The member `program(count)` picks for a packet from `ip`."""
    raw = ipaddress.ip_address(ip).packed
    if len(raw) == 16:
        ipv4_mapped = ipaddress.IPv6Address(raw).ipv4_mapped
        raw = ipv4_mapped.packed if ipv4_mapped is not None else raw
    words = [int.from_bytes(raw[i:i + 4], "big") for i in range(0, len(raw), 4)]
    folded = 0
    for word in words:
        folded ^= word
    return (((folded * GOLDEN) & 0xFFFFFFFF) >> 16) % count


def steer_by_source(sock: socket.socket, count: int) -> None:
    """Attach the program to the SO_REUSEPORT group `sock` belongs to
    (OSError when the kernel refuses it)."""
    code = Program(program(count))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, code.option())
