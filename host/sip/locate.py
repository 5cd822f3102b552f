"""Locating SIP servers (RFC 3263 §4, client side), sans-IO.

From a next-hop URI and DNS answers, the ordered list of places to try:
(transport, IP address, port). No sockets and no clock here: `locate` is a
generator that yields the `Query` it needs answered and receives the
records (a list, empty for "no such name / no data"); the shell
(host/shell/resolver.py) asks a real DNS server and caches by TTL, tests
answer from a dict. Randomness (RFC 2782 weights) is injected.

The steps, as RFC 3263 §4.1/§4.2 give them:
  - a numeric IP: that address; the transport is the URI's `transport`
    parameter, else UDP (TLS for sips); the port is the URI's or the default;
  - an explicit port (or a transport parameter with a name and no NAPTR to
    ask): no NAPTR; SRV only when there is no port; A/AAAA of the host;
  - otherwise NAPTR of the host, keeping the services we can use (sips:
    only the SIPS+ ones), by order then preference; each names an SRV
    record set;
  - no usable NAPTR: SRV of `_sip._udp`, `_sip._tcp` (`_sips._tcp` for
    sips) in that order;
  - no SRV: A/AAAA of the host at the default port, on the first transport
    we support.
The list keeps every alternative in order, so the core can fail over to the
next one on a 503, a transport error or a timeout (§4.3).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Callable, Generator

# NAPTR service field -> our transport name (RFC 3263 §4.1, RFC 7118 §5 for D2W).
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls",
                  "SIP+D2W": "ws", "SIPS+D2W": "wss"}
# transport -> the SRV prefix of its service (RFC 3263 §4.1, RFC 7118 §5).
SRV_PREFIXES = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp.",
                "ws": "_sip._ws.", "wss": "_sips._ws."}
SECURE = frozenset({"tls", "wss"})
# When nothing in DNS names a transport: the order RFC 3263 §4.1 implies.
FALLBACK_ORDER = ("udp", "tcp")
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 5060, "wss": 5061}
# Bounds on what a (hostile or broken) zone can make us hold or ask.
MAX_NAPTR = 8
MAX_SRV = 16
MAX_TARGETS = 16


@dataclass(frozen=True)
class Query:
    name: str
    rdtype: str          # "NAPTR", "SRV", "A" or "AAAA"


@dataclass(frozen=True)
class Naptr:
    order: int
    preference: int
    flags: str
    service: str
    replacement: str


@dataclass(frozen=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class Target:
    transport: str
    ip: str
    port: int


Lookup = Generator[Query, list, list[Target]]


# Every request asks whether its next hop is an address literal, and most
# go to a few hosts: the answers are remembered (bounded: hosts come from the wire).
@functools.lru_cache(maxsize=4096)
def is_ip(host: str) -> bool:
    """Whether `host` is an IPv4 or IPv6 literal ([] around IPv6 allowed)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def locate(scheme: str, host: str, port: int | None, transport: str | None,
           supported: frozenset[str], random: Callable[[], float],
           families: tuple[str, ...] = ("A", "AAAA")) -> Lookup:
    """The targets for a next hop `scheme:host[:port][;transport=…]`, best
    first (see the module doc). `transport` is the URI's parameter (None:
    not given), `supported` the transports we have listeners for,
    `random()` a float in [0, 1), `families` the address records worth
    asking (no AAAA when we cannot send over IPv6)."""
    host = host.strip("[]").rstrip(".").lower()
    secure = scheme == "sips"
    if transport is not None:
        transport = transport.lower()
    if is_ip(host):
        chosen = transport or ("tls" if secure else "udp")
        return _usable([Target(chosen, host, port or DEFAULT_PORTS.get(chosen, 5060))], supported)
    if port is not None:
        chosen = transport or ("tls" if secure else "udp")
        if chosen not in supported:
            return []
        return (yield from _addresses(chosen, host, port, families))
    if transport is not None:
        if transport not in supported or transport not in SRV_PREFIXES:
            return []
        found = yield from _srv_targets(transport, SRV_PREFIXES[transport] + host, random, families)
        if found:
            return found[:MAX_TARGETS]
        return (yield from _addresses(transport, host, DEFAULT_PORTS[transport], families))
    services = yield from _naptr_services(host, secure, supported)
    targets: list[Target] = []
    if services:
        for chosen, srv_name in services:
            targets += yield from _srv_targets(chosen, srv_name, random, families)
            if len(targets) >= MAX_TARGETS:
                break
        if targets:
            return targets[:MAX_TARGETS]
    order = ("tls",) if secure else FALLBACK_ORDER
    usable = [t for t in order if t in supported]
    for chosen in usable:
        targets += yield from _srv_targets(chosen, SRV_PREFIXES[chosen] + host, random, families)
        if len(targets) >= MAX_TARGETS:
            break
    if targets:
        return targets[:MAX_TARGETS]
    if not usable:
        return []
    return (yield from _addresses(usable[0], host, DEFAULT_PORTS[usable[0]], families))


def _usable(targets: list[Target], supported) -> list[Target]:
    return [t for t in targets if t.transport in supported]


def _naptr_services(host: str, secure: bool, supported) -> Generator[Query, list, list[tuple[str, str]]]:
    """RFC 3263 §4.1: the NAPTR records we can use, as (transport, SRV
    name), by order then preference. Only "s" records (an SRV next), only
    SIPS+ services for a sips URI."""
    records = yield Query(host, "NAPTR")
    kept = []
    for rec in records:
        if type(rec) is not Naptr or rec.flags.lower() != "s":
            continue
        chosen = NAPTR_SERVICES.get(rec.service.upper())
        if chosen is None or chosen not in supported or (secure and chosen not in SECURE):
            continue
        kept.append(rec)
    kept.sort(key=lambda r: (r.order, r.preference))
    return [(NAPTR_SERVICES[r.service.upper()], r.replacement.rstrip(".").lower())
            for r in kept[:MAX_NAPTR]]


def order_srv(records: list[Srv], random: Callable[[], float]) -> list[Srv]:
    """RFC 2782: by priority, lowest first; within one priority, a weighted
    random order (a record's chance to come next is its share of the weights
    left; weight 0 records come first in the running sum, so they are picked
    rarely when others weigh something). A target "." means "no service"."""
    usable = [r for r in records if type(r) is Srv and r.target not in (".", "")][:MAX_SRV]
    out: list[Srv] = []
    for priority in sorted({r.priority for r in usable}):
        group = sorted((r for r in usable if r.priority == priority), key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = int(random() * (total + 1))
            running = 0
            for index, rec in enumerate(group):
                running += rec.weight
                if running >= pick:
                    break
            out.append(group.pop(index))
    return out


def _srv_targets(transport: str, name: str, random, families) -> Generator[Query, list, list[Target]]:
    records = yield Query(name, "SRV")
    targets: list[Target] = []
    for rec in order_srv(records, random):
        targets += yield from _addresses(transport, rec.target.rstrip(".").lower(), rec.port, families)
        if len(targets) >= MAX_TARGETS:
            break
    return targets


def _addresses(transport: str, host: str, port: int, families) -> Generator[Query, list, list[Target]]:
    """RFC 3263 §4.2: A (and AAAA) records of `host`, each a target."""
    if is_ip(host):
        return [Target(transport, host, port)]
    targets = []
    for family in families:
        records = yield Query(host, family)
        targets += [Target(transport, ip, port) for ip in records if type(ip) is str][:MAX_TARGETS]
    return targets


def run_with(lookup: Lookup, answer: Callable[[Query], list]) -> list[Target]:
    """Drive `lookup` with a synchronous `answer(query)` (tests, and any
    caller whose answers are all at hand)."""
    try:
        query = next(lookup)
        while True:
            query = lookup.send(answer(query))
    except StopIteration as done:
        return done.value or []
