"""In-memory store for one core process: a dict of (value, expires_at).

Expiry is lazy (checked on read) plus a bounded sweep every few writes so keys
that are written once and never read again do not pile up. The clock is
injected so TTL tests need no sleeping.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from host.storage import Store, StoreError

# A sweep looks at this many keys every SWEEP_EVERY writes: the amortised cost
# stays O(1) per write while a steady writer still reclaims expired keys.
SWEEP_EVERY = 64
SWEEP_BATCH = 256

_NEVER = float("inf")


class MemoryStore(Store):
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._data: dict[str, tuple[Any, float]] = {}
        self._writes = 0
        self._sweep_keys: list[str] = []

    def __len__(self) -> int:
        return len(self._data)

    def _live(self, key: str):
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._data[key]
            return None
        return item

    async def get(self, key: str) -> Any:
        _check_key(key)
        item = self._live(key)
        return None if item is None else item[0]

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        _check_key(key)
        self._data[key] = (value, self._expiry(ttl))
        self._wrote()

    async def delete(self, key: str) -> bool:
        _check_key(key)
        existed = self._live(key) is not None
        self._data.pop(key, None)
        return existed

    async def incr(self, key: str, delta: int = 1, ttl: float | None = None) -> int:
        _check_key(key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise StoreError(f"incr: delta must be an integer, got {delta!r}")
        item = self._live(key)
        if item is None:
            value, expires = delta, self._expiry(ttl)
        else:
            old, expires = item
            if isinstance(old, bool) or not isinstance(old, int):
                raise StoreError(f"incr: value of {key!r} is not an integer")
            value = old + delta
        self._data[key] = (value, expires)
        self._wrote()
        return value

    def _expiry(self, ttl) -> float:
        if ttl is None:
            return _NEVER
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            raise StoreError(f"ttl must be a positive number of seconds, got {ttl!r}")
        return self._clock() + ttl

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % SWEEP_EVERY:
            return
        if not self._sweep_keys:
            self._sweep_keys = list(self._data)
        batch = self._sweep_keys[-SWEEP_BATCH:]
        del self._sweep_keys[-SWEEP_BATCH:]
        now = self._clock()
        for key in batch:
            item = self._data.get(key)
            if item is not None and item[1] <= now:
                del self._data[key]


def _check_key(key) -> None:
    if not isinstance(key, str) or not key:
        raise StoreError(f"key must be a non-empty string, got {key!r}")
