"""The OPTIONS keep-alive schedule (host/sip/keepalive.py), on an injected clock."""

import collections

import pytest

from host.sip.keepalive import KEEPALIVE_BRANCH_PREFIX, KeepaliveSchedule, options_ping
from host.sip.parser import parse_message


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def flow(i):
    return ("udp", f"203.0.113.{i % 250 + 1}", 10000 + i)


def schedule(interval=30.0, misses=3, **kw):
    clock = Clock()
    return KeepaliveSchedule(interval, misses, clock, local=("udp", "198.51.100.1", 5060),
                             from_uri="sip:ping@proxy.example.com", **kw), clock


def run(ka, clock, until, step=0.05, answer=False):
    """Call due() every `step` seconds up to `until` (answering each ping at
    once if `answer`): [(time, ping)]."""
    out = []
    while clock.now <= until:
        for p in ka.due(clock.now):
            out.append((clock.now, p))
            if answer:
                ka.answered(p.branch)
        clock.now = round(clock.now + step, 6)
    return out


def test_thousand_flows_are_spread_over_one_interval():
    ka, clock = schedule(interval=30.0)
    for i in range(1000):
        ka.add(flow(i), f"sip:u{i}@example.com", f"sip:u{i}@10.0.0.{i % 250}:5060")
    pings = run(ka, clock, 29.99, step=0.01)
    assert len(pings) == 1000 and len({p.flow for _, p in pings}) == 1000
    per_instant = collections.Counter(t for t, _ in pings)
    assert len(per_instant) > 900              # almost every ping at its own instant
    assert max(per_instant.values()) <= 3
    # ...and evenly: every tenth of the interval holds about a tenth of them.
    per_slice = collections.Counter(int(t // 3) for t, _ in pings)
    assert all(90 <= n <= 110 for n in per_slice.values()) and len(per_slice) == 10


def test_each_flow_keeps_its_phase():
    ka, clock = schedule(interval=10.0)
    ka.add(flow(1), "sip:a@x", "sip:a@10.0.0.1")
    ka.add(flow(2), "sip:b@x", "sip:b@10.0.0.2")
    times = collections.defaultdict(list)
    for t, p in run(ka, clock, 40, answer=True):
        times[p.flow].append(t)
    assert [len(ts) for ts in times.values()] == [5, 4]   # phases 0 and 6.18 s
    for ts in times.values():
        assert all(abs((b - a) - 10.0) < 0.06 for a, b in zip(ts, ts[1:]))
    assert times[flow(1)][0] != times[flow(2)][0]


def test_next_due_tells_when_to_call():
    ka, clock = schedule(interval=10.0)
    assert ka.next_due() is None
    ka.add(flow(1), "sip:a@x", "sip:a@10.0.0.1")
    when = ka.next_due()
    assert when is not None and 0 <= when < 10
    assert ka.due(when - 0.001) == []
    [ping] = ka.due(when)
    assert ka.next_due() == pytest.approx(when + 10)
    ka.remove(flow(1))
    assert ka.next_due() is None


def test_late_call_skips_missed_slots_and_keeps_phase():
    ka, clock = schedule(interval=10.0)
    ka.add(flow(1), "sip:a@x", "sip:a@10.0.0.1")
    first = ka.next_due()
    [p] = ka.due(first + 35)                   # the process stalled: one ping, not four
    ka.answered(p.branch)
    assert ka.next_due() == pytest.approx(first + 40)


def test_dead_after_misses_in_a_row():
    ka, clock = schedule(interval=10.0, misses=3)
    ka.add(flow(1), "sip:a@x", "sip:a@10.0.0.1")
    ka.add(flow(2), "sip:b@x", "sip:b@10.0.0.2")
    sent, died = collections.Counter(), []
    while clock.now <= 45:
        for p in ka.due(clock.now):
            sent[p.flow] += 1
            if p.flow == flow(2):
                ka.answered(p.branch)
        died += [(clock.now, d[0]) for d in ka.dead()]
        clock.now = round(clock.now + 0.05, 6)
    assert sent[flow(1)] == 3                   # three pings went unanswered...
    [(when, who)] = died                        # ...and the fourth slot found it dead
    assert who == flow(1) and 30 <= when < 40
    assert flow(1) not in ka and flow(2) in ka and sent[flow(2)] == 4


def test_dead_is_returned_once_and_forgotten():
    ka, clock = schedule(interval=10.0, misses=2)
    ka.add(flow(1), "sip:a@x", "sip:a@10.0.0.1")
    run(ka, clock, 25)
    assert ka.dead() == [(flow(1), "sip:a@x", "sip:a@10.0.0.1")]
    assert ka.dead() == [] and len(ka) == 0 and ka.next_due() is None


def test_answered_resets_misses_even_for_an_older_ping():
    ka, clock = schedule(interval=10.0, misses=2)
    ka.add(flow(1), "sip:a@x", "sip:a@10.0.0.1")
    pings = [p for _, p in run(ka, clock, 15)]          # two pings, one miss
    assert len(pings) == 2
    ka.answered(pings[0].branch)                        # a late answer to the first
    run(ka, clock, 35)
    assert ka.dead() == []                              # not dead at 20 s...
    run(ka, clock, 45)
    assert ka.dead() == [(flow(1), "sip:a@x", "sip:a@10.0.0.1")]  # ...but two misses later


def test_answers_to_foreign_or_removed_pings_are_ignored():
    ka, clock = schedule(interval=10.0, misses=1, salt="s1")
    ka.add(flow(1), "sip:a@x", "sip:a@10.0.0.1")
    [(_, p)] = run(ka, clock, 9.99)
    other, _ = schedule(interval=10.0, salt="s2")
    for branch in ("z9hG4bKother", KEEPALIVE_BRANCH_PREFIX + "s2" + p.branch[-3:],
                   KEEPALIVE_BRANCH_PREFIX + "s1zz.1", KEEPALIVE_BRANCH_PREFIX + "s1",
                   KEEPALIVE_BRANCH_PREFIX + "s1ff.1"):
        ka.answered(branch)
    run(ka, clock, 20)
    assert [d[0] for d in ka.dead()] == [flow(1)]


def test_remove_and_readd():
    ka, clock = schedule(interval=10.0)
    ka.add(flow(1), "sip:a@x", "sip:a@10.0.0.1")
    ka.add(flow(1), "sip:a@x", "sip:a@10.0.0.9")          # re-REGISTER: new contact, same phase
    when = ka.next_due()
    [p] = ka.due(when)
    assert b"OPTIONS sip:a@10.0.0.9 SIP/2.0" in p.request
    ka.remove(flow(1))
    ka.remove(flow(1))                                   # twice is fine
    assert run(ka, clock, 30) == [] and len(ka) == 0
    ka.answered(p.branch)                                # late answer: no resurrection
    assert len(ka) == 0


def test_churn_keeps_memory_bounded():
    ka, clock = schedule(interval=10.0)
    for i in range(10000):
        ka.add(flow(i), "sip:a@x", "sip:a@10.0.0.1")
        ka.remove(flow(i))
    assert len(ka) == 0 and len(ka._heap) <= 16 and not ka._serials


def test_options_ping_parses_and_carries_the_branch():
    ka, clock = schedule(interval=10.0, salt="abc")
    ka.add(flow(1), "sip:a@x", '"A" <sip:a@10.0.0.1:5062;transport=udp>;expires=60')
    [p] = ka.due(ka.next_due())
    assert p.branch.startswith(KEEPALIVE_BRANCH_PREFIX + "abc")
    msg = parse_message(p.request)
    assert msg.method == "OPTIONS"
    assert msg.uri == "sip:a@10.0.0.1:5062;transport=udp"
    assert msg.via.branch == p.branch and msg.via.host == "198.51.100.1"
    assert "rport" in msg.via.params
    assert msg.header("max-forwards") == "70"
    assert msg.header("from").startswith("<sip:ping@proxy.example.com>;tag=")
    assert msg.header("to") == "<sip:a@10.0.0.1:5062;transport=udp>"
    assert msg.call_id and msg.cseq == 1 and msg.cseq_method == "OPTIONS"
    assert msg.header("content-length") == "0" and msg.body == b""


def test_options_ping_ipv6_and_unique_ids():
    a = options_ping("sip:a@[2001:db8::2]", ("udp", "2001:db8::2", 5060),
                     KEEPALIVE_BRANCH_PREFIX + "1.1", ("udp", "2001:db8::1", 5060), "sip:p@x")
    b = options_ping("sip:a@[2001:db8::2]", ("udp", "2001:db8::2", 5060),
                     KEEPALIVE_BRANCH_PREFIX + "1.2", ("udp", "2001:db8::1", 5060), "sip:p@x")
    ma, mb = parse_message(a), parse_message(b)
    assert ma.via.host.strip("[]") == "2001:db8::1"
    assert ma.call_id != mb.call_id
    assert ma.header("from") != mb.header("from")


def test_bad_arguments():
    with pytest.raises(ValueError):
        KeepaliveSchedule(0)
    with pytest.raises(ValueError):
        KeepaliveSchedule(10, misses=0)
    with pytest.raises(ValueError):
        KeepaliveSchedule(10, salt="a.b")


def test_without_clock_uses_last_due_time():
    ka = KeepaliveSchedule(10.0)
    ka.due(100.0)
    ka.add(flow(1), "sip:a@x", "sip:a@10.0.0.1")
    assert 100.0 <= ka.next_due() < 110.0
