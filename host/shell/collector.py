"""How the serving process uses CPython's cycle collector.

A call's objects are freed by reference counting as its transactions end
(ProxyCore._release; tests/sip/test_call_memory.py fails on any cycle a call
leaves), so the collector frees nothing of the calls; it only scans them.
And it scans a lot: a call keeps its transactions for 32 s after its answer
(Timers J, L), so at 1,200 calls/s some 40,000 calls' objects are alive. With
the default thresholds a full collection of all of them ran every half second
and took up to 730 ms (`--relay-to`, 1,200 calls/s: 2.5 s of 8 s in 16 full
collections): longer than the socket buffer holds at that rate and than T1,
so it turned into a retransmission storm. With full collections off but the
middle generation still collecting, each middle collection rescanned every
object that had survived a young one since the last: 2-3 ms pauses every few
milliseconds of traffic, which were most of the latency babelsip added (p99
10 ms added at 1,500 calls/s; 2.4 ms with the collector off altogether).

So, once the server is up, every object is scanned at most once: what exists
is frozen, the young generation collects as before (the short-lived cycles
that trio, exceptions and tracebacks make die there), and what survives a
young collection is frozen at once, never scanned again (`gc.freeze` is a
list splice). A frozen object is still freed by reference counting as soon
as its call lets go of it; only a cycle that became garbage after its young
collection stays until a full one: `collect_all`, which runs when a burst of
calls is over (host/shell/timers.py: release_memory), when there is little
left to scan. (The middle generation this replaces had the same blind spot,
one collection later.)
"""

from __future__ import annotations

import gc

# Every object a call keeps is scanned once in the young generation whatever
# its threshold, so a larger one buys nothing but longer pauses.
YOUNG_THRESHOLD = 700
# The older generations never collect on their own: survivors are frozen.
NEVER = 2**30
FULL_THRESHOLD = NEVER


def _freeze_survivors(phase: str, info: dict) -> None:
    if phase == "stop" and info["generation"] == 0:
        gc.freeze()


def settle_for_serving() -> None:
    """Freeze what the server made at start, then every young collection's
    survivors; no collection of the older generations on its own."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, NEVER, NEVER)
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def collect_all() -> None:
    """A full collection of everything, frozen objects included, which are
    frozen again after it: for when little is alive (the end of a burst)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def stop_freezing() -> None:
    """Undo settle_for_serving's young-survivor freezing (tests)."""
    if _freeze_survivors in gc.callbacks:
        gc.callbacks.remove(_freeze_survivors)
