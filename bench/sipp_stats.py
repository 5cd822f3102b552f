"""INVITE -> 200 times per call, from sipp's short message trace, in microseconds.

sipp's own response-time figures are too coarse for a target of a few
milliseconds: `-trace_rtt` writes whole milliseconds (a loopback call is "0"),
and the ResponseTime counters of `-trace_stat` are a mean. Its
`-trace_shortmsg` log, though, stamps every message sent and received with
the wall clock in microseconds, one tab-separated line each:

    2026-12-02  06:30:27.763584  1796193027.763584  S  1-10546@127.0.0.1  CSeq:1 INVITE  INVITE sip:... SIP/2.0
    date        time             epoch.usec         S(ent)/R(eceived)  Call-ID  CSeq  first line

A call's time is from the first INVITE it sent (a retransmission does not
restart the clock: the caller waited since the first) to the first 200 it
received for that INVITE. Pure functions: tested without sipp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

FIELDS = 7   # date, time, epoch.usec, S/R, Call-ID, CSeq, first line


def _micros(epoch: str) -> int:
    """'1796193027.763584' -> integer microseconds (exact, unlike float)."""
    seconds, _, fraction = epoch.partition(".")
    return int(seconds) * 1_000_000 + int((fraction + "000000")[:6])


def invite_to_200_us(lines: Iterable[str]) -> dict[str, int]:
    """Call-ID -> µs from its first INVITE sent to its first 200 (to that
    INVITE) received. Calls without both are left out; so are lines that do
    not parse (sipp's last line may be cut off when it is stopped)."""
    sent: dict[str, int] = {}
    answered: dict[str, int] = {}
    for line in lines:
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < FIELDS:
            continue
        _, _, epoch, direction, call_id, cseq, first_line = fields[:FIELDS]
        if cseq.split()[-1:] != ["INVITE"]:
            continue
        try:
            when = _micros(epoch)
        except ValueError:
            continue
        if direction == "S" and first_line.startswith("INVITE "):
            sent.setdefault(call_id, when)
        elif direction == "R" and first_line.startswith("SIP/2.0 200"):
            answered.setdefault(call_id, when)
    return {call_id: answered[call_id] - start for call_id, start in sent.items()
            if call_id in answered}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % of the
    values at or below it (p=100 is the maximum)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Latency:
    """INVITE -> 200 over the calls of one step, in milliseconds."""

    calls: int       # calls measured (sent an INVITE and got its 200)
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, micros: Iterable[int]) -> Latency | None:
        values = [us / 1000 for us in micros]
        if not values:
            return None
        return cls(len(values), *(round(percentile(values, p), 3) for p in (50, 99, 100)))


def shortmsg_latency(path) -> Latency | None:
    """`Latency` of the calls in one `-trace_shortmsg` file (None: no call measured)."""
    try:
        with open(path, errors="replace") as f:
            return Latency.of(invite_to_200_us(f).values())
    except FileNotFoundError:
        return None
