"""Per-source token buckets (host/sip/pike.py), on an injected clock."""

from host.sip.pike import ALLOW, DENY, Change, SourceLimiter


def test_a_burst_is_admitted_then_the_rate_applies():
    limiter = SourceLimiter(rate=10, burst=5)
    verdicts = [limiter.admit("192.0.2.1", 0.0) for _ in range(8)]
    assert verdicts == [ALLOW] * 5 + [DENY] * 3
    # 0.1 s at 10/s is one token: one more request, not two.
    assert [limiter.admit("192.0.2.1", 0.1) for _ in range(2)] == [ALLOW, DENY]
    assert limiter.denied == 4


def test_one_flooding_source_does_not_limit_the_others():
    limiter = SourceLimiter(rate=10, burst=5)
    for i in range(1000):
        limiter.admit("192.0.2.66", i / 1000)
    assert limiter.admit("192.0.2.2", 1.0) is ALLOW
    assert limiter.blocked() == ["192.0.2.66"]


def test_block_and_unblock_are_reported_once_each():
    limiter = SourceLimiter(rate=1, burst=1)
    for t in (0.0, 0.1, 0.2, 0.3):
        limiter.admit("192.0.2.1", t)
    assert list(limiter.changes) == [Change("192.0.2.1", True)]
    assert limiter.admit("192.0.2.1", 5.0) is ALLOW
    assert list(limiter.changes) == [Change("192.0.2.1", True), Change("192.0.2.1", False)]
    assert (limiter.blocks, limiter.unblocks) == (1, 1)


def test_a_long_flood_is_one_block_and_gets_the_rate_until_it_calms_down():
    limiter = SourceLimiter(rate=10, burst=20)
    admitted = sum(limiter.admit("192.0.2.9", i / 1000) is ALLOW for i in range(10_000))
    # 10 s at 1,000/s: the burst, then 10/s; a token now and then is no unblock.
    assert 20 + 10 * 10 - 1 <= admitted <= 20 + 10 * 10
    assert (limiter.blocks, limiter.unblocks) == (1, 0) and limiter.blocked() == ["192.0.2.9"]
    # Under the rate for less than burst/rate seconds: still the same block.
    assert limiter.admit("192.0.2.9", 11.0) is ALLOW and limiter.unblocks == 0
    # Quiet long enough to fill its bucket: unblocked, once.
    assert limiter.admit("192.0.2.9", 14.0) is ALLOW
    assert (limiter.blocks, limiter.unblocks) == (1, 1) and limiter.blocked() == []
    assert list(limiter.changes) == [Change("192.0.2.9", True), Change("192.0.2.9", False)]


def test_the_allow_list_is_never_limited():
    limiter = SourceLimiter(rate=1, burst=1, allow=("198.51.100.0/24", "2001:db8::/32"))
    assert all(limiter.admit("198.51.100.7", 0.0) is ALLOW for _ in range(100))
    assert all(limiter.admit("2001:db8::5", 0.0) is ALLOW for _ in range(100))
    assert limiter.admit("198.51.101.7", 0.0) is ALLOW and limiter.admit("198.51.101.7", 0.0) is DENY


def test_memory_is_bounded_by_evicting_the_least_recently_seen():
    limiter = SourceLimiter(rate=1, burst=1, max_sources=100)
    limiter.admit("10.0.0.1", 0.0)
    limiter.admit("10.0.0.1", 0.0)           # blocked
    for i in range(10_000):
        limiter.admit(f"10.1.{i // 256}.{i % 256}", 0.0)
    assert limiter.statistics()["sources"] == 100
    # Evicted: the flooder starts again with one burst, no more.
    assert limiter.admit("10.0.0.1", 0.0) is ALLOW and limiter.admit("10.0.0.1", 0.0) is DENY
