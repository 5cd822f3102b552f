"""The JSON-RPC 2.0 dispatcher, sans-IO: bytes in, bytes out, no sockets."""

import orjson
import pytest

from host.management.jsonrpc import (INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, MAX_BATCH,
                                     METHOD_NOT_FOUND, PARSE_ERROR, Dispatcher, RpcError, request)


@pytest.fixture
def rpc():
    calls = []
    d = Dispatcher()

    async def add(a, b=0):
        calls.append((a, b))
        return a + b

    async def refuse(name):
        raise RpcError(-32001, "not found", name)

    async def crash():
        raise ValueError("bug")

    d.register("add", add)
    d.register("refuse", refuse)
    d.register("crash", crash)
    d.calls = calls
    return d


async def answer(rpc, obj):
    data = await rpc.handle(orjson.dumps(obj) if not isinstance(obj, bytes) else obj)
    return None if data is None else orjson.loads(data)


async def test_params_by_position_and_by_name(rpc):
    assert await answer(rpc, {"jsonrpc": "2.0", "id": 1, "method": "add", "params": [2, 3]}) == \
        {"jsonrpc": "2.0", "id": 1, "result": 5}
    assert (await answer(rpc, {"jsonrpc": "2.0", "id": "x", "method": "add",
                               "params": {"a": 4, "b": 1}}))["result"] == 5
    assert (await answer(rpc, {"jsonrpc": "2.0", "id": 2, "method": "add", "params": [7]}))["result"] == 7


async def test_the_standard_errors(rpc):
    async def code(obj):
        return (await answer(rpc, obj))["error"]["code"]
    assert await code(b"{not json") == PARSE_ERROR
    assert await code({"id": 1, "method": "add"}) == INVALID_REQUEST            # no jsonrpc
    assert await code({"jsonrpc": "2.0", "id": 1, "method": 5}) == INVALID_REQUEST
    assert await code({"jsonrpc": "2.0", "id": 1, "method": "add", "params": 3}) == INVALID_REQUEST
    assert await code({"jsonrpc": "2.0", "id": {}, "method": "add"}) == INVALID_REQUEST
    assert await code({"jsonrpc": "2.0", "id": 1, "method": "nope"}) == METHOD_NOT_FOUND
    assert await code({"jsonrpc": "2.0", "id": 1, "method": "add", "params": []}) == INVALID_PARAMS
    assert await code({"jsonrpc": "2.0", "id": 1, "method": "add", "params": {"c": 1}}) == INVALID_PARAMS
    assert await code({"jsonrpc": "2.0", "id": 1, "method": "crash"}) == INTERNAL_ERROR
    err = (await answer(rpc, {"jsonrpc": "2.0", "id": 9, "method": "refuse", "params": ["x"]}))
    assert err == {"jsonrpc": "2.0", "id": 9, "error": {"code": -32001, "message": "not found", "data": "x"}}
    assert (await answer(rpc, b"{bad"))["id"] is None


async def test_a_notification_runs_and_gets_no_answer_even_on_error(rpc):
    assert await answer(rpc, {"jsonrpc": "2.0", "method": "add", "params": [1, 1]}) is None
    assert rpc.calls == [(1, 1)]
    assert await answer(rpc, {"jsonrpc": "2.0", "method": "nope"}) is None
    assert await answer(rpc, {"jsonrpc": "2.0", "method": "crash"}) is None


async def test_a_batch_answers_each_request_in_order_and_skips_notifications(rpc):
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "add", "params": [1, 2]},
             {"jsonrpc": "2.0", "method": "add", "params": [5, 5]},
             {"jsonrpc": "2.0", "id": 2, "method": "nope"},
             7,
             {"jsonrpc": "2.0", "id": 3, "method": "add", "params": [10]}]
    replies = await answer(rpc, batch)
    assert [r.get("id") for r in replies] == [1, 2, None, 3]
    assert replies[0]["result"] == 3 and replies[1]["error"]["code"] == METHOD_NOT_FOUND
    assert replies[2]["error"]["code"] == INVALID_REQUEST and replies[3]["result"] == 10
    assert rpc.calls == [(1, 2), (5, 5), (10, 0)]


async def test_batch_edge_cases(rpc):
    assert (await answer(rpc, []))["error"]["code"] == INVALID_REQUEST
    assert await answer(rpc, [{"jsonrpc": "2.0", "method": "add", "params": [1]}]) is None
    too_many = [{"jsonrpc": "2.0", "id": i, "method": "add", "params": [i]} for i in range(MAX_BATCH + 1)]
    assert (await answer(rpc, too_many))["error"]["code"] == INVALID_REQUEST
    assert rpc.calls == [(1, 0)]


async def test_a_result_that_is_not_json_is_an_internal_error():
    d = Dispatcher()

    async def bad():
        return {"x": object()}
    d.register("bad", bad)
    reply = orjson.loads(await d.handle(request("bad", None, 4)))
    assert reply["id"] == 4 and reply["error"]["code"] == INTERNAL_ERROR


def test_only_async_handlers_register():
    with pytest.raises(TypeError):
        Dispatcher().register("sync", lambda: 1)
