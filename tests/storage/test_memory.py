import pytest

from host.storage import StoreError, shared_store, set_shared_store
from host.storage.memory import SWEEP_EVERY, MemoryStore


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(clock):
    return MemoryStore(clock)


async def test_set_get_delete(store):
    assert await store.get("k") is None
    await store.set("k", {"a": [1, 2]})
    assert await store.get("k") == {"a": [1, 2]}
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    assert await store.get("k") is None


async def test_ttl_expires_exactly_at_deadline(store, clock):
    await store.set("k", "v", ttl=10)
    clock.now += 9.999
    assert await store.get("k") == "v"
    clock.now += 0.001
    assert await store.get("k") is None
    assert await store.delete("k") is False


async def test_set_without_ttl_replaces_ttl(store, clock):
    await store.set("k", 1, ttl=1)
    await store.set("k", 2)
    clock.now += 100
    assert await store.get("k") == 2


async def test_incr_creates_counts_and_keeps_first_ttl(store, clock):
    assert await store.incr("n") == 1
    assert await store.incr("n", 5) == 6
    assert await store.incr("n", -2) == 4
    assert await store.incr("r", ttl=5) == 1
    clock.now += 3
    assert await store.incr("r", ttl=5) == 2   # ttl only set at creation
    clock.now += 2
    assert await store.get("r") is None
    assert await store.incr("r", ttl=5) == 1


async def test_incr_rejects_non_integers(store):
    await store.set("s", "text")
    with pytest.raises(StoreError):
        await store.incr("s")
    with pytest.raises(StoreError):
        await store.incr("n", 1.5)
    await store.set("b", True)
    with pytest.raises(StoreError):
        await store.incr("b")


@pytest.mark.parametrize("ttl", [0, -1, "5", True])
async def test_bad_ttl(store, ttl):
    with pytest.raises(StoreError):
        await store.set("k", 1, ttl=ttl)


@pytest.mark.parametrize("key", ["", None, 5])
async def test_bad_key(store, key):
    with pytest.raises(StoreError):
        await store.get(key)


async def test_sweep_reclaims_expired_keys_never_read(store, clock):
    for i in range(100):
        await store.set(f"old{i}", i, ttl=1)
    clock.now += 2
    for i in range(SWEEP_EVERY * 3):
        await store.set(f"new{i}", i)
    assert not any(k.startswith("old") for k in store._data)
    assert len(store) == SWEEP_EVERY * 3


async def test_shared_store_is_swappable():
    default = shared_store()
    assert shared_store() is default
    other = MemoryStore()
    set_shared_store(other)
    try:
        assert shared_store() is other
    finally:
        set_shared_store(default)
