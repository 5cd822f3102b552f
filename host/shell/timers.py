"""The timer service: the SIP core asks for timers, this fires them back.

A heap of (deadline, seq, key); one task sleeps until the earliest deadline
and is woken early when a sooner timer arrives. Cancelling is lazy: the core
ignores stale keys by generation, so nothing is ever removed from the heap.
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
        self._heap: list = []
        self._seq = count()
        self._wake_at = math.inf
        self._scope: trio.CancelScope | None = None

    def start(self, delay: float, key) -> None:
        deadline = trio.current_time() + delay
        heapq.heappush(self._heap, (deadline, next(self._seq), key))
        if deadline < self._wake_at and self._scope is not None:
            self._scope.cancel()

    def __len__(self) -> int:
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
                _, _, key = heapq.heappop(heap)
                self._fire(key)
                fired += 1
                if fired % 512 == 0:
                    await trio.lowlevel.checkpoint()
