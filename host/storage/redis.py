"""The store in Redis/Valkey, shared by every core that points at it.

Redis is the source of truth: nothing here caches what a read must see.
The key layout (host/storage/README.md lists it for operators) follows the
access paths, each a single key, and every atomic operation touches keys
of one cluster slot (the braces below are literal Redis hash tags):

  <prefix>kv:<key>                 script value (JSON), PX = its ttl
                                   (<key> carries the route's prefix, route:NAME:)
  <prefix>aor:{<aor>}              hash: Contact URI -> binding (JSON); the key
                                   expires with its last binding (PEXPIREAT)
  <prefix>nc:<nonce>               highest nonce-count seen (digest replay)
  <prefix>dlg:{dN}:<id>            dialog record (JSON), PX = its ttl; N = crc32(id) % 16
  <prefix>dialogs:{dN}             sorted set: the ids of bucket N by expiry (ms)
  <prefix>prof:<name>:<key>        sorted set: dialog id by expiry (ms)

Updates that must be atomic are atomic in Redis: a REGISTER's bindings are
replaced in a WATCH/MULTI transaction (retried when another core changed
the AoR meanwhile, so the CSeq rule holds across cores); a dialog's record
and its index entry in one MULTI (one slot: the bucket's tag); nonce counts
and profile counts are Lua scripts on one key.

One server, Sentinel or Cluster (redis_url.py); in a cluster the AoR scan
(`aors`, management only) walks every primary (coredis does).

When Redis cannot be reached every operation raises `StoreUnavailable` at
once for a short, growing while (a circuit breaker: 0.25 s doubling to 5 s)
instead of each call waiting for its own connect timeout; coredis
reconnects by itself when Redis is back (asking the Sentinels again after
a failover). Transitions are logged and counted.
"""

from __future__ import annotations

import logging
import ssl
import time
import zlib
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import orjson
import trio

from host.storage import Store, StoreError, StoreUnavailable, checked_ttl
from host.storage.redis_url import RedisTarget, parse_store_url

log = logging.getLogger("babelsip.store")

CONNECT_TIMEOUT = 0.5     # seconds: with no retries (the breaker is ours), the most one call
                          # waits on a Redis that does not answer a connect
COMMAND_TIMEOUT = 1.0
BREAKER_MIN, BREAKER_MAX = 0.25, 5.0
WATCH_RETRIES = 16        # concurrent REGISTERs of one AoR from several cores
DIALOG_BUCKETS = 16       # dialog indexes (cluster slots) the dialogs are spread over

# incr: the ttl applies only when this call creates the key (Store.incr).
_INCR = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if created and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""

_ADVANCE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# profile_add / profile_remove / profile_count: drop the expired members,
# then change and count, in one step.
_PROFILE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if ARGV[2] == 'add' then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  redis.call('PEXPIREAT', KEYS[1], redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
elseif ARGV[2] == 'remove' then
  redis.call('ZREM', KEYS[1], ARGV[3])
end
return redis.call('ZCARD', KEYS[1])
"""


class RedisStore(Store):
    """`url`: a --store URL (host/storage/redis_url.py): one server, Sentinel
    or Cluster, with or without TLS."""

    networked = True

    def __init__(self, url: str, *, prefix: str = "babelsip:"):
        self.target = parse_store_url(url)
        self.url = url
        self.prefix = prefix
        self._client = None
        self._advance = self._profile = self._incr = None
        self._down_until = 0.0
        self._backoff = BREAKER_MIN
        self.errors = 0           # operations that failed on the store
        self.outages = 0          # up -> down transitions
        self.up = False

    # ------------------------------------------------------------ lifecycle
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Hold the client open for the server's lifetime (coredis is anyio:
        its client must be entered and left by one task). A cluster client
        reads the cluster's layout when it is entered: while no seed answers,
        that is retried with the breaker's backoff and calls fail at once."""
        # Its INFO lines (every retry, every dropped connection) would flood
        # the server's log during an outage; ours say it once.
        logging.getLogger("coredis").setLevel(logging.WARNING)
        started = False
        for attempt in range(2**31):   # ends by cancellation; each failure waits (breaker)
            try:
                async with AsyncExitStack() as stack:
                    client = await stack.enter_async_context(_open_client(self.target))
                    self._advance = client.register_script(_ADVANCE)
                    self._incr = client.register_script(_INCR)
                    self._profile = client.register_script(_PROFILE)
                    self._client = client
                    try:
                        await self._do(lambda c: c.ping())
                        log.info("store: %s", self._safe_url())
                    except StoreUnavailable:
                        pass   # logged by _failed; calls get StoreUnavailable until it answers
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep_forever()
            except Exception as exc:
                if not _is_connection_error(exc) and not _is_redis_error(exc):
                    raise
                self._client = None
                self._failed(exc)
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep(self._backoff)

    def _safe_url(self) -> str:
        return self.target.display()

    async def _do(self, op):
        """Run `op(client)`, one Redis operation, through the breaker."""
        client = self._client
        if client is None:
            if self.outages:
                raise StoreUnavailable(f"the store at {self._safe_url()} is unreachable")
            raise StoreUnavailable("the store is not connected yet")
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreUnavailable(f"the store at {self._safe_url()} is unreachable")
        try:
            result = await op(client)
        except Exception as exc:
            if _is_connection_error(exc):
                self._failed(exc)
                raise StoreUnavailable(f"the store at {self._safe_url()} is unreachable") from None
            if not _is_redis_error(exc):
                raise   # the caller's own (a registrar rule refusing a REGISTER)
            self.errors += 1
            raise StoreError(f"store: {exc}") from None
        if not self.up:
            if self.outages:
                log.warning("store: %s answers again", self._safe_url())
            self.up = True
        self._down_until, self._backoff = 0.0, BREAKER_MIN
        return result

    def _failed(self, exc) -> None:
        self.errors += 1
        if self.up or not self.outages:
            self.outages += 1
            log.warning("store: %s unreachable (%s); retrying with backoff", self._safe_url(), exc)
        self.up = False
        self._down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BREAKER_MAX)

    def statistics(self) -> dict:
        return {"backend": "redis", "up": self.up, "errors": self.errors, "outages": self.outages}

    # ------------------------------------------------------------ script data
    def _kv(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}kv:{key}"

    async def get(self, key: str) -> Any:
        raw = await self._do(lambda c: c.get(self._kv(key)))
        return None if raw is None else orjson.loads(raw)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        data = _dumps(value)
        px = _ttl_ms(ttl)
        await self._do(lambda c: c.set(self._kv(key), data, px=px))

    async def delete(self, key: str) -> bool:
        return bool(await self._do(lambda c: c.delete([self._kv(key)])))

    async def incr(self, key: str, delta: int = 1, ttl: float | None = None) -> int:
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise StoreError(f"incr: delta must be an integer, got {delta!r}")
        name = self._kv(key)
        px = _ttl_ms(ttl)
        try:
            return int(await self._do(lambda c: self._incr(keys=[name], args=[delta, px or 0])))
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise StoreError(f"incr: value of {key!r} is not an integer ({exc})") from None

    # ------------------------------------------------------------ location
    def _aor(self, aor: str) -> str:
        return f"{self.prefix}aor:{{{aor}}}"

    async def bindings(self, aor: str) -> list:
        raw = await self._do(lambda c: c.hgetall(self._aor(aor)))
        return _decode_bindings(raw)

    async def update_bindings(self, aor, change):
        key = self._aor(aor)

        async def transaction(client):
            for _ in range(WATCH_RETRIES):
                import coredis.exceptions
                try:
                    async with client.pipeline(transaction=True) as pipe:
                        async with pipe.watch(key):
                            current = _decode_bindings(await client.hgetall(key))
                            new, result = change(current)   # may raise: nothing stored
                            pipe.delete([key])
                            if new:
                                pipe.hset(key, {_binding_field(b): _dumps({**b.to_dict(), "order": i})
                                                for i, b in enumerate(new)})
                                pipe.pexpireat(key, int(max(b.expires_at for b in new) * 1000) + 1000)
                    return result
                except coredis.exceptions.WatchError:
                    continue   # another core changed this AoR: read again, apply again
            raise StoreError(f"bindings of {aor}: too many concurrent updates")
        return await self._do(transaction)

    async def aors(self) -> list[str]:
        # Management only (ul.dump): every other access path is one key.
        start = len(self.prefix) + len("aor:{")

        async def scan(client):
            found = []
            async for name in client.scan_iter(match=f"{self.prefix}aor:*", count=1000):
                name = name.decode() if isinstance(name, bytes) else name
                found.append(name[start:-1])
            return found
        return await self._do(scan)

    # ------------------------------------------------------------ nonce counts
    async def advance(self, key: str, value: int, ttl: float) -> bool:
        _check_key(key)
        name = f"{self.prefix}nc:{key}"
        px = _ttl_ms(ttl, optional=False) or 2**40   # inf: as good as never
        return bool(await self._do(lambda c: self._advance(keys=[name], args=[int(value), px])))

    # ------------------------------------------------------------ dialogs
    # A dialog's record and its entry in the index share a hash tag, the
    # dialog's bucket ({dN}, crc32 of its id), so the MULTI that writes both
    # stays in one cluster slot; listing walks the DIALOG_BUCKETS indexes.
    def _dialog_keys(self, dialog_id: str) -> tuple[str, str]:
        tag = f"{{d{zlib.crc32(dialog_id.encode()) % DIALOG_BUCKETS}}}"
        return f"{self.prefix}dlg:{tag}:{dialog_id}", f"{self.prefix}dialogs:{tag}"

    async def put_dialog(self, dialog_id: str, record: dict, ttl: float) -> None:
        px = _ttl_ms(ttl, optional=False) or 2**40
        expires = int(time.time() * 1000) + px
        key, index = self._dialog_keys(dialog_id)
        data = _dumps(record)

        async def put(client):
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(key, data, px=px)
                pipe.zadd(index, {dialog_id: expires})
        await self._do(put)

    async def get_dialog(self, dialog_id: str) -> dict | None:
        key, _ = self._dialog_keys(dialog_id)
        raw = await self._do(lambda c: c.get(key))
        return None if raw is None else orjson.loads(raw)

    async def delete_dialog(self, dialog_id: str) -> bool:
        key, index = self._dialog_keys(dialog_id)

        async def delete(client):
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete([key])
                pipe.zrem(index, [dialog_id])
            return pipe.results[0]
        return bool(await self._do(delete))

    async def dialogs(self) -> list[dict]:
        async def listing(client):
            now = int(time.time() * 1000)
            records = []
            for bucket in range(DIALOG_BUCKETS):
                tag = f"{{d{bucket}}}"
                index = f"{self.prefix}dialogs:{tag}"
                await client.zremrangebyscore(index, "-inf", now)
                ids = await client.zrange(index, 0, -1)
                if ids:
                    raws = await client.mget([f"{self.prefix}dlg:{tag}:{i.decode()}" for i in ids])
                    records.extend(orjson.loads(r) for r in raws if r is not None)
            return records
        return await self._do(listing)

    async def profile_add(self, profile: str, key: str, member: str, ttl: float) -> int:
        px = _ttl_ms(ttl, optional=False) or 2**40
        return await self._profile_op(profile, key, "add", member, time.time() + px / 1000)

    async def profile_remove(self, profile: str, key: str, member: str) -> int:
        return await self._profile_op(profile, key, "remove", member, 0)

    async def profile_count(self, profile: str, key: str) -> int:
        return await self._profile_op(profile, key, "count", "", 0)

    async def _profile_op(self, profile, key, op, member, expires) -> int:
        name = f"{self.prefix}prof:{profile}:{key}"
        now = int(time.time() * 1000)
        return int(await self._do(
            lambda c: self._profile(keys=[name], args=[now, op, member, int(expires * 1000)])))


@asynccontextmanager
async def _open_client(target: RedisTarget):
    """The coredis client for `target`, entered. Timeouts are short and the
    client's own retries off: the breaker (RedisStore._do) is ours."""
    import coredis
    from coredis.connection import TCPLocation
    from coredis.retry import NoRetryPolicy
    common = dict(username=target.username, password=target.password,
                  connect_timeout=CONNECT_TIMEOUT, stream_timeout=COMMAND_TIMEOUT,
                  decode_responses=False, retry_policy=NoRetryPolicy())
    if target.mode == "single":
        (host, port), = target.nodes
        async with coredis.Redis(host=host, port=port, db=target.db, ssl=target.tls,
                                 verify_version=False, **common) as client:
            yield client
    elif target.mode == "cluster":
        # non_atomic_cross_slot off: a command over keys of several slots is
        # an error (CROSSSLOT), never split behind our back, so the "one slot
        # per atomic operation" rule is checked by the conformance suite.
        async with coredis.RedisCluster(
                startup_nodes=[TCPLocation(h, p) for h, p in target.nodes], ssl=target.tls,
                verify_version=False, non_atomic_cross_slot=False, **common) as client:
            yield client
    else:
        # The Sentinels are asked without the data nodes' credentials; the
        # primary's connections ask them again after a failover (coredis
        # checks the role of each new connection).
        # TLS (rediss+sentinel) to the Sentinels and the data nodes alike.
        del common["username"], common["password"]
        retry = common.pop("retry_policy")
        tls = {"ssl_context": ssl.create_default_context()} if target.tls else {}
        sentinel = coredis.Sentinel([TCPLocation(h, p) for h, p in target.nodes],
                                    sentinel_kwargs={"connect_timeout": CONNECT_TIMEOUT,
                                                     "stream_timeout": COMMAND_TIMEOUT, **tls},
                                    retry_policy=retry, **common, **tls)
        async with sentinel:
            primary = sentinel.primary_for(target.service, db=target.db,
                                           username=target.username, password=target.password)
            async with primary:
                yield primary


def _is_connection_error(exc) -> bool:
    """Redis (or a cluster node, or every Sentinel) cannot be reached now."""
    import coredis.exceptions as e
    if isinstance(exc, BaseExceptionGroup):   # from the client's task groups
        return all(_is_connection_error(x) for x in exc.exceptions)
    return isinstance(exc, (e.ConnectionError, e.BusyLoadingError, TimeoutError, OSError,
                            e.ClusterDownError, e.ClusterError, e.TryAgainError,
                            e.PrimaryNotFoundError, e.ReadOnlyError,
                            trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError))


def _is_redis_error(exc) -> bool:
    import coredis.exceptions as e
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_redis_error(x) or _is_connection_error(x) for x in exc.exceptions)
    return isinstance(exc, e.RedisError)


def _decode_bindings(raw) -> list:
    from host.sip.registrar import Binding
    if not raw:
        return []
    records = sorted((orjson.loads(v) for v in raw.values()), key=lambda r: r.get("order", 0))
    return [Binding.from_dict(r) for r in records]


def _binding_field(b) -> str:
    """One hash field per binding: its Contact, and its flow when it has one
    (RFC 5626: one instance may register a Contact over several flows)."""
    return f"{b.contact} {b.instance} {b.reg_id}" if b.instance else b.contact


def _dumps(value) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        raise StoreError("values must be JSON: strings, numbers, booleans, lists and tables") from None


def _ttl_ms(ttl, optional: bool = True) -> int | None:
    ttl = checked_ttl(ttl, optional=optional)
    return None if ttl is None else max(1, int(ttl * 1000))


def _check_key(key) -> None:
    if not isinstance(key, str) or not key:
        raise StoreError(f"key must be a non-empty string, got {key!r}")
