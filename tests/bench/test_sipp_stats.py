"""bench/sipp_stats.py: INVITE -> 200 times from sipp's -trace_shortmsg lines, and percentiles."""

import pytest

from bench.sipp_stats import Latency, invite_to_200_us, percentile, shortmsg_latency


def line(epoch: str, direction: str, call_id: str, cseq: str, first: str) -> str:
    # the layout sipp 3.6.1 writes: date, time, epoch.usec, S/R, Call-ID, CSeq, first line
    return f"2026-12-02\t06:30:27.000000\t{epoch}\t{direction}\t{call_id}\t{cseq}\t{first}\n"


INVITE = "INVITE sip:service@127.0.0.1:5090 SIP/2.0"
OK = "SIP/2.0 200 OK"


def test_time_from_first_invite_to_first_200_in_microseconds():
    log = [
        line("1796193027.763584", "S", "1-1@h", "CSeq:1 INVITE", INVITE),
        line("1796193027.763775", "R", "1-1@h", "CSeq:1 INVITE", "SIP/2.0 180 Ringing"),
        line("1796193027.763837", "R", "1-1@h", "CSeq:1 INVITE", OK),
        line("1796193027.763935", "S", "1-1@h", "CSeq:1 ACK", "ACK sip:service@127.0.0.1:5090 SIP/2.0"),
        line("1796193027.763946", "R", "1-1@h", "CSeq:2 BYE", OK),   # the BYE's 200 is not the answer
    ]
    assert invite_to_200_us(log) == {"1-1@h": 253}


def test_a_retransmission_neither_restarts_nor_ends_the_clock():
    log = [
        line("100.000000", "S", "a", "CSeq:1 INVITE", INVITE),
        line("100.500000", "S", "a", "CSeq:1 INVITE", INVITE),   # Timer A retransmission
        line("100.700000", "R", "a", "CSeq:1 INVITE", OK),
        line("100.900000", "R", "a", "CSeq:1 INVITE", OK),       # the uas's 200 retransmitted
    ]
    assert invite_to_200_us(log) == {"a": 700_000}


def test_unanswered_calls_and_lines_that_do_not_parse_are_left_out():
    log = [
        line("100.000000", "S", "answered", "CSeq:1 INVITE", INVITE),
        line("100.000000", "S", "lost", "CSeq:1 INVITE", INVITE),
        line("100.002000", "R", "answered", "CSeq:1 INVITE", OK),
        line("100.003000", "R", "stray", "CSeq:1 INVITE", OK),   # no INVITE seen for it
        "2026-12-02\t06:30:27.0\t100.004\tR\tlost",                   # cut off when sipp stopped
        line("not-a-time", "R", "lost", "CSeq:1 INVITE", OK),
    ]
    assert invite_to_200_us(log) == {"answered": 2000}


def test_short_fractions_are_microseconds_not_a_float_rounding():
    log = [line("7.5", "S", "c", "CSeq:1 INVITE", INVITE),
           line("7.500001", "R", "c", "CSeq:1 INVITE", OK)]
    assert invite_to_200_us(log) == {"c": 1}


def test_nearest_rank_percentiles():
    values = list(range(1, 101))          # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([5.0], 99) == 5.0
    assert percentile([3, 1, 2], 50) == 2   # unsorted input
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_in_milliseconds_and_none_without_calls(tmp_path):
    assert Latency.of([1000, 2000, 3000, 250_000]) == Latency(4, 2.0, 250.0, 250.0)
    assert Latency.of([]) is None
    path = tmp_path / "uac.shortmsg"
    path.write_text(line("1.000000", "S", "x", "CSeq:1 INVITE", INVITE)
                    + line("1.001500", "R", "x", "CSeq:1 INVITE", OK))
    assert shortmsg_latency(path) == Latency(1, 1.5, 1.5, 1.5)
    assert shortmsg_latency(tmp_path / "missing") is None
