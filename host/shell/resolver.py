"""The DNS shell of RFC 3263 (host/sip/locate.py): dnspython's async
resolver under trio, with a TTL-respecting, bounded cache.

`locate.locate` says which records it needs; this module asks for them,
turns dnspython's rdata into locate's records, and caches each answer
(NAPTR, SRV, A, AAAA; "no such name" too) for its TTL. A lookup whose every
record is cached is answered with no task (`locate_nowait`), which is the
common case for a busy next hop.

Servers: the ones given (`--dns-server IP[:PORT]`, tests point this at their
own server), else the system's /etc/resolv.conf. With the system resolver,
address records come from getaddrinfo, so /etc/hosts keeps working.
"""

from __future__ import annotations

import collections
import logging
import random as _random

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import trio

from host.sip.locate import Naptr, Query, Srv, Target, locate

log = logging.getLogger("babelsip")

MAX_CACHED = 10_000          # record sets kept; the oldest go first
NEGATIVE_TTL = 30.0          # "no such name / no data" (RFC 2308 lets the SOA say; we cap it)
FAILED_TTL = 5.0             # a server that did not answer: do not ask again at once
MIN_TTL, MAX_TTL = 1.0, 3600.0
LIFETIME = 2.0               # seconds one query may take, retries included
SYSTEM_ADDRESS_TTL = 60.0    # getaddrinfo says no TTL
LOG_EVERY = 60.0             # at most one "cannot resolve" line per name per minute
_LOGGED_MAX = 1024
LOCAL_NAMES = ("localhost",)  # RFC 6761: never asked of a DNS server


class Resolver:
    def __init__(self, servers: list[tuple[str, int]] | None = None, *, lifetime: float = LIFETIME,
                 max_cached: int = MAX_CACHED, random=_random.random, clock=None):
        self.servers = servers
        if servers:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in servers]
        else:
            self._dns = dns.asyncresolver.Resolver()
        self._dns.lifetime = lifetime
        self._dns.timeout = lifetime
        self._cache: collections.OrderedDict = collections.OrderedDict()   # (name, type) -> (expires, records)
        self.max_cached = max_cached
        self.random = random
        self.clock = clock or trio.current_time
        self._logged: dict[str, float] = {}
        self.queries = 0
        self.cache_hits = 0
        self.failures = 0
        self.unresolvable = 0

    # ------------------------------------------------------------ locate
    def locate_nowait(self, scheme, host, port, transport, supported, families) -> list[Target] | None:
        """The targets if every record they need is cached, else None."""
        if host.lower() in LOCAL_NAMES:
            return self._local(scheme, host, port, transport, supported)
        lookup = locate(scheme, host, port, transport, supported, self.random, families)
        try:
            query = next(lookup)
            while True:
                records = self._cached(query)
                if records is None:
                    lookup.close()
                    return None
                query = lookup.send(records)
        except StopIteration as done:
            return self._checked(host, done.value or [])

    async def locate(self, scheme, host, port, transport, supported, families) -> list[Target]:
        if host.lower() in LOCAL_NAMES:
            return self._local(scheme, host, port, transport, supported)
        lookup = locate(scheme, host, port, transport, supported, self.random, families)
        try:
            query = next(lookup)
            while True:
                query = lookup.send(await self.records(query))
        except StopIteration as done:
            return self._checked(host, done.value or [])

    def _local(self, scheme, host, port, transport, supported):
        return self.locate_nowait(scheme, "127.0.0.1", port, transport, supported, ("A",))

    def _checked(self, host: str, targets: list[Target]) -> list[Target]:
        if not targets:
            self.unresolvable += 1
            now = self.clock()
            last = self._logged.get(host)
            if last is None or now - last >= LOG_EVERY:
                if len(self._logged) >= _LOGGED_MAX:
                    self._logged.clear()
                self._logged[host] = now
                log.warning("cannot resolve next hop %s: no usable NAPTR, SRV or address record "
                            "(RFC 3263); its requests get 503", host)
        return targets

    # ----------------------------------------------------------- records
    def _cached(self, query: Query):
        entry = self._cache.get((query.name, query.rdtype))
        if entry is None:
            return None
        if entry[0] < self.clock():
            del self._cache[(query.name, query.rdtype)]
            return None
        self.cache_hits += 1
        return entry[1]

    def _store(self, query: Query, ttl: float, records: list) -> None:
        cache = self._cache
        cache[(query.name, query.rdtype)] = (self.clock() + min(max(ttl, MIN_TTL), MAX_TTL), records)
        cache.move_to_end((query.name, query.rdtype))
        while len(cache) > self.max_cached:
            cache.popitem(last=False)

    async def records(self, query: Query) -> list:
        """The records for `query`, from the cache or a DNS server."""
        cached = self._cached(query)
        if cached is not None:
            return cached
        if not self.servers and query.rdtype in ("A", "AAAA"):
            return await self._system_addresses(query)
        self.queries += 1
        try:
            answer = await self._dns.resolve(query.name + ".", query.rdtype, raise_on_no_answer=False,
                                             search=False)
        except dns.resolver.NXDOMAIN:
            self._store(query, NEGATIVE_TTL, [])
            return []
        except (dns.exception.DNSException, OSError) as exc:
            self.failures += 1
            log.debug("dns %s %s: %s", query.rdtype, query.name, exc)
            self._store(query, FAILED_TTL, [])
            return []
        rrset = answer.rrset
        if rrset is None:
            self._store(query, NEGATIVE_TTL, [])
            return []
        records = [_record(rd) for rd in rrset]
        self._store(query, rrset.ttl, records)
        return records

    async def _system_addresses(self, query: Query) -> list:
        family = trio.socket.AF_INET if query.rdtype == "A" else trio.socket.AF_INET6
        try:
            infos = await trio.socket.getaddrinfo(query.name, None, family=family,
                                                  type=trio.socket.SOCK_DGRAM)
            records = list(dict.fromkeys(info[4][0] for info in infos))
        except OSError:
            records = []
        self._store(query, SYSTEM_ADDRESS_TTL if records else NEGATIVE_TTL, records)
        return records

    def statistics(self) -> dict:
        return {"queries": self.queries, "cache_hits": self.cache_hits, "failures": self.failures,
                "unresolvable": self.unresolvable, "cached": len(self._cache)}


def _record(rd):
    kind = rd.rdtype
    if kind == dns.rdatatype.NAPTR:
        return Naptr(rd.order, rd.preference, rd.flags.decode("ascii", "replace"),
                     rd.service.decode("ascii", "replace"), rd.replacement.to_text())
    if kind == dns.rdatatype.SRV:
        return Srv(rd.priority, rd.weight, rd.port, rd.target.to_text())
    if kind in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rd.address
    return None
