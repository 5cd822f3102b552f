"""Lua host calls (req.store:*): the event's coroutine yields to the host while
the store answers, then resumes; budget, deadline and ordering across yields."""

from __future__ import annotations

import importlib
import time

import pytest
import trio

from host.routes.runtime import RuntimeSpec, ScriptError
from host.routes.verbs import ON_REQUEST
from host.storage.memory import MemoryStore
from runtimes.lua import LuaRuntime


def _has(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


RUNTIMES = ["lua54", pytest.param("luajit", marks=pytest.mark.skipif(
    not _has("lupa.luajit21"), reason="lupa built without LuaJIT"))]


def event(user="bob", call_id="c1") -> dict:
    return {"hook": ON_REQUEST, "method": "INVITE", "ruri": f"sip:{user}@example.com",
            "ruri_user": user, "ruri_host": "example.com", "call_id": call_id, "cseq": 1,
            "from_uri": "sip:alice@example.org", "from_tag": "t", "to_uri": "sip:bob@example.com",
            "to_tag": "", "source_ip": "127.0.0.1", "source_port": 5060, "transport": "udp",
            "in_dialog": False, "headers": [], "body": "", "vars": {}}


class GatedStore(MemoryStore):
    """A store whose get() of a key starting with "slow" waits for `gate`: an
    event parked on it shows what runs meanwhile."""

    def __init__(self):
        super().__init__()
        self.gate = trio.Event()
        self.waiting = 0

    async def get(self, key):
        if key.startswith("route:main:slow"):
            self.waiting += 1
            await self.gate.wait()
        return await super().get(key)


@pytest.fixture
async def make(tmp_path):
    started = []

    async def make(source, runtime="lua54", store=None, **spec_args):
        path = tmp_path / "main.lua"
        path.write_text(source)
        rt = LuaRuntime(RuntimeSpec(route="main", path=path, runtime=runtime, **spec_args),
                        store=store if store is not None else MemoryStore())
        await rt.start()
        started.append(rt)
        return rt

    yield make
    for rt in started:
        await rt.aclose()


def submit(rt, ev, answers, deadline=2.0):
    """rt.submit as the server does it; answers[call_id] = the result."""
    rt.submit(ON_REQUEST, ev, time.monotonic() + deadline,
              lambda result: answers.__setitem__(ev["call_id"], result))


async def until(predicate, timeout=5.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_store_calls_yield_and_resume_with_their_values(make, runtime):
    store = MemoryStore()
    rt = await make("""
function on_request(req)
  req:set_header("X-Before", "1")                 -- verbs before a yield are kept
  local n = req.store:incr("n", 2, 60)
  req.store:set("t", {a = 1, list = {"x", "y"}}, 30)
  local t = req.store:get("t")
  local gone = req.store:delete("t")
  local again = req.store:get("t")
  req.vars.n = n
  req:reply(200, table.concat({n, t.a, t.list[2], tostring(gone), tostring(again)}, " "))
end
""", runtime, store=store)
    d = await rt.handle(ON_REQUEST, event())
    assert (d.code, d.reason) == (200, "2 1 y true nil")
    assert d.edits == [("set_header", "X-Before", "1")]
    assert d.vars == {"n": 2}
    assert await store.get("route:main:n") == 2     # the route's prefix (shared_store = false)
    assert rt.statistics()["host_calls"] == 5
    assert rt._parked_count() == 0


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_instruction_budget_covers_the_whole_event_across_a_yield(make, runtime):
    # Each half uses ~60 % of the budget: one half passes, two halves with a
    # host call between them are stopped (the budget is not reset by the yield).
    src = """
local function half() local x = 0; for i = 1, 300000 do x = x + i end; return x end
function on_request(req)
  half()
  if req.ruri_user == "both" then req.store:incr("k"); half() end
  req:reply(200, "done")
end
"""
    rt = await make(src, runtime, options=(("instructions", 1_000_000),))
    assert (await rt.handle(ON_REQUEST, event("one"))).code == 200
    with pytest.raises(ScriptError) as info:
        await rt.handle(ON_REQUEST, event("both"))
    assert info.value.kind == "budget" and "instructions" in info.value.message
    assert (await rt.handle(ON_REQUEST, event("one"))).code == 200   # the state goes on


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_loop_after_a_yield_is_stopped_at_the_deadline(make, runtime):
    rt = await make("""
function on_request(req)
  req.store:incr("k")
  while true do end
end
""", runtime, deadline=0.3, options=(("instructions", 10**12),))
    started = time.monotonic()
    with pytest.raises(ScriptError) as info:
        await rt.handle(ON_REQUEST, event())
    assert info.value.kind == "budget" and "deadline" in info.value.message
    assert time.monotonic() - started < 0.3 + 1.0   # stopped by the hook, not abandoned
    assert not info.value.damaged


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_store_error_is_a_lua_error_the_script_can_pcall(make, runtime):
    store = MemoryStore()
    await store.set("route:main:text", "not a number")
    rt = await make("""
function on_request(req)
  local ok, err = pcall(function() local v = req.store:incr("text"); return v end)
  if req.ruri_user == "uncaught" then req.store:incr("text") end
  req:reply(500, tostring(ok) .. " | " .. err)
end
""", runtime, store=store)
    d = await rt.handle(ON_REQUEST, event())
    assert d.code == 500
    assert d.reason.startswith("false | main.lua:3: req.store:incr(): incr: value of 'text' is not an integer")
    with pytest.raises(ScriptError) as info:
        await rt.handle(ON_REQUEST, event("uncaught"))
    assert info.value.line == 4 and "is not an integer" in info.value.message


async def test_host_calls_outside_the_event_or_in_a_script_coroutine_are_refused(make):
    rt = await make("""
function on_request(req)
  local u = req.ruri_user
  if u == "stash" then saved = req.store; req:reply(200, "kept") return end
  local ok, err
  if u == "stale" then ok, err = pcall(saved.get, saved, "k")
  elseif u == "dot" then ok, err = pcall(req.store.get, req, "k")
  elseif u == "co" then
    local co = coroutine.create(function() return req.store:get("k") end)
    ok, err = coroutine.resume(co)
  elseif u == "yield" then ok, err = pcall(coroutine.yield, 1)
  elseif u == "runner" then
    ok, err = pcall(coroutine.resume, (coroutine.running()))
  end
  req:reply(500, err)
end
""")

    async def reason(user):
        return (await rt.handle(ON_REQUEST, event(user))).reason

    assert await reason("stash") == "kept"
    assert "called outside the event it belongs to" in await reason("stale")
    assert "called outside the event it belongs to" in await reason("dot")
    assert "inside a coroutine the route created" in await reason("co")
    assert "attempt to yield from outside a coroutine" in await reason("yield")
    assert "the event's own coroutine is the host's" in await reason("runner")


async def test_the_store_is_not_reachable_while_the_script_loads(make):
    # At load time there is no event: nothing to yield to, and no req.
    with pytest.raises(Exception) as info:
        await make("""
local ok, err = pcall(function() return req.store:get("k") end)
error("load: " .. tostring(err))
function on_request(req) end
""")
    assert "attempt to index a nil value" in str(info.value)


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_other_calls_run_on_the_state_while_one_waits_for_the_store(make, runtime):
    store = GatedStore()
    rt = await make("""
function on_request(req)
  if req.ruri_user == "slow" then
    local before = req.ruri_user
    local v = req.store:get("slow:" .. req.call_id)
    req:reply(200, "slow " .. before .. " " .. req.call_id .. " " .. tostring(v))
    return
  end
  req:reply(200, "quick " .. req.call_id .. " " .. req.store:incr("quick:" .. req.call_id))
end
""", runtime, store=store)
    answers = {}
    submit(rt, event("slow", "A"), answers)
    await until(lambda: store.waiting == 1)
    assert rt._parked_count() == 1 and "A" not in answers
    for call_id in ("B", "C"):
        submit(rt, event("fast", call_id), answers)
    await until(lambda: "C" in answers)
    assert answers["B"].reason == "quick B 1" and answers["C"].reason == "quick C 1"
    assert "A" not in answers                    # still parked, not running
    store.gate.set()
    await until(lambda: "A" in answers)
    # Resumed in its own event's context, after the others ran on the state.
    assert answers["A"].reason == "slow slow A nil"
    assert rt._parked_count() == 0


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_parked_event_past_its_deadline_gets_the_fallback(make, runtime):
    store = GatedStore()   # the gate never opens: the store never answers
    rt = await make("""
function on_request(req)
  if req.ruri_user == "slow" then req.store:get("slow") end
  req:reply(200, "ok")
end
""", runtime, store=store, deadline=0.3)
    answers = {}
    started = time.monotonic()
    submit(rt, event("slow", "A"), answers, deadline=0.3)
    await until(lambda: "A" in answers)
    waited = time.monotonic() - started
    assert isinstance(answers["A"], ScriptError) and answers["A"].kind == "timeout"
    assert "waiting for the host (kv.get)" in answers["A"].message
    assert 0.25 < waited < 2.0
    assert not answers["A"].damaged
    # The state was not abandoned (the parked event was not running) and the
    # parked coroutine was dropped.
    submit(rt, event("fast", "B"), answers)
    await until(lambda: "B" in answers)
    assert answers["B"].code == 200
    await until(lambda: rt._parked_count() == 0)
    assert rt.statistics()["overruns"] == 0


async def test_memory_cap_holds_after_a_yield(make):
    rt = await make("""
function on_request(req)
  req.store:incr("k")
  local t = {}
  for i = 1, 1e8 do t[i] = ("x"):rep(64) .. i end
end
""", memory_mb=8)
    with pytest.raises(ScriptError) as info:
        await rt.handle(ON_REQUEST, event())
    assert info.value.kind == "memory"


async def test_a_route_without_host_calls_starts_no_host_call_task(make):
    rt = await make('function on_request(req) req:reply(200, "ok") end')
    for _ in range(3):
        assert (await rt.handle(ON_REQUEST, event())).code == 200
    assert rt.statistics()["host_calls"] == 0 and not rt._calls_started
