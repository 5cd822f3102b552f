"""One conformance suite for every Store backend (host/storage/__init__.py).

Each test runs against MemoryStore, LmdbStore (a fresh directory per test)
and RedisStore twice: "redis", one server on $BABELSIP_REDIS_URL when set
(CI, .ci/run), else a private redis-server started for the session on a free
127.0.0.1 port; "cluster", a private 3-primary Redis Cluster started for the
session (tests/storage/redis_topologies.py), so every operation is checked to
be cluster-safe (one slot per atomic step, scans over every primary). A
networked case is skipped when redis-server (and redis-cli) are absent.
Every test gets its own key prefix (so runs never
collide) and deletes its keys afterwards.

`backend.open()` gives a second handle on the same data: for Redis another
RedisStore (another client, i.e. another core), for LMDB another LmdbStore
on the same directory (several processes: test_lmdb_processes.py), for
memory the same store.

TTLs are real and short (0.3 s), with bounded sleeps. The fault tests at the
end each start a private redis-server they stop and restart.

A behaviour that contradicts the Store interface is kept as a test marked
xfail(strict=True, reason="BUG: ...") on the backend that gets it wrong (see
`bug_on`), so the fix shows up as an XPASS failure.
"""

from __future__ import annotations

import math
import os
import time
import uuid

import orjson
import pytest
import trio

from host.sip.registrar import Binding, RegistrarError, live
from host.storage import StoreError, StoreUnavailable
from host.storage.lmdb import LmdbStore
from host.storage.memory import MemoryStore
from host.storage.redis import RedisStore
from host.storage.redis_url import parse_store_url
from tests.storage.redis_server import REDIS_SERVER, RawRedis, RedisServer, free_port
from tests.storage.redis_topologies import REDIS_CLI, ClusterRaw, RedisClusterServers

TTL = 0.3          # a short real TTL
PAST_TTL = 0.5     # sleep after which a TTL-second key has expired (with margin)


# --------------------------------------------------------------- fixtures
def bug_on(kind: str, reason: str):
    """Mark a test as failing on backend `kind` ("memory", "redis", "cluster") because
    of a product bug: xfail(strict=True) there, a normal test elsewhere."""
    def mark(fn):
        bugs = dict(getattr(fn, "_store_bugs", {}))
        bugs[kind] = reason
        fn._store_bugs = bugs
        return fn
    return mark


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("BABELSIP_REDIS_URL")
    if url:
        try:
            with RawRedis.from_url(url, timeout=2.0) as r:
                r.command("PING")
        except OSError as exc:
            pytest.fail(f"BABELSIP_REDIS_URL={url} is set but does not answer: {exc}")
        yield url
        return
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed and BABELSIP_REDIS_URL is not set")
    server = RedisServer()
    try:
        server.start()
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="session")
def cluster_url():
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server and redis-cli are not installed")
    cluster = RedisClusterServers()
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.close()


class Backend:
    def __init__(self, kind: str, nursery, url: str | None, prefix: str, directory=None):
        self.kind, self.url, self.prefix = kind, url, prefix
        self.directory = directory
        self.networked = kind in ("redis", "cluster")
        self._nursery = nursery
        self._memory = MemoryStore() if kind == "memory" else None
        self.stores: list = []

    async def open(self):
        if self._memory is not None:
            return self._memory
        if self.kind == "lmdb":
            # Another LmdbStore on the same directory (in another process it
            # is another core: tests/storage/test_lmdb_processes.py).
            store = LmdbStore(self.directory)
            self.stores.append(store)
            return store
        store = RedisStore(self.url, prefix=self.prefix)
        with trio.fail_after(5):
            await self._nursery.start(store.run)
        self.stores.append(store)
        return store

    def raw(self) -> RawRedis | ClusterRaw:
        if self.kind == "cluster":
            return ClusterRaw([port for _, port in parse_store_url(self.url).nodes])
        return RawRedis.from_url(self.url)


@pytest.fixture(params=["memory", "lmdb", "redis", "cluster"])
async def backend(request, tmp_path):
    kind = request.param
    test_fn = getattr(request.module, request.node.originalname, None)   # pytest-trio wraps request.function
    reason = getattr(test_fn, "_store_bugs", {}).get(kind)
    if reason is not None:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=reason))
    url = request.getfixturevalue(f"{kind}_url") if kind in ("redis", "cluster") else None
    prefix = f"babelsip-test:{uuid.uuid4().hex}:"
    async with trio.open_nursery() as nursery:
        b = Backend(kind, nursery, url, prefix, directory=tmp_path / "lmdb")
        try:
            yield b
        finally:
            if b.networked:
                with b.raw() as r:
                    r.delete_prefix(prefix)
            if kind == "lmdb":
                for s in b.stores:
                    await s.aclose()
            nursery.cancel_scope.cancel()


@pytest.fixture
async def store(backend):
    return await backend.open()


def binding(contact: str, expires_in: float = 60.0, **fields) -> Binding:
    now = time.time()
    values = dict(contact=contact, expires_at=now + expires_in, q=0.5, call_id="cid-1", cseq=1,
                  source=("udp", "127.0.0.1", 5060), path=(), user_agent="test-ua", instance="",
                  reg_id=0, core="core-a", registered_at=now, nat=False)
    values.update(fields)
    return Binding(**values)


def replace_with(new):
    return lambda current: (list(new), current)


async def sleep_past_ttl():
    await trio.sleep(PAST_TTL)


# ------------------------------------------------------------------- kv
JSON_VALUES = [
    "", "text", "ünïcødé ☎ 中文 \U0001F600", "quotes \" and \\ and \n newline",
    0, 1, -1, 2**53 + 1, 2**63 - 1, -(2**63),
    1.0, 1.5, -0.25, 1e300, 5e-324,
    True, False, None,
    [], {}, [1, "a", None, True, 2.5, [{}]],
    {"a": {"b": [1, 2, {"c": None}]}, "": "empty key", "n": -3},
]


@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
async def test_kv_round_trips_every_json_type(store, value):
    await store.set("k", value)
    got = await store.get("k")
    assert got == value
    assert type(got) is type(value)       # True stays bool, 1.0 stays float
    if isinstance(value, float):
        assert repr(got) == repr(value)


async def test_get_and_delete_of_absent(store):
    assert await store.get("absent") is None
    assert await store.delete("absent") is False
    await store.set("k", "v")
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    assert await store.get("k") is None


async def test_set_overwrites_value_and_ttl(store):
    await store.set("k", 1)
    await store.set("k", {"two": 2})
    assert await store.get("k") == {"two": 2}
    await store.set("t", "short", ttl=TTL)
    await store.set("t", "forever")             # ttl=None: never expires
    await store.set("u", "forever")
    await store.set("u", "short", ttl=TTL)      # a ttl can be put on an existing key
    await sleep_past_ttl()
    assert await store.get("t") == "forever"
    assert await store.get("u") is None


async def test_kv_ttl_expires_for_real(store):
    await store.set("short", "v", ttl=TTL)
    await store.set("long", "w", ttl=30)
    await store.set("never", "x")
    assert await store.get("short") == "v"
    await sleep_past_ttl()
    assert await store.get("short") is None
    assert await store.delete("short") is False
    assert await store.get("long") == "w"
    assert await store.get("never") == "x"


async def test_large_values(store):
    big = "x" * (1 << 20)
    await store.set("big", big)
    assert await store.get("big") == big
    mixed = "é☎" * 200_000 + "end"               # ~1.2 MB of UTF-8
    await store.set("mixed", mixed)
    assert await store.get("mixed") == mixed
    numbers = list(range(100_000))
    await store.set("list", numbers)
    assert await store.get("list") == numbers


# ------------------------------------------------------------------- incr
async def test_incr_absent_is_zero_and_delta(store):
    assert await store.incr("n") == 1
    assert await store.incr("n", 5) == 6
    assert await store.incr("n", -2) == 4
    assert await store.incr("n", 0) == 4
    assert await store.get("n") == 4
    assert await store.incr("neg", -3) == -3
    await store.set("m", 10)
    assert await store.incr("m") == 11
    assert await store.get("m") == 11


async def test_incr_ttl_applies_on_creation_only(store):
    assert await store.incr("r", ttl=TTL) == 1
    await trio.sleep(TTL / 2)
    assert await store.incr("r", ttl=TTL) == 2   # does not push the expiry back
    await trio.sleep(TTL / 2 + 0.15)
    assert await store.get("r") is None
    assert await store.incr("r", ttl=30) == 1    # a new key, a new ttl
    assert await store.get("r") == 1


async def test_incr_ttl_not_applied_to_existing_key(store):
    assert await store.incr("counter") == 1
    assert await store.incr("counter", ttl=TTL) == 2
    await store.set("set-first", 5)
    assert await store.incr("set-first", ttl=TTL) == 6
    await sleep_past_ttl()
    assert await store.get("counter") == 2
    assert await store.get("set-first") == 6


@pytest.mark.parametrize("value", ["text", "5", True, 1.5, [1], {"a": 1}, None],
                         ids=repr)
async def test_incr_of_non_integer_is_store_error(store, value):
    await store.set("v", value)
    with pytest.raises(StoreError):
        await store.incr("v")
    assert await store.get("v") == value        # left as it was


@pytest.mark.parametrize("delta", [1.5, 1.0, "1", True, None], ids=repr)
async def test_incr_delta_must_be_int(store, delta):
    with pytest.raises(StoreError):
        await store.incr("n", delta)
    assert await store.get("n") is None         # nothing created


async def test_concurrent_incr_from_50_tasks(backend):
    # Redis: two RedisStore instances (two cores); memory: the one store.
    stores = [await backend.open(), await backend.open()]
    seen = []

    async def one(s):
        seen.append(await s.incr("hits", ttl=30))
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            for i in range(50):
                n.start_soon(one, stores[i % 2])
    assert sorted(seen) == list(range(1, 51))
    assert await stores[0].get("hits") == 50
    assert await stores[1].get("hits") == 50


# ---------------------------------------------------------- bad arguments
BAD_KEYS = ["", None, 5, b"k", ("k",)]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
async def test_bad_keys_are_store_errors(store, key):
    for op in (lambda: store.get(key), lambda: store.set(key, 1), lambda: store.delete(key),
               lambda: store.incr(key), lambda: store.advance(key, 1, 30)):
        with pytest.raises(StoreError):
            await op()


BAD_TTLS = [0, -1, -0.5, "5", True, [1]]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
async def test_bad_ttls_are_store_errors(store, ttl):
    with pytest.raises(StoreError):
        await store.set("k", 1, ttl=ttl)
    assert await store.get("k") is None
    with pytest.raises(StoreError):
        await store.incr("n", ttl=ttl)
    assert await store.get("n") is None


OTHER_BAD_TTLS = [0, -1, "5"]


async def test_bad_ttl_for_advance_is_store_error(store):
    for ttl in OTHER_BAD_TTLS:
        with pytest.raises(StoreError):
            await store.advance("n", 1, ttl)


async def test_bad_ttl_for_put_dialog_is_store_error(store):
    for ttl in OTHER_BAD_TTLS:
        with pytest.raises(StoreError):
            await store.put_dialog("d", {"id": "d"}, ttl)
    assert await store.dialogs() == []


async def test_bad_ttl_for_profile_add_is_store_error(store):
    for ttl in OTHER_BAD_TTLS:
        with pytest.raises(StoreError):
            await store.profile_add("p", "k", "m", ttl)


async def test_nan_ttl_is_store_error(store):
    with pytest.raises(StoreError):
        await store.set("k", 1, ttl=math.nan)


async def test_infinite_ttl_is_never_or_store_error(store):
    try:
        await store.set("k", 1, ttl=math.inf)
    except StoreError:
        return
    assert await store.get("k") == 1


# --------------------------------------------------------------- bindings
async def test_bindings_of_unknown_aor(store):
    assert await store.bindings("sip:nobody@example.com") == []
    assert await store.aors() == []


async def test_bindings_round_trip_every_field(store):
    aor = "sip:alice@example.com"
    now = time.time()
    full = Binding(contact="sip:alice@[2001:db8::1]:5070;transport=tcp;ob",
                   expires_at=now + 3600.123456, q=0.7, call_id="a84b4c76e66710@pc33",
                   cseq=314159, source=("tcp", "2001:db8::1", 5070),
                   path=("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr;ob>"),
                   user_agent="Phone/1.0 (ünï)", instance="urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF",
                   reg_id=2, core="core-7", registered_at=now - 12.5, nat=True)
    plain = binding("sip:alice@192.0.2.4:5060", q=1.0)
    result = await store.update_bindings(aor, replace_with([full, plain]))
    assert result == []                          # change saw no current bindings
    got = await store.bindings(aor)
    assert sorted(got, key=lambda b: b.contact) == sorted([full, plain], key=lambda b: b.contact)
    for b in got:
        for name in Binding.__slots__:
            expected = getattr(full if b.contact == full.contact else plain, name)
            assert getattr(b, name) == expected
            assert type(getattr(b, name)) is type(expected), name
    assert await store.aors() == [aor]


async def test_update_bindings_sees_current_and_returns_result(store):
    aor = "sip:bob@example.com"
    b1, b2 = binding("sip:bob@192.0.2.1"), binding("sip:bob@192.0.2.2")
    await store.update_bindings(aor, replace_with([b1]))
    seen = []

    def add(current):
        seen.append(list(current))
        return current + [b2], "the result"
    assert await store.update_bindings(aor, add) == "the result"
    assert seen == [[b1]]
    assert sorted(await store.bindings(aor), key=lambda b: b.contact) == [b1, b2]


async def test_bindings_keep_their_order(store):
    aor = "sip:order@example.com"
    contacts = [f"sip:order@192.0.2.{n}" for n in (9, 1, 5, 3, 7, 2, 8, 4, 6)]
    bindings = [binding(c) for c in contacts]
    await store.update_bindings(aor, replace_with(bindings))
    assert [b.contact for b in await store.bindings(aor)] == contacts


async def test_two_flows_with_the_same_contact_uri(store):
    aor = "sip:flows@example.com"
    uri = "sip:flows@192.0.2.10;ob"
    inst = "urn:uuid:11111111-2222-3333-4444-555555555555"
    one = binding(uri, instance=inst, reg_id=1, source=("tcp", "192.0.2.10", 40001))
    two = binding(uri, instance=inst, reg_id=2, source=("tcp", "192.0.2.10", 40002))
    await store.update_bindings(aor, replace_with([one, two]))
    assert sorted(await store.bindings(aor), key=lambda b: b.reg_id) == [one, two]


class Refused(Exception):
    pass


async def test_update_bindings_is_all_or_nothing(store):
    aor = "sip:carol@example.com"
    b1 = binding("sip:carol@192.0.2.1")
    await store.update_bindings(aor, replace_with([b1]))

    def fails(current):
        current.append(binding("sip:carol@192.0.2.99"))   # mutating its argument must not leak
        raise Refused("no")
    with pytest.raises(Exception):
        await store.update_bindings(aor, fails)
    assert await store.bindings(aor) == [b1]
    with pytest.raises(Exception):
        await store.update_bindings("sip:new@example.com", fails)
    assert await store.bindings("sip:new@example.com") == []
    assert await store.aors() == [aor]


async def test_update_bindings_lets_the_change_error_through(store):
    aor = "sip:dave@example.com"

    def refuse(current):
        raise RegistrarError(403, "Too Many Contacts")
    with pytest.raises(RegistrarError) as info:
        await store.update_bindings(aor, refuse)
    assert info.value.status == 403


async def test_empty_list_removes_the_aor(store):
    a, b = "sip:erin@example.com", "sip:frank@example.com"
    await store.update_bindings(a, replace_with([binding("sip:erin@192.0.2.1")]))
    await store.update_bindings(b, replace_with([binding("sip:frank@192.0.2.1")]))
    assert sorted(await store.aors()) == [a, b]
    assert await store.update_bindings(a, lambda cur: ([], len(cur))) == 1
    assert await store.bindings(a) == []
    assert await store.aors() == [b]
    await store.update_bindings(b, replace_with([]))
    assert await store.aors() == []


async def test_concurrent_update_bindings_from_two_stores(backend):
    # Each update appends its own binding to what it read: with a lost update
    # (no WATCH retry) some would be missing at the end.
    aor = "sip:race@example.com"
    stores = [await backend.open(), await backend.open()]
    expected = [f"sip:race@192.0.2.{i}" for i in range(1, 9)]

    async def append(s, contact):
        await s.update_bindings(aor, lambda cur: (cur + [binding(contact)], None))
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            for i, c in enumerate(expected):
                n.start_soon(append, stores[i % 2], c)
    for s in stores:
        assert sorted(b.contact for b in await s.bindings(aor)) == sorted(expected)


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_redis_watch_conflict_is_retried(backend):
    """Another core writes the AoR between this core's read and its EXEC:
    the transaction is aborted and change() runs again on the new bindings."""
    store = await backend.open()
    aor = "sip:watch@example.com"
    ours, theirs = binding("sip:watch@192.0.2.1"), binding("sip:watch@192.0.2.2")
    calls = []

    def change(current):
        calls.append(list(current))
        if len(calls) == 1:   # the other core gets in first (a blocking write on its own connection)
            with backend.raw() as r:
                r.command("HSET", f"{backend.prefix}aor:{{{aor}}}", theirs.contact,
                          orjson.dumps(theirs.to_dict()))
        return current + [ours], len(calls)
    with trio.fail_after(5):
        assert await store.update_bindings(aor, change) == 2
    assert calls == [[], [theirs]]
    assert sorted(await store.bindings(aor), key=lambda b: b.contact) == [ours, theirs]


async def test_aor_expires_after_its_last_binding(backend):
    store = await backend.open()
    aor, kept = "sip:brief@example.com", "sip:kept@example.com"
    await store.update_bindings(aor, replace_with([binding("sip:brief@192.0.2.1", expires_in=1.0)]))
    await store.update_bindings(kept, replace_with([binding("sip:kept@192.0.2.1", expires_in=1.0),
                                                    binding("sip:kept@192.0.2.2", expires_in=60)]))
    if backend.networked:
        with backend.raw() as r:   # the key lives as long as its longest binding (plus a margin)
            assert 0 < r.command("PTTL", f"{backend.prefix}aor:{{{aor}}}") <= 2100
            assert 59_000 < r.command("PTTL", f"{backend.prefix}aor:{{{kept}}}") <= 61_100
    assert len(live(await store.bindings(aor), time.time())) == 1
    deadline = time.monotonic() + 3.5
    while True:
        found = await store.bindings(aor)
        if backend.kind == "memory":
            # "possibly some expired: callers filter"
            if not live(found, time.time()):
                break
        elif found == []:
            break
        assert time.monotonic() < deadline, f"AoR record still there: {found}"
        await trio.sleep(0.1)
    if backend.kind != "memory":   # redis drops the key, lmdb hides the record (and sweeps it)
        assert await store.aors() == [kept]
        assert len(await store.bindings(kept)) == 2
    if backend.kind == "lmdb":
        assert await store.sweep() == 1          # the record of `aor`, nothing live
        assert store.statistics()["entries"]["aor"] == 1
    assert [b.contact for b in live(await store.bindings(kept), time.time())] == ["sip:kept@192.0.2.2"]


# ------------------------------------------------------------ nonce counts
async def test_advance_only_upwards(store):
    assert await store.advance("nonce", 0, 30) is False     # absent counts as 0
    assert await store.advance("nonce", 1, 30) is True
    assert await store.advance("nonce", 2, 30) is True
    assert await store.advance("nonce", 2, 30) is False     # equal: a replay
    assert await store.advance("nonce", 1, 30) is False     # lower
    assert await store.advance("nonce", 10, 30) is True
    assert await store.advance("nonce", 9, 30) is False
    assert await store.advance("other", 1, 30) is True      # counters are independent
    assert await store.advance("nonce", 11, 30) is True


async def test_advance_counter_expires(store):
    assert await store.advance("n", 5, TTL) is True
    assert await store.advance("n", 5, TTL) is False
    await sleep_past_ttl()
    assert await store.advance("n", 1, TTL) is True         # forgotten: counts from 0 again


async def test_advance_race_has_one_winner(backend):
    stores = [await backend.open(), await backend.open()]
    for value in (1, 2, 3):
        wins = []

        async def present(s):
            wins.append(await s.advance("shared-nonce", value, 30))
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                for i in range(20):
                    n.start_soon(present, stores[i % 2])
        assert wins.count(True) == 1, (value, wins)
        assert len(wins) == 20


# ----------------------------------------------------------------- dialogs
def records(dialogs: list[dict]) -> list[dict]:
    return sorted(dialogs, key=lambda d: d["id"])


async def test_dialogs_put_get_delete_list(store):
    one = {"id": "d1", "state": "early", "legs": [{"tag": "a"}, {"tag": "b"}], "n": 1.5}
    two = {"id": "d2", "state": "confirmed", "extra": None}
    assert await store.get_dialog("d1") is None
    assert await store.dialogs() == []
    await store.put_dialog("d1", one, 30)
    await store.put_dialog("d2", two, 30)
    assert await store.get_dialog("d1") == one
    assert records(await store.dialogs()) == [one, two]
    one_confirmed = dict(one, state="confirmed")
    await store.put_dialog("d1", one_confirmed, 30)           # replaces, no duplicate
    assert await store.get_dialog("d1") == one_confirmed
    assert records(await store.dialogs()) == [one_confirmed, two]
    assert await store.delete_dialog("d1") is True
    assert await store.delete_dialog("d1") is False
    assert await store.get_dialog("d1") is None
    assert records(await store.dialogs()) == [two]
    assert await store.delete_dialog("d2") is True
    assert await store.dialogs() == []


async def test_dialog_ttl(store):
    short, long = {"id": "short"}, {"id": "long"}
    await store.put_dialog("short", short, TTL)
    await store.put_dialog("long", long, 30)
    await store.put_dialog("renewed", {"id": "renewed"}, TTL)
    await store.put_dialog("renewed", {"id": "renewed"}, 30)   # a new put sets a new ttl
    assert records(await store.dialogs()) == [long, {"id": "renewed"}, short]
    await sleep_past_ttl()
    assert await store.get_dialog("short") is None
    assert records(await store.dialogs()) == [long, {"id": "renewed"}]
    assert await store.get_dialog("renewed") == {"id": "renewed"}


async def test_delete_of_expired_dialog_is_false(store):
    await store.put_dialog("gone", {"id": "gone"}, TTL)
    await sleep_past_ttl()
    assert await store.delete_dialog("gone") is False


# ---------------------------------------------------------------- profiles
async def test_profiles_add_remove_count(store):
    assert await store.profile_count("calls", "alice") == 0
    assert await store.profile_add("calls", "alice", "d1", 30) == 1
    assert await store.profile_add("calls", "alice", "d2", 30) == 2
    assert await store.profile_add("calls", "alice", "d1", 30) == 2   # added twice: counted once
    assert await store.profile_count("calls", "alice") == 2
    assert await store.profile_count("calls", "bob") == 0             # keys are separate
    assert await store.profile_count("other", "alice") == 0           # profiles are separate
    assert await store.profile_add("other", "alice", "d1", 30) == 1
    assert await store.profile_remove("calls", "alice", "d1") == 1
    assert await store.profile_remove("calls", "alice", "d1") == 1    # already gone
    assert await store.profile_remove("calls", "alice", "nope") == 1
    assert await store.profile_remove("calls", "nobody", "d1") == 0
    assert await store.profile_remove("calls", "alice", "d2") == 0
    assert await store.profile_count("calls", "alice") == 0
    assert await store.profile_count("other", "alice") == 1


async def test_profile_members_expire(store):
    assert await store.profile_add("p", "k", "short", TTL) == 1
    assert await store.profile_add("p", "k", "long", 30) == 2
    assert await store.profile_add("p", "k", "renewed", TTL) == 3
    assert await store.profile_add("p", "k", "renewed", 30) == 3      # re-add refreshes its ttl
    assert await store.profile_add("p", "only", "m", TTL) == 1
    await sleep_past_ttl()
    assert await store.profile_count("p", "k") == 2
    assert await store.profile_count("p", "only") == 0
    assert await store.profile_add("p", "k", "short", 30) == 3        # back, counted again


# ------------------------------------------------ Redis faults (private server)
needs_redis_server = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.fixture
async def private_redis():
    server = RedisServer()
    try:
        await trio.to_thread.run_sync(server.start)
        yield server
    finally:
        await trio.to_thread.run_sync(server.close)


async def until_up(store, key, deadline_s: float):
    """Call store.get(key) until it answers; (value, seconds it took)."""
    start = time.monotonic()
    for _ in range(1000):
        try:
            with trio.fail_after(2):
                return await store.get(key), time.monotonic() - start
        except StoreUnavailable:
            pass
        assert time.monotonic() - start < deadline_s, "the store did not come back"
        await trio.sleep(0.05)
    raise AssertionError("unreachable")


@needs_redis_server
async def test_redis_outage_fails_fast_and_recovers(private_redis):
    store = RedisStore(private_redis.url, prefix=f"babelsip-test:{uuid.uuid4().hex}:")
    async with trio.open_nursery() as n:
        with trio.fail_after(5):
            await n.start(store.run)
        await store.set("k", "before")
        assert await store.get("k") == "before"
        assert store.statistics() == {"backend": "redis", "up": True, "errors": 0, "outages": 0}

        await trio.to_thread.run_sync(private_redis.stop)
        start = time.monotonic()
        with trio.fail_after(3):             # the first call may wait for the dead connection
            with pytest.raises(StoreUnavailable):
                await store.get("k")
        first = time.monotonic() - start
        slowest = 0.0
        for op in [lambda: store.get("k"), lambda: store.set("k", 1), lambda: store.delete("k"),
                   lambda: store.bindings("sip:a@b"), lambda: store.advance("n", 1, 30),
                   lambda: store.dialogs(), lambda: store.profile_count("p", "k")] * 3:
            t0 = time.monotonic()
            with trio.fail_after(1):
                with pytest.raises(StoreUnavailable):
                    await op()
            slowest = max(slowest, time.monotonic() - t0)
            await trio.sleep(0.03)             # spread over ~0.6 s: past a breaker window or two
        assert slowest < 0.2, f"a call took {slowest:.3f} s while Redis was down (first {first:.3f} s)"
        stats = store.statistics()
        assert stats["up"] is False and stats["outages"] == 1 and stats["errors"] >= 1

        await trio.to_thread.run_sync(private_redis.start)        # same port
        value, took = await until_up(store, "k", 6.5)
        assert value is None                 # a fresh server: nothing persisted
        assert took < 6.0
        await store.set("k", "after")
        assert await store.get("k") == "after"
        assert await store.incr("c") == 1
        assert await store.advance("n", 1, 30) is True
        stats = store.statistics()
        assert stats["up"] is True and stats["outages"] == 1
        n.cancel_scope.cancel()


@needs_redis_server
async def test_redis_down_at_start_then_up():
    server = RedisServer(free_port())          # nothing listens there yet
    store = RedisStore(server.url, prefix=f"babelsip-test:{uuid.uuid4().hex}:")
    try:
        async with trio.open_nursery() as n:
            with trio.fail_after(3):
                await n.start(store.run)       # returns although Redis does not answer
            for _ in range(3):
                with trio.fail_after(1):
                    with pytest.raises(StoreUnavailable):
                        await store.set("k", 1)
            assert store.statistics()["up"] is False
            assert store.statistics()["outages"] == 1
            await trio.to_thread.run_sync(server.start)
            _, took = await until_up(store, "k", 6.5)
            assert took < 6.0
            await store.set("k", 1)
            assert await store.get("k") == 1
            assert store.statistics()["up"] is True
            n.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(server.close)


@needs_redis_server
async def test_redis_that_hangs_does_not_hang_callers(private_redis):
    """A server that accepts but never answers (SIGSTOP): the command timeout
    turns the wait into StoreUnavailable, later calls fail at once, and the
    store answers again after SIGCONT."""
    store = RedisStore(private_redis.url, prefix=f"babelsip-test:{uuid.uuid4().hex}:")
    async with trio.open_nursery() as n:
        with trio.fail_after(5):
            await n.start(store.run)
        await store.set("k", "v")
        private_redis.pause()
        try:
            start = time.monotonic()
            with trio.fail_after(3):
                with pytest.raises(StoreUnavailable):
                    await store.get("k")
            assert time.monotonic() - start < 2.0
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.get("k")
            assert time.monotonic() - t0 < 0.2
        finally:
            private_redis.resume()
        value, took = await until_up(store, "k", 6.5)
        assert value == "v" and took < 6.0
        n.cancel_scope.cancel()


@needs_redis_server
async def test_redis_incr_during_outage_is_store_unavailable(private_redis):
    store = RedisStore(private_redis.url, prefix=f"babelsip-test:{uuid.uuid4().hex}:")
    async with trio.open_nursery() as n:
        with trio.fail_after(5):
            await n.start(store.run)
        assert await store.incr("c") == 1
        await trio.to_thread.run_sync(private_redis.stop)
        try:
            for _ in range(2):     # the call that trips the breaker, then one refused by it
                with trio.fail_after(3):
                    with pytest.raises(StoreUnavailable):
                        await store.incr("c")
        finally:
            n.cancel_scope.cancel()


@pytest.mark.skipif(REDIS_SERVER is None or REDIS_CLI is None,
                    reason="redis-server and redis-cli are not installed")
async def test_cluster_down_at_start_then_up():
    """A cluster client reads the cluster's layout when it starts: with no
    seed answering, the store still starts, calls fail fast, and it serves
    once the cluster is up (run() retries with the breaker's backoff)."""
    cluster = RedisClusterServers()              # ports chosen, nothing started yet
    store = RedisStore(cluster.url, prefix=f"babelsip-test:{uuid.uuid4().hex}:")
    try:
        async with trio.open_nursery() as n:
            with trio.fail_after(3):
                await n.start(store.run)
            for _ in range(3):
                with trio.fail_after(1):
                    with pytest.raises(StoreUnavailable, match="redis\\+cluster://"):
                        await store.set("k", 1)
            assert store.statistics()["up"] is False
            await trio.to_thread.run_sync(cluster.start)
            _, took = await until_up(store, "k", 12)
            await store.set("k", 1)
            assert await store.get("k") == 1
            assert store.statistics()["up"] is True
            n.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(cluster.close)
