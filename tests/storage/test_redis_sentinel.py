"""RedisStore through Redis Sentinel (redis+sentinel://): the store finds the
primary by asking the Sentinel, and after a failover (the primary stopped,
the Sentinel promotes the replica) it reconnects to the new primary by
itself and serves again, with what was written before the failover."""

from __future__ import annotations

import time
import uuid

import pytest
import trio

from host.storage import StoreUnavailable
from host.storage.redis import RedisStore
from tests.storage.redis_server import REDIS_SERVER, RawRedis
from tests.storage.redis_topologies import RedisSentinelSetup

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

FAILOVER_LIMIT = 25.0   # seconds: detection (0.5 s) + election + promotion take ~2-5 s here


@pytest.fixture
async def sentinel():
    setup = RedisSentinelSetup(service=f"svc{uuid.uuid4().hex[:8]}")
    try:
        await trio.to_thread.run_sync(setup.start)
        yield setup
    finally:
        await trio.to_thread.run_sync(setup.close)



async def test_the_store_finds_the_primary_and_follows_a_failover(sentinel):
    store = RedisStore(sentinel.url, prefix=f"babelsip-test:{uuid.uuid4().hex}:")
    async with trio.open_nursery() as n:
        with trio.fail_after(5):
            await n.start(store.run)
        await store.set("before", "failover")
        assert await store.incr("calls") == 1
        old_primary = sentinel.primary.port
        with RawRedis(old_primary) as r:
            # the value is on the primary the Sentinel named (not the replica),
            # and has reached the replica before the primary goes
            assert r.command("GET", f"{store.prefix}kv:before") == '"failover"'
            assert r.command("WAIT", 1, 2000) == 1

        await trio.to_thread.run_sync(sentinel.kill_primary)
        start = time.monotonic()
        unavailable = 0
        for _ in range(2000):     # bounded: FAILOVER_LIMIT at 50 ms a try
            try:
                with trio.fail_after(3):
                    await store.set("after", "failover")
                break
            except StoreUnavailable:
                unavailable += 1
            assert time.monotonic() - start < FAILOVER_LIMIT, "the store did not follow the failover"
            await trio.sleep(0.05)
        took = time.monotonic() - start
        print(f"failover: the store served again after {took:.2f} s ({unavailable} refused calls)")
        assert unavailable >= 1                       # it did notice the primary had gone
        assert await trio.to_thread.run_sync(sentinel.primary_port) == sentinel.replica_port
        assert await store.get("before") == "failover"   # written before, kept by the replica
        assert await store.incr("calls") == 2
        with RawRedis(sentinel.replica_port) as r:
            assert r.command("GET", f"{store.prefix}kv:after") == '"failover"'
        assert store.statistics()["up"] is True
        n.cancel_scope.cancel()


async def test_an_unknown_service_is_store_unavailable(sentinel):
    store = RedisStore(sentinel.url.replace(sentinel.service, "nosuchservice"),
                       prefix=f"babelsip-test:{uuid.uuid4().hex}:")
    async with trio.open_nursery() as n:
        with trio.fail_after(5):
            await n.start(store.run)
        with trio.fail_after(3):
            with pytest.raises(StoreUnavailable, match="redis\\+sentinel://.*/nosuchservice/0"):
                await store.get("k")
        n.cancel_scope.cancel()
