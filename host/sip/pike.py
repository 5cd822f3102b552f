"""Per-source request rate limits (what Kamailio's `pike` module does), sans-IO.

One token bucket per source IP: `rate` requests per second on average,
`burst` at once. A source that empties its bucket is *blocked*: what it
sends beyond the rate is denied, and the shell answers it with 503 or drops
it (host/shell/flood.py). It is unblocked once its bucket is full again,
i.e. once it kept under the rate for burst/rate seconds, so one flood is
one block, logged once, however long it lasts (a flooder always has the
odd token back). Sources on the allow-list (trunks, other cores) are never
limited.

Memory is bounded: at most `max_sources` buckets, the least recently seen
evicted first. Evicting a flooder's bucket only gives it a fresh burst,
which the next `burst` requests use up again. Times come from the caller.
"""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass

MAX_SOURCES = 65_536         # ~150 B per bucket: ~10 MB at most
ALLOW, DENY = "allow", "deny"


@dataclass(frozen=True)
class Change:
    """A source became blocked (`blocked` True) or was let through again."""
    ip: str
    blocked: bool


class _Bucket:
    __slots__ = ("tokens", "last", "blocked", "allowed")

    def __init__(self, tokens: float, now: float, allowed: bool):
        self.tokens, self.last, self.blocked, self.allowed = tokens, now, False, allowed


class SourceLimiter:
    def __init__(self, rate: float, burst: int, allow: tuple[str, ...] = (),
                 max_sources: int = MAX_SOURCES):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = float(rate), float(burst)
        self.allow = tuple(ipaddress.ip_network(net, strict=False) for net in allow)
        self.max_sources = max_sources
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self.changes: collections.deque[Change] = collections.deque(maxlen=256)
        self.denied = 0
        self.blocks = 0        # how many times a source became blocked
        self.unblocks = 0

    def admit(self, ip: str, now: float) -> str:
        """ALLOW or DENY one request from `ip` at time `now` (seconds)."""
        buckets = self._buckets
        bucket = buckets.get(ip)
        if bucket is None:
            bucket = _Bucket(self.burst, now, self._allowed(ip))
            buckets[ip] = bucket
            if len(buckets) > self.max_sources:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(ip)
        if bucket.allowed:
            return ALLOW
        elapsed = now - bucket.last
        if elapsed > 0:
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.last = now
        if bucket.tokens >= 1.0:
            if bucket.blocked and bucket.tokens >= self.burst:
                bucket.blocked = False
                self.unblocks += 1
                self.changes.append(Change(ip, False))
            bucket.tokens -= 1.0
            return ALLOW
        self.denied += 1
        if not bucket.blocked:
            bucket.blocked = True
            self.blocks += 1
            self.changes.append(Change(ip, True))
        return DENY

    def _allowed(self, ip: str) -> bool:
        if not self.allow:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.allow)

    def blocked(self) -> list[str]:
        return [ip for ip, b in self._buckets.items() if b.blocked]

    def statistics(self) -> dict:
        return {"sources": len(self._buckets), "blocked": len(self.blocked()),
                "denied": self.denied, "blocks": self.blocks, "unblocks": self.unblocks}
