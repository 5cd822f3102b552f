"""fanout.py against two real in-process workers: each a Dispatcher on its
own UNIX socket (unix.py), the parent's FanoutAdapter asking both."""

import os
import tempfile

import orjson
import pytest
import trio

from host.management.fanout import FanoutAdapter
from host.management.jsonrpc import NOT_FOUND, RpcError
from host.management.methods import dispatcher_for
from host.management.unix import call_unix, serve_unix


class Worker:
    """The adapter interface with canned per-worker numbers."""

    def __init__(self, index):
        self.i = index
        self.ended = []

    async def core_info(self):
        return {"pid": 1000 + self.i, "workers": 1}

    async def stats_get_statistics(self, *names):
        return {"core:received": 10 * (self.i + 1), "tm:server_transactions": 1}

    async def tm_stats(self):
        return {"current": 2, "created": 5 + self.i, "stateless_replies": {"483": 1}}

    async def routes_list(self):
        return {"routes": [{"route": "main", "state": "ok" if self.i == 0 else "failed",
                            "generation": 3 + self.i, "events": 4, "decisions": {"relay": 4},
                            "fallbacks": 0, "errors": self.i, "timeouts": 0, "restarts": 0,
                            "inflight": 0, "latency": {"buckets": [[0.001, 1], ["+Inf", 2]],
                                                       "sum": 0.5, "count": 2},
                            "last_error": None if self.i == 0 else {"where": "main.lua:3"}}],
                "default": "main", "config_error": None, "unrouted": {}}

    async def ul_dump(self):
        return {"aors": {"sip:alice@x": [{"contact": "sip:a@1"}]}, "count": 1, "contacts": 1,
                "answered_by": self.i}

    async def dlg_end(self, id):
        if self.i != 1:
            raise RpcError(NOT_FOUND, "no confirmed dialog with this id on this core", id)
        self.ended.append(id)
        return {"id": id, "ended": True}

    def __getattr__(self, name):   # the methods this test does not ask
        async def absent(*a, **k):
            raise RpcError(-32000, f"{name} not in this stub")
        return absent


@pytest.fixture
async def two_workers(nursery):
    folder = tempfile.mkdtemp(prefix="mgmt-fanout-")
    workers, paths = [Worker(0), Worker(1)], []
    for i, w in enumerate(workers):
        paths.append(await nursery.start(serve_unix, os.path.join(folder, f"w{i}.ctl"), dispatcher_for(w)))
    yield workers, FanoutAdapter(paths, timeout=5)


async def test_counters_are_summed_and_per_worker_details_kept(two_workers):
    workers, fan = two_workers
    assert await fan.stats_get_statistics("all") == {"core:received": 30, "tm:server_transactions": 2}
    assert await fan.tm_stats() == {"current": 4, "created": 11, "stateless_replies": {"483": 2}}
    (main,) = (await fan.routes_list())["routes"]
    assert main["events"] == 8 and main["errors"] == 1 and main["decisions"] == {"relay": 8}
    assert main["state"] == "failed" and main["last_error"] == {"where": "main.lua:3"}
    assert [w["generation"] for w in main["workers"]] == [3, 4]
    assert main["latency"] == {"buckets": [[0.001, 2], ["+Inf", 4]], "sum": 1.0, "count": 4}
    info = await fan.core_info()
    assert info["workers"] == 2 and [w["pid"] for w in info["per_worker"]] == [1000, 1001]


async def test_store_backed_methods_ask_one_worker_and_dlg_end_finds_the_owner(two_workers):
    workers, fan = two_workers
    assert (await fan.ul_dump())["answered_by"] == 0
    assert await fan.dlg_end("abc") == {"id": "abc", "ended": True, "worker": 1}
    assert workers[1].ended == ["abc"]
    with pytest.raises(RpcError) as info:
        await FanoutAdapter(fan.endpoints[:1]).dlg_end("zzz")   # worker 0 does not own it
    assert info.value.code == NOT_FOUND


async def test_the_fanout_serves_json_rpc_itself_and_names_a_dead_worker(two_workers, nursery):
    _, fan = two_workers
    folder = os.path.dirname(fan.endpoints[0])
    parent = await nursery.start(serve_unix, os.path.join(folder, "parent.ctl"), dispatcher_for(fan))
    reply = orjson.loads(await call_unix(parent, b'{"jsonrpc":"2.0","id":1,"method":"tm.stats"}'))
    assert reply["result"]["current"] == 4
    dead = FanoutAdapter([fan.endpoints[0], os.path.join(folder, "gone.ctl")], timeout=2)
    with pytest.raises(RpcError) as info:
        await dead.tm_stats()
    assert "gone.ctl" in info.value.data
