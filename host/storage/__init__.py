"""Key/value store with TTL shared by routes (and later by several cores).

One small async interface so a Redis/Valkey backend can replace the in-memory
one without touching callers. Values are JSON-able (str, int, float, bool,
None, list, dict): that is what crosses the line-JSON protocol and what a
networked backend can serialise.

`shared_store()` is the process-wide default the runtimes use when they are
not handed a store explicitly; `set_shared_store()` swaps it (e.g. for Redis).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class StoreError(Exception):
    """A store operation that cannot be done (e.g. incr on a non-integer)."""


class Store(ABC):
    @abstractmethod
    async def get(self, key: str) -> Any:
        """The value, or None when absent or expired."""

    @abstractmethod
    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store a value; `ttl` seconds until it expires, None = never."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove a key; True when it existed."""

    @abstractmethod
    async def incr(self, key: str, delta: int = 1, ttl: float | None = None) -> int:
        """Add `delta` to an integer (absent counts as 0) and return the new
        value. `ttl` applies only when the key is created, like the common
        Redis INCR + EXPIRE NX idiom for rate counters."""

    async def aclose(self) -> None:
        """Release connections (no-op in memory)."""


_shared: Store | None = None


def shared_store() -> Store:
    global _shared
    if _shared is None:
        from host.storage.memory import MemoryStore
        _shared = MemoryStore()
    return _shared


def set_shared_store(store: Store) -> None:
    global _shared
    _shared = store


__all__ = ["Store", "StoreError", "shared_store", "set_shared_store"]
