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
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class StoreError(Exception):
    """A store operation that cannot be done (e.g. incr on a non-integer)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (a networked backend that is down)."""


def checked_ttl(ttl, *, optional: bool = True) -> float | None:
    """A ttl as every backend takes it: positive seconds; None (where
    optional) or infinity for never."""
    if ttl is None and optional:
        return None
    if (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl != ttl or ttl <= 0):
        raise StoreError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return None if ttl == float("inf") else float(ttl)


class Store(ABC):
    # True for a backend in another process (Redis), which can be down:
    # callers then keep what they need to ride out an outage.
    networked = False
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

    # ------------------------------------------------ location (registrar)
    # One record per address-of-record: the list of its bindings, objects
    # with an `expires_at` attribute (wall-clock seconds, time.time(), so
    # several cores agree). The registrar's rules (host/sip/registrar.py)
    # decide what the list becomes; the store only keeps it, atomically.

    @abstractmethod
    async def bindings(self, aor: str) -> list:
        """The bindings stored for `aor` (possibly some expired: callers filter)."""

    @abstractmethod
    async def update_bindings(self, aor: str, change: Callable[[list], tuple[list, T]]) -> T:
        """Atomically replace the bindings of `aor` with what `change(current)`
        returns first, and return its second value. `change` is pure; when it
        raises, nothing is stored. An empty list removes the record."""

    @abstractmethod
    async def aors(self) -> list[str]:
        """Every address-of-record with a record (management, keepalive)."""

    # ------------------------------------------------ nonce counts (digest)
    @abstractmethod
    async def advance(self, key: str, value: int, ttl: float) -> bool:
        """Raise the counter `key` to `value` if `value` is higher than what
        it holds (absent counts as 0); True when it did. Atomic: two cores
        presenting the same nonce-count cannot both succeed."""

    # ------------------------------------------------ dialogs and profiles
    @abstractmethod
    async def put_dialog(self, dialog_id: str, record: dict, ttl: float) -> None:
        """Keep a dialog's record (JSON-able) for at most `ttl` seconds."""

    @abstractmethod
    async def get_dialog(self, dialog_id: str) -> dict | None: ...

    @abstractmethod
    async def delete_dialog(self, dialog_id: str) -> bool: ...

    @abstractmethod
    async def dialogs(self) -> list[dict]:
        """Every dialog record kept (management)."""

    @abstractmethod
    async def profile_add(self, profile: str, key: str, member: str, ttl: float) -> int:
        """Count `member` (a dialog id) in `profile` under `key` for at most
        `ttl` seconds; returns the new count."""

    @abstractmethod
    async def profile_remove(self, profile: str, key: str, member: str) -> int:
        """Stop counting `member`; returns the new count."""

    @abstractmethod
    async def profile_count(self, profile: str, key: str) -> int: ...

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


__all__ = ["Store", "StoreError", "StoreUnavailable", "shared_store", "set_shared_store"]
