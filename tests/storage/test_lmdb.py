"""LmdbStore behaviour beyond the conformance suite (test_store_backends.py):
its wall clock injected (expiry without sleeping), the sweep, keys longer
than LMDB's key limit, a full map, statistics, handles shared in a process."""

from __future__ import annotations

import pytest
import trio

from host.sip.registrar import Binding
from host.storage import StoreError
from host.storage.lmdb import SWEEP_BATCH, LmdbStore


class Wall:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def wall():
    return Wall()


@pytest.fixture
async def store(tmp_path, wall):
    s = LmdbStore(tmp_path / "store", wall=wall)
    yield s
    await s.aclose()


def binding(contact: str, expires_at: float) -> Binding:
    return Binding(contact, expires_at, 1.0, "cid", 1, ("udp", "192.0.2.1", 5060), (), "ua", "", 0,
                   "core-a", expires_at - 60, False)


async def test_expiry_follows_the_wall_clock(store, wall):
    await store.set("k", "v", ttl=10)
    assert await store.incr("n", ttl=10) == 1
    assert await store.advance("nonce", 3, 10) is True
    await store.put_dialog("d", {"id": "d"}, 10)
    assert await store.profile_add("p", "k", "d", 10) == 1
    await store.update_bindings("sip:a@x", lambda cur: ([binding("sip:a@1", wall.now + 10)], None))
    wall.now += 9.9
    assert await store.get("k") == "v"
    assert await store.incr("n", ttl=1000) == 2       # the ttl of an existing key is kept
    assert len(await store.bindings("sip:a@x")) == 1
    wall.now += 0.1                                     # exactly at the expiry: gone
    assert await store.get("k") is None
    assert await store.get("n") is None
    assert await store.advance("nonce", 1, 10) is True  # forgotten: counts from 0
    assert await store.get_dialog("d") is None
    assert await store.dialogs() == []
    assert await store.profile_count("p", "k") == 0
    assert await store.bindings("sip:a@x") == []
    assert await store.aors() == []


async def test_sweep_deletes_only_the_expired_in_batches(store, wall):
    for i in range(SWEEP_BATCH * 2 + 10):
        await store.set(f"short-{i:05}", i, ttl=5)
    await store.set("forever", 1)
    await store.set("long", 2, ttl=100)
    for i in range(3):
        await store.profile_add("calls", "alice", f"d{i}", 5 if i else 100)
    await store.put_dialog("gone", {"id": "gone"}, 5)
    await store.update_bindings("sip:gone@x", lambda cur: ([binding("sip:g@1", wall.now + 5)], None))
    assert await store.sweep() == 0
    wall.now += 6
    assert await store.sweep() == SWEEP_BATCH * 2 + 10 + 2 + 1 + 1
    stats = store.statistics()
    assert stats["entries"] == {"kv": 2, "aor": 0, "nc": 0, "dlg": 0, "prof": 1}
    assert stats["sweeps"] == 2 and stats["swept"] == SWEEP_BATCH * 2 + 14
    assert await store.get("forever") == 1 and await store.get("long") == 2
    assert await store.profile_count("calls", "alice") == 1


async def test_profile_writes_drop_expired_members(store, wall):
    await store.profile_add("p", "k", "old", 5)
    wall.now += 6
    assert await store.profile_add("p", "k", "new", 5) == 1
    assert store.statistics()["entries"]["prof"] == 1   # "old" deleted on the way


async def test_run_sweeps_periodically(tmp_path):
    store = LmdbStore(tmp_path / "s", sweep_interval=0.02)
    await store.set("k", 1, ttl=0.01)
    async with trio.open_nursery() as n:
        await n.start(store.run)
        with trio.fail_after(5):
            while store.statistics()["swept"] == 0:
                await trio.sleep(0.02)
        n.cancel_scope.cancel()
    assert store.statistics()["entries"]["kv"] == 0
    await store.aclose()


async def test_keys_longer_than_the_lmdb_limit(store, wall):
    long_a, long_b = "a" * 600 + "1", "a" * 600 + "2"     # same first 511 bytes
    await store.set(long_a, 1)
    await store.set(long_b, 2)
    assert (await store.get(long_a), await store.get(long_b)) == (1, 2)
    assert await store.incr(long_a) == 2
    assert await store.advance("n" * 2000, 5, 10) is True
    assert await store.advance("n" * 2000, 5, 10) is False
    aor = "sip:" + "u" * 700 + "@example.com"
    await store.update_bindings(aor, lambda cur: ([binding("sip:u@1", wall.now + 60)], None))
    await store.update_bindings("sip:short@x", lambda cur: ([binding("sip:s@1", wall.now + 60)], None))
    assert sorted(await store.aors()) == sorted([aor, "sip:short@x"])
    assert [b.contact for b in await store.bindings(aor)] == ["sip:u@1"]
    await store.put_dialog("d" * 900, {"id": "long"}, 10)
    assert await store.get_dialog("d" * 900) == {"id": "long"}
    profile, key = "p" * 300, "k" * 300
    assert await store.profile_add(profile, key, "m" * 400, 10) == 1
    assert await store.profile_add(profile, key, "m" * 401, 10) == 2
    assert await store.profile_add(profile, "other", "m" * 400, 10) == 1
    assert await store.profile_remove(profile, key, "m" * 400) == 1
    assert await store.profile_count(profile, key) == 1


async def test_non_json_values_are_store_errors(store):
    for bad in ({1: "int key"}, {"set": {1, 2}}, object(), b"bytes", 2**64):
        with pytest.raises(StoreError, match="JSON"):
            await store.set("k", bad)
    with pytest.raises(StoreError, match="JSON"):
        await store.put_dialog("d", {"when": object()}, 10)
    assert await store.get("k") is None and await store.dialogs() == []


async def test_a_full_map_is_a_store_error_and_the_store_goes_on(tmp_path):
    store = LmdbStore(tmp_path / "small", map_size=1 << 20)
    await store.set("small", "fits")
    with pytest.raises(StoreError, match=r"is full \(map_size 1048576 bytes\)"):
        await store.set("big", "x" * (2 << 20))
    assert await store.get("big") is None
    assert await store.get("small") == "fits"
    await store.set("small", "still writable")
    assert await store.get("small") == "still writable"
    assert store.statistics()["errors"] == 1
    await store.aclose()


async def test_bad_arguments_are_store_errors(store):
    with pytest.raises(StoreError):
        await store.advance("n", "5", 10)
    with pytest.raises(StoreError):
        await store.put_dialog("", {"id": ""}, 10)
    with pytest.raises(StoreError):
        await store.profile_add("p", "", "m", 10)


async def test_stores_on_one_path_in_one_process_share_a_handle(tmp_path):
    # LMDB breaks when a process opens one environment twice and closes one.
    one, two = LmdbStore(tmp_path / "s"), LmdbStore(tmp_path / "s")
    await one.set("k", "v")
    await one.aclose()
    assert await two.get("k") == "v"
    await two.set("k", "w")
    three = LmdbStore(tmp_path / "s")
    assert await three.get("k") == "w"
    await two.aclose()
    await three.aclose()
    with pytest.raises(StoreError):
        await three.get("k")                      # every handle closed


async def test_statistics(store):
    await store.set("k", 1)
    stats = store.statistics()
    assert stats["backend"] == "lmdb" and stats["open"] is True
    assert stats["entries"]["kv"] == 1
    assert 0 < stats["map_used"] <= stats["map_size"] == store.map_size
    assert store.networked is False
    await store.aclose()
    assert store.statistics()["open"] is False


async def test_directory_is_created(tmp_path):
    path = tmp_path / "a" / "b"
    store = LmdbStore(path)
    assert (path / "data.mdb").exists()
    await store.aclose()
    with pytest.raises(StoreError, match="cannot open"):
        LmdbStore(path / "data.mdb")              # a file, not a directory

