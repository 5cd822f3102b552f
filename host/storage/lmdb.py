"""The store in an LMDB environment: one directory that several core
processes of one host open at once (`babelsip run --workers N` with no
`--store`).

Why LMDB: bench/shared_store_options.py measured it against SQLite, a
parent-owned MemoryStore and Redis; it is the cheapest per operation and its
writer lock is a robust process-shared mutex, so a `change` closure runs as it
is inside one cross-process write transaction (no retries) and a process
killed in the middle of one leaves nothing behind.

Layout: five named sub-databases in one environment. Every value starts with
its absolute wall-clock expiry as a little-endian double (`inf` = never):
processes share wall-clock time, not each other's monotonic clocks.

  kv     script key            -> expiry + orjson(value)
  aor    address-of-record     -> expiry of its last binding + orjson([Binding.to_dict(), ...])
  nc     digest nonce          -> expiry + orjson(highest nonce-count)
  dlg    dialog id             -> expiry + orjson(record)
  prof   orjson([profile, key]) 0x00 member -> expiry (nothing else)

Keys are UTF-8. One longer than LMDB's key limit (511 bytes) is stored as
0xff + its SHA-256 (UTF-8 never contains 0xff, so the two cannot meet); an
AoR's own name is then read back from its record. Profile members of one
(profile, key) share a key prefix, so counting them is a cursor walk.

Expired entries are invisible at once (checked on every read), deleted where a
write transaction touches them anyway, and swept by `run()` in bounded batches
(every process may run it: a sweep deletes only what is expired).

Blocking: every call runs LMDB synchronously on the event loop. A read is a
few microseconds; a write waits for the writer lock while another process
writes, so every write transaction here is tiny -- decode, a pure function,
encode, put -- with no I/O and no await inside. (Each worker opens its own
environment after the fork: LMDB handles do not survive fork.)
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Callable

import lmdb
import orjson
import trio

from host.storage import Store, StoreError, checked_ttl

# Virtual address space only: the file grows with what is written. 64 GiB
# holds tens of millions of registrations; each process maps it once, a small
# share of a 64-bit address space.
DEFAULT_MAP_SIZE = 64 << 30
MAX_READERS = 512            # reader slots: one per process (and thread) with a read open
SWEEP_INTERVAL = 5.0         # seconds between two sweeps of every sub-database
SWEEP_BATCH = 512            # entries looked at per write transaction of a sweep

_NEVER = float("inf")
_HEADER = struct.Struct("<d")
_HASHED = b"\xff"
_DBS = (b"kv", b"aor", b"nc", b"dlg", b"prof")
_PROFILE_PART = 200          # bytes of a profile key part before it is hashed


class LmdbStore(Store):
    """`path`: a directory, created when absent, that every process sharing
    the store opens."""

    networked = False        # local: it cannot be "down"

    def __init__(self, path: str | os.PathLike, *, map_size: int = DEFAULT_MAP_SIZE,
                 wall: Callable[[], float] = time.time, sweep_interval: float = SWEEP_INTERVAL):
        self.path = os.fspath(path)
        self._wall = wall
        self._sweep_interval = sweep_interval
        self._env = _open_environment(self.path, map_size)
        self.map_size = self._env.info()["map_size"]   # the first opener's, if larger
        self._closed = False
        self._max_key = self._env.max_key_size()
        self.sweeps = 0          # completed sweeps of every sub-database (this process)
        self.swept = 0           # expired entries they deleted
        self.errors = 0          # operations that failed in LMDB (a full map, ...)
        with self._write():
            pass   # surfaces a broken environment here, not at the first REGISTER
        self._kv, self._aor, self._nc, self._dlg, self._prof = (
            self._env.open_db(name) for name in _DBS)

    # ------------------------------------------------------------ transactions
    @contextmanager
    def _write(self):
        # Blocks this event loop until the other processes' writer lock is
        # free, and holds the lock for them: keep the body tiny, no I/O.
        try:
            with self._env.begin(write=True) as txn:   # an exception inside aborts it
                yield txn
        except lmdb.MapFullError:
            self.errors += 1
            raise StoreError(f"store {self.path} is full (map_size {self.map_size} bytes); "
                             "nothing was written") from None
        except lmdb.Error as exc:
            self.errors += 1
            raise StoreError(f"store {self.path}: {exc}") from None

    @contextmanager
    def _read(self):
        try:
            with self._env.begin() as txn:
                yield txn
        except lmdb.Error as exc:
            self.errors += 1
            raise StoreError(f"store {self.path}: {exc}") from None

    def _key(self, text: str) -> bytes:
        raw = text.encode("utf-8", "surrogatepass")
        return raw if len(raw) <= self._max_key else _HASHED + hashlib.sha256(raw).digest()

    def _expiry(self, ttl, optional: bool = True) -> float:
        ttl = checked_ttl(ttl, optional=optional)
        return _NEVER if ttl is None else self._wall() + ttl

    def _live(self, raw: bytes | None, now: float) -> Any:
        """The payload of a stored value, or _ABSENT when absent or expired."""
        if raw is None or _HEADER.unpack_from(raw)[0] <= now:
            return _ABSENT
        return orjson.loads(memoryview(raw)[_HEADER.size:])

    # ------------------------------------------------------------ script data
    async def get(self, key: str) -> Any:
        k = self._key(_checked_key(key))
        with self._read() as txn:
            raw = txn.get(k, db=self._kv)
        value = self._live(raw, self._wall())
        return None if value is _ABSENT else value

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        k = self._key(_checked_key(key))
        data = _pack(self._expiry(ttl), value)
        with self._write() as txn:
            txn.put(k, data, db=self._kv)

    async def delete(self, key: str) -> bool:
        k = self._key(_checked_key(key))
        with self._write() as txn:
            raw = txn.pop(k, db=self._kv)
        return raw is not None and _HEADER.unpack_from(raw)[0] > self._wall()

    async def incr(self, key: str, delta: int = 1, ttl: float | None = None) -> int:
        k = self._key(_checked_key(key))
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise StoreError(f"incr: delta must be an integer, got {delta!r}")
        created_expiry = self._expiry(ttl)
        with self._write() as txn:
            raw = txn.get(k, db=self._kv)
            old = self._live(raw, self._wall())
            if old is _ABSENT:
                value, expires = delta, created_expiry   # the ttl applies on creation only
            else:
                if isinstance(old, bool) or not isinstance(old, int):
                    raise StoreError(f"incr: value of {key!r} is not an integer")
                value, expires = old + delta, _HEADER.unpack_from(raw)[0]
            txn.put(k, _pack(expires, value), db=self._kv)
        return value

    # ------------------------------------------------------------ location
    def _decode_aor(self, raw: bytes | None, now: float) -> list:
        from host.sip.registrar import Binding
        record = self._live(raw, now)
        # A record whose every binding expired counts as gone (the sweep
        # deletes it), as Redis drops the key with its last binding.
        return [] if record is _ABSENT else [Binding.from_dict(d) for d in record[1]]

    async def bindings(self, aor: str) -> list:
        k = self._key(aor)
        with self._read() as txn:
            raw = txn.get(k, db=self._aor)
        return self._decode_aor(raw, self._wall())

    async def update_bindings(self, aor, change):
        k = self._key(aor)
        with self._write() as txn:
            # `change` is pure and quick: it runs under the cross-process
            # writer lock, so two cores' REGISTERs of one AoR are serialised.
            new, result = change(self._decode_aor(txn.get(k, db=self._aor), self._wall()))
            if new:
                until = max(b.expires_at for b in new)
                txn.put(k, _pack(until, [aor, [b.to_dict() for b in new]]), db=self._aor)
            else:
                txn.delete(k, db=self._aor)
        return result

    async def aors(self) -> list[str]:
        now = self._wall()
        found = []
        with self._read() as txn:
            for k, raw in txn.cursor(db=self._aor):
                if _HEADER.unpack_from(raw)[0] <= now:
                    continue
                if k[:1] == _HASHED:
                    found.append(orjson.loads(memoryview(raw)[_HEADER.size:])[0])
                else:
                    found.append(k.decode("utf-8", "surrogatepass"))
        return found

    # ------------------------------------------------------------ nonce counts
    async def advance(self, key: str, value: int, ttl: float) -> bool:
        k = self._key(_checked_key(key))
        if isinstance(value, bool) or not isinstance(value, int):
            raise StoreError(f"advance: value must be an integer, got {value!r}")
        expires = self._expiry(ttl, optional=False)
        with self._write() as txn:
            current = self._live(txn.get(k, db=self._nc), self._wall())
            if value <= (0 if current is _ABSENT else current):
                return False
            txn.put(k, _pack(expires, value), db=self._nc)
        return True

    # ------------------------------------------------------------ dialogs
    async def put_dialog(self, dialog_id: str, record: dict, ttl: float) -> None:
        k = self._key(_checked_key(dialog_id, "dialog id"))
        data = _pack(self._expiry(ttl, optional=False), record)
        with self._write() as txn:
            txn.put(k, data, db=self._dlg)

    async def get_dialog(self, dialog_id: str) -> dict | None:
        k = self._key(_checked_key(dialog_id, "dialog id"))
        with self._read() as txn:
            raw = txn.get(k, db=self._dlg)
        record = self._live(raw, self._wall())
        return None if record is _ABSENT else record

    async def delete_dialog(self, dialog_id: str) -> bool:
        k = self._key(_checked_key(dialog_id, "dialog id"))
        with self._write() as txn:
            raw = txn.pop(k, db=self._dlg)
        return raw is not None and _HEADER.unpack_from(raw)[0] > self._wall()

    async def dialogs(self) -> list[dict]:
        now = self._wall()
        with self._read() as txn:
            return [orjson.loads(memoryview(raw)[_HEADER.size:])
                    for _, raw in txn.cursor(db=self._dlg)
                    if _HEADER.unpack_from(raw)[0] > now]

    # ------------------------------------------------------------ profiles
    def _profile_prefix(self, profile: str, key: str) -> bytes:
        group = orjson.dumps([_checked_key(profile, "profile"), _checked_key(key, "profile key")])
        if len(group) > _PROFILE_PART:
            group = _HASHED + hashlib.sha256(group).digest()
        return group + b"\x00"   # JSON text has no raw NUL; a hash has a fixed length

    def _member_key(self, prefix: bytes, member: str) -> bytes:
        raw = _checked_key(member, "profile member").encode("utf-8", "surrogatepass")
        if len(raw) > _PROFILE_PART:
            raw = _HASHED + hashlib.sha256(raw).digest()
        return prefix + raw

    async def profile_add(self, profile: str, key: str, member: str, ttl: float) -> int:
        prefix = self._profile_prefix(profile, key)
        member_key = self._member_key(prefix, member)
        expires = _HEADER.pack(self._expiry(ttl, optional=False))
        with self._write() as txn:
            txn.put(member_key, expires, db=self._prof)
            return self._count_members(txn, prefix)

    async def profile_remove(self, profile: str, key: str, member: str) -> int:
        prefix = self._profile_prefix(profile, key)
        member_key = self._member_key(prefix, member)
        with self._write() as txn:
            txn.delete(member_key, db=self._prof)
            return self._count_members(txn, prefix)

    async def profile_count(self, profile: str, key: str) -> int:
        prefix = self._profile_prefix(profile, key)
        now = self._wall()
        count = 0
        with self._read() as txn:
            cursor = txn.cursor(db=self._prof)
            found = cursor.set_range(prefix)
            while found and cursor.key().startswith(prefix):
                count += _HEADER.unpack_from(cursor.value())[0] > now
                found = cursor.next()
        return count

    def _count_members(self, txn, prefix: bytes) -> int:
        """Live members under `prefix`, deleting the expired ones on the way
        (this write transaction walks them anyway)."""
        now = self._wall()
        count = 0
        cursor = txn.cursor(db=self._prof)
        found = cursor.set_range(prefix)
        while found and cursor.key().startswith(prefix):
            if _HEADER.unpack_from(cursor.value())[0] <= now:
                found = cursor.delete() and bool(cursor.key())   # moves to the next one
            else:
                count += 1
                found = cursor.next()
        return count

    # ------------------------------------------------------------ expiry sweep
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Sweep expired entries every `sweep_interval` seconds for the
        server's lifetime. Every worker may run it: the sweeps only delete
        what is expired, whoever gets there first."""
        task_status.started()
        while True:
            await trio.sleep(self._sweep_interval)
            await self.sweep()

    async def sweep(self) -> int:
        """One pass over every sub-database, SWEEP_BATCH entries per write
        transaction with a checkpoint between two, so the writer lock and
        this event loop are held for a bounded time. Returns entries deleted."""
        deleted = 0
        for db in (self._kv, self._aor, self._nc, self._dlg, self._prof):
            start = b""
            while start is not None:
                start, n = self._sweep_batch(db, start)
                deleted += n
                await trio.sleep(0)
        try:
            self._env.reader_check()   # frees reader slots of processes that died
        except lmdb.Error:
            pass
        self.sweeps += 1
        self.swept += deleted
        return deleted

    def _sweep_batch(self, db, start: bytes) -> tuple[bytes | None, int]:
        """Delete the expired among SWEEP_BATCH entries from `start`; the key
        to start the next batch at, or None at the end."""
        now = self._wall()
        deleted = 0
        with self._write() as txn:
            cursor = txn.cursor(db=db)
            found = cursor.set_range(start) if start else cursor.first()
            for _ in range(SWEEP_BATCH):
                if not found:
                    return None, deleted
                if _HEADER.unpack_from(cursor.value())[0] <= now:
                    deleted += 1
                    found = cursor.delete() and bool(cursor.key())
                else:
                    found = cursor.next()
            return (cursor.key() if found else None), deleted

    # ------------------------------------------------------------ lifecycle
    def statistics(self) -> dict:
        try:
            with self._read() as txn:
                entries = {name.decode(): txn.stat(db)["entries"]
                           for name, db in zip(_DBS, (self._kv, self._aor, self._nc,
                                                      self._dlg, self._prof))}
            info, stat = self._env.info(), self._env.stat()
        except (StoreError, lmdb.Error):
            return {"backend": "lmdb", "path": self.path, "open": False, "errors": self.errors}
        return {"backend": "lmdb", "path": self.path, "open": True, "entries": entries,
                "map_used": (info["last_pgno"] + 1) * stat["psize"], "map_size": info["map_size"],
                "readers": info["num_readers"], "sweeps": self.sweeps, "swept": self.swept,
                "errors": self.errors}

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            _release_environment(self._env)


_ABSENT = object()

# LMDB forbids opening one environment twice in a process (closing either
# handle drops the process's file locks): LmdbStores on one path share one
# handle, counted. Keyed by pid too: a handle inherited through fork is unusable.
_environments: dict[tuple[int, str], list] = {}


def _open_environment(path: str, map_size: int):
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"store {path}: cannot open: {exc}") from None
    key = (os.getpid(), os.path.realpath(path))
    entry = _environments.get(key)
    if entry is None:
        try:
            # sync=False: a process crash loses nothing (the pages are in the
            # kernel's cache); only a machine crash could, and the directory
            # lives for one server run anyway.
            env = lmdb.open(path, map_size=map_size, max_dbs=len(_DBS), max_readers=MAX_READERS,
                            sync=False, metasync=False, readahead=False, mode=0o600)
        except lmdb.Error as exc:
            raise StoreError(f"store {path}: cannot open: {exc}") from None
        entry = _environments[key] = [env, 0]
    entry[1] += 1
    return entry[0]


def _release_environment(env) -> None:
    for key, entry in list(_environments.items()):
        if entry[0] is env:
            entry[1] -= 1
            if entry[1] == 0:
                del _environments[key]
                env.close()
            return


def _pack(expires: float, value) -> bytes:
    try:
        return _HEADER.pack(expires) + orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        raise StoreError("values must be JSON: strings, numbers, booleans, lists and tables") from None


def _checked_key(key, what: str = "key") -> str:
    if not isinstance(key, str) or not key:
        raise StoreError(f"{what} must be a non-empty string, got {key!r}")
    return key


def temporary_directory() -> str:
    """A fresh private directory for a store that lives as long as one
    server run: the parent of `--workers N` makes it before forking and
    removes it (shutil.rmtree) when the server stops. On the machine's
    temporary directory, not /dev/shm, whose size containers often cap at
    64 MB; with sync=False the pages stay in memory either way."""
    return tempfile.mkdtemp(prefix="babelsip-store-")


__all__ = ["LmdbStore", "DEFAULT_MAP_SIZE", "temporary_directory"]
