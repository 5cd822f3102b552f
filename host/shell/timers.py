"""The timer service: the SIP core asks for timers, this fires them back.

A heap of [deadline, seq, key] entries; one task sleeps until the earliest
deadline and is woken early when a sooner timer arrives. Keys are the core's
plain-id tuples (host/sip/actions.py: Arm), unique per arming.

Cancelling (`cancel`, the core's Disarm) is real for what matters: the key
leaves the table at once and its entry drops the key, so a cancelled timer
holds nothing of its call. The empty entry itself stays in the heap until it
comes up or until cancelled entries outnumber live ones, when the heap (and
the key table, which a dict never shrinks on its own) is rebuilt without
them: so the heap never holds more than twice the timers pending, however
long the cancelled ones would have run (Timer C: 180 s). A rebuild of n
entries follows at least n/2 cancellations, so it costs O(1) per cancel
amortized. There is no lower bound on purpose: a few hundred empty entries
left from a flood, scattered over the memory the flood used, would pin that
memory in the allocator's arenas after the calls are gone.

Every call in progress has timers, so the number pending follows the calls.
When it falls to 1/RELEASE_FRACTION of its high-water mark, most of a burst
of calls is over and `release_memory` hands their memory back to the OS; it
does again each time the rest falls by that factor again, down to none left.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import math
import time
from itertools import count
from typing import Callable

import trio

from .collector import collect_all

log = logging.getLogger("babelsip")

# A burst is over when the timers pending have fallen to 1/8 of their peak;
# a peak below 8,192 (a few seconds of calls at 1,000/s) leaves too little to
# give back to be worth a full collection.
RELEASE_FRACTION = 8
RELEASE_MIN_PEAK = 8192

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim   # glibc only
except (OSError, AttributeError):
    _malloc_trim = None


def release_memory() -> float:
    """Give the memory of finished calls back to the OS; returns the seconds
    it took. Freed objects are not enough: CPython keeps up to 2,000 freed
    tuples of each size (and lists, dicts, floats) for reuse, and those
    scattered over a burst's memory pin all of it in pymalloc's arenas (a
    20,000-INVITE flood: 180 MB kept, 100 MB after this collection). A full
    collection empties those free lists, and collects the cycles frozen
    since the last one (collector.py); it scans what is alive, i.e. little
    once the burst is over. malloc_trim returns the free pages glibc keeps
    below its heap top."""
    start = time.perf_counter()
    collect_all()
    if _malloc_trim is not None:
        _malloc_trim(0)
    return time.perf_counter() - start


class TimerService:
    def __init__(self, fire: Callable[[object], None]):
        self._fire = fire
        self._heap: list = []       # [deadline, seq, key]; key None once cancelled
        self._pending: dict = {}    # key -> its heap entry; the rest of the heap is cancelled
        self._peak = 0              # most timers pending since the last release
        self._tail = False          # the calls of a burst are still ending
        self._seq = count()
        self._wake_at = math.inf
        self._scope: trio.CancelScope | None = None

    def start(self, delay: float, key) -> None:
        """Fire `key` after `delay` seconds; a pending timer with the same
        key is replaced."""
        deadline = trio.current_time() + delay
        entry = [deadline, next(self._seq), key]
        old = self._pending.get(key)
        self._pending[key] = entry
        heapq.heappush(self._heap, entry)
        if old is not None:
            self._drop(old)
        elif len(self._pending) > self._peak:
            self._peak = len(self._pending)
        if deadline < self._wake_at and self._scope is not None:
            # Sooner than the sleep: move its deadline. Cancelling woke the
            # task at once, only for it to go back to sleep until this one.
            self._wake_at = self._scope.deadline = deadline

    def cancel(self, key) -> None:
        """Forget the pending timer `key`; unknown or fired keys are ignored."""
        entry = self._pending.pop(key, None)
        if entry is not None:
            self._drop(entry)
            if len(self._pending) * RELEASE_FRACTION < self._peak:
                self._burst_over()

    def _drop(self, entry) -> None:
        entry[2] = None
        # Every pending key has one entry in the heap, so the other entries
        # are the cancelled ones: rebuild once they outnumber the live.
        if len(self._heap) > 2 * len(self._pending):
            # In place: run() holds a reference to the list.
            self._heap[:] = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._pending = dict(self._pending)

    def _burst_over(self) -> None:
        peak, self._peak = self._peak, len(self._pending)
        if peak >= RELEASE_MIN_PEAK or self._tail:
            took = release_memory()
            self._tail = self._peak > 0
            log.info("timers pending fell from %d to %d: memory released in %.0f ms",
                     peak, self._peak, took * 1000)

    def __len__(self) -> int:
        """Timers pending (cancelled ones not counted)."""
        return len(self._pending)

    @property
    def heap_size(self) -> int:
        """Entries in the heap, cancelled ones included."""
        return len(self._heap)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        heap = self._heap
        task_status.started()
        while True:
            while heap and heap[0][2] is None:
                heapq.heappop(heap)   # cancelled: not worth waking up for
            self._wake_at = heap[0][0] if heap else math.inf
            with trio.CancelScope(deadline=self._wake_at) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            fired = 0
            while heap and heap[0][0] <= now:
                key = heapq.heappop(heap)[2]
                if key is None:
                    continue
                del self._pending[key]
                self._fire(key)
                fired += 1
                if fired % 512 == 0:
                    await trio.lowlevel.checkpoint()
            if len(self._pending) * RELEASE_FRACTION < self._peak:
                self._burst_over()
