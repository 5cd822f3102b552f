"""How the serving process uses CPython's cycle collector.

A call's objects are freed by reference counting as its transactions end
(ProxyCore._release; tests/sip/test_call_memory.py fails on any cycle a call
leaves), so the collector frees nothing of the calls; it only scans them.
And it scans a lot: a call keeps its transactions for 32 s after its answer
(Timers J, L), so at 1,200 calls/s some 40,000 calls' objects are alive, and
with the default thresholds a full collection of all of them ran every half
second and took up to 730 ms (`--relay-to`, 1,200 calls/s: 2.5 s of 8 s in
16 full collections). A pause that long is more than the socket buffer holds
at that rate and more than T1: it turns into a retransmission storm.

So, once the server is up: what exists is frozen (never scanned again), the
young generations still collect, as before, the short-lived cycles that
trio, exceptions and tracebacks make, and the full collection no longer runs
on its own. It runs when a burst of calls is over (host/shell/timers.py:
release_memory), when there is little left to scan.
"""

from __future__ import annotations

import gc

# The young and middle generations keep CPython's defaults: every object a
# call keeps is scanned once in each of them whatever the thresholds, so
# larger ones buy nothing but longer pauses (10,000 young: up to 74 ms in the
# middle generation; these: 2-3 ms on average, 12 ms at most, at 1,500 calls/s).
YOUNG_THRESHOLD = 700
MIDDLE_THRESHOLD = 10
# Middle collections before a full one: never, in practice (see the doc).
FULL_THRESHOLD = 2**30


def settle_for_serving() -> None:
    """Freeze what the server made at start and stop automatic full collections."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, FULL_THRESHOLD)
