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
"""

from __future__ import annotations

import heapq
import math
from itertools import count
from typing import Callable

import trio


class TimerService:
    def __init__(self, fire: Callable[[object], None]):
        self._fire = fire
        self._heap: list = []       # [deadline, seq, key]; key None once cancelled
        self._pending: dict = {}    # key -> its heap entry
        self._cancelled = 0         # entries in the heap whose key is None
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
        if old is not None:
            self._drop(old)
        heapq.heappush(self._heap, entry)
        if deadline < self._wake_at and self._scope is not None:
            self._scope.cancel()

    def cancel(self, key) -> None:
        """Forget the pending timer `key`; unknown or fired keys are ignored."""
        entry = self._pending.pop(key, None)
        if entry is not None:
            self._drop(entry)

    def _drop(self, entry) -> None:
        entry[2] = None
        self._cancelled += 1
        if self._cancelled * 2 > len(self._heap):
            # In place: run() holds a reference to the list.
            self._heap[:] = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._pending = dict(self._pending)
            self._cancelled = 0

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
                    self._cancelled -= 1
                    continue
                del self._pending[key]
                self._fire(key)
                fired += 1
                if fired % 512 == 0:
                    await trio.lowlevel.checkpoint()
