"""In-memory store for one core process: a dict of (value, expires_at).

Expiry is lazy (checked on read) plus a bounded sweep every few writes so keys
that are written once and never read again do not pile up. The clock is
injected so TTL tests need no sleeping.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from host.storage import Store, StoreError, checked_ttl

# A sweep looks at this many keys every SWEEP_EVERY writes: the amortised cost
# stays O(1) per write while a steady writer still reclaims expired keys.
SWEEP_EVERY = 64
SWEEP_BATCH = 256

_NEVER = float("inf")


class MemoryStore(Store):
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self._clock = clock
        self._wall = wall          # bindings expire in wall-clock time (shared with other cores)
        self._data: dict[str, tuple[Any, float]] = {}
        self._writes = 0
        self._sweep_keys: list[str] = []
        self._aors: dict[str, list] = {}
        self._aor_writes = 0
        self._aor_sweep: list[str] = []
        self._counters: dict[str, tuple[int, float]] = {}
        self._dialogs: dict[str, tuple[dict, float]] = {}
        self._profiles: dict[tuple[str, str], dict[str, float]] = {}

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

    # ------------------------------------------------------------ location
    async def bindings(self, aor: str) -> list:
        return list(self._aors.get(aor, ()))

    async def update_bindings(self, aor, change):
        new, result = change(list(self._aors.get(aor, ())))
        if new:
            self._aors[aor] = list(new)
        else:
            self._aors.pop(aor, None)
        self._swept_aors()
        return result

    async def aors(self) -> list[str]:
        return list(self._aors)

    def _swept_aors(self) -> None:
        # Records whose every binding expired are dropped a batch at a time,
        # so AoRs that register once and vanish do not pile up.
        self._aor_writes += 1
        if self._aor_writes % SWEEP_EVERY:
            return
        if not self._aor_sweep:
            self._aor_sweep = list(self._aors)
        batch = self._aor_sweep[-SWEEP_BATCH:]
        del self._aor_sweep[-SWEEP_BATCH:]
        now = self._wall()
        for aor in batch:
            bindings = self._aors.get(aor)
            if bindings is not None and all(b.expires_at <= now for b in bindings):
                del self._aors[aor]

    # -------------------------------------------------------- nonce counts
    async def advance(self, key: str, value: int, ttl: float) -> bool:
        _check_key(key)
        expires = self._expiry(ttl, optional=False)
        now = self._clock()
        item = self._counters.get(key)
        current = item[0] if item is not None and item[1] > now else 0
        if value <= current:
            return False
        counters = self._counters
        counters[key] = (value, expires)
        # The oldest counters come first (insertion order) and expire first:
        # a few looked at per write keep the table at about rate x ttl.
        for _ in range(4):
            oldest = next(iter(counters))
            if counters[oldest][1] > now:
                break
            del counters[oldest]
        return True

    # ------------------------------------------------- dialogs and profiles
    async def put_dialog(self, dialog_id: str, record: dict, ttl: float) -> None:
        self._dialogs[dialog_id] = (record, self._expiry(ttl, optional=False))

    async def get_dialog(self, dialog_id: str) -> dict | None:
        item = self._dialogs.get(dialog_id)
        if item is None or item[1] <= self._clock():
            self._dialogs.pop(dialog_id, None)
            return None
        return item[0]

    async def delete_dialog(self, dialog_id: str) -> bool:
        item = self._dialogs.pop(dialog_id, None)
        return item is not None and item[1] > self._clock()

    async def dialogs(self) -> list[dict]:
        now = self._clock()
        for k in [k for k, (_, exp) in self._dialogs.items() if exp <= now]:
            del self._dialogs[k]
        return [record for record, _ in self._dialogs.values()]

    async def profile_add(self, profile: str, key: str, member: str, ttl: float) -> int:
        expires = self._expiry(ttl, optional=False)
        members = self._profiles.setdefault((profile, key), {})
        members[member] = expires
        return self._profile_live(profile, key)

    async def profile_remove(self, profile: str, key: str, member: str) -> int:
        members = self._profiles.get((profile, key))
        if members is not None:
            members.pop(member, None)
        return self._profile_live(profile, key)

    async def profile_count(self, profile: str, key: str) -> int:
        return self._profile_live(profile, key)

    def _profile_live(self, profile: str, key: str) -> int:
        members = self._profiles.get((profile, key))
        if not members:
            self._profiles.pop((profile, key), None)
            return 0
        now = self._clock()
        for m in [m for m, exp in members.items() if exp <= now]:
            del members[m]
        if not members:
            del self._profiles[(profile, key)]
        return len(members)

    def _expiry(self, ttl, optional: bool = True) -> float:
        ttl = checked_ttl(ttl, optional=optional)
        return _NEVER if ttl is None else self._clock() + ttl

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
