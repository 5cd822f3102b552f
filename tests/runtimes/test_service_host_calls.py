"""The service host calls (registrar.lookup, dialog.count): the ops of
runtimes/jsonline/calls.py, and the same ops from a Lua route (yielding like
req.store) and from a Python worker over the line-JSON protocol."""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass

import pytest
import trio

from host.routes.runtime import RuntimeSpec
from host.routes.verbs import ON_REQUEST
from host.storage.memory import MemoryStore
from runtimes.jsonline import StdioRuntime
from runtimes.jsonline.calls import CallError, perform
from runtimes.lua import LuaRuntime

from jsonline_fixtures import FAST, event  # noqa: E402

location = pytest.importorskip("host.services.location", reason="the registrar is not there yet")

AOR = "sip:alice@example.com"


@dataclass
class FakeBinding:
    """What binding_record() and live() read of a registrar binding."""

    contact: str
    expires_at: float
    q: float = 1.0
    source: tuple = ("udp", "192.0.2.7", 5062)
    path: tuple = ()
    user_agent: str = "phone/1"
    instance: str = ""
    reg_id: int = 0

    def expires_in(self, now: float) -> int:
        return max(1, round(self.expires_at - now))


async def registered(store: MemoryStore, aor=AOR, *bindings) -> None:
    await store.update_bindings(location.canonical_aor(aor), lambda _: (list(bindings), None))


def two_bindings():
    now = time.time()
    return (FakeBinding("sip:alice@192.0.2.7:5062", now + 600, q=0.5),
            FakeBinding("sip:alice@198.51.100.1", now + 300, q=1.0, source=("tcp", "198.51.100.1", 40000),
                        path=("<sip:edge.example.com;lr>",)),
            FakeBinding("sip:alice@gone.example", now - 1))   # expired: not returned


# ------------------------------------------------------------- the ops

async def test_registrar_lookup_returns_live_bindings_best_q_first():
    store = MemoryStore()
    await registered(store, AOR, *two_bindings())
    found = await perform(store, "registrar.lookup", [AOR], key_prefix="")
    assert [b["contact"] for b in found] == ["sip:alice@198.51.100.1", "sip:alice@192.0.2.7:5062"]
    first = found[0]
    assert set(first) == {"contact", "expires", "q", "received", "transport", "path",
                          "user_agent", "instance", "reg_id"}
    assert (first["received"], first["transport"], first["path"]) == (
        "198.51.100.1:40000", "tcp", ["<sip:edge.example.com;lr>"])
    assert 290 <= first["expires"] <= 300
    assert await perform(store, "registrar.lookup", ["sip:nobody@example.com"], key_prefix="") == []


@pytest.mark.parametrize("args, message", [
    ([], "registrar.lookup takes 1-1 arguments, got 0"),
    ([AOR, AOR], "registrar.lookup takes 1-1 arguments, got 2"),
    ([5], "aor must be a sip: or sips: URI with a user part, got 5"),
    (["alice@example.com"], "aor must be a sip: or sips: URI"),
    (["sip:example.com"], "aor must be a sip: or sips: URI"),
])
async def test_registrar_lookup_refuses_bad_arguments(args, message):
    with pytest.raises(CallError, match=message.replace("(", r"\(")):
        await perform(MemoryStore(), "registrar.lookup", args, key_prefix="")


async def test_dialog_count_counts_a_profile_under_its_key():
    store = MemoryStore()
    await store.profile_add("caller", "sip:alice@example.com", "d1", 60)
    await store.profile_add("caller", "sip:alice@example.com", "d2", 60)
    await store.profile_add("caller", "", "d3", 60)
    assert await perform(store, "dialog.count", ["caller", "sip:alice@example.com"], key_prefix="") == 2
    assert await perform(store, "dialog.count", ["caller"], key_prefix="") == 1            # key defaults to ""
    assert await perform(store, "dialog.count", ["caller", None], key_prefix="") == 1      # a trailing null too
    assert await perform(store, "dialog.count", ["nobody", "x"], key_prefix="") == 0


@pytest.mark.parametrize("args, message", [
    ([], "dialog.count takes 1-2 arguments, got 0"),
    (["p", "k", "x"], "dialog.count takes 1-2 arguments, got 3"),
    ([""], "profile must be a string of 1-128 characters"),
    ([7], "profile must be a string of 1-128 characters"),
    (["p" * 129], "profile must be a string of 1-128 characters"),
    (["p", 5], "key must be a string of at most 256 characters or null, got 5"),
    (["p", "k" * 257], "key must be a string of at most 256 characters"),
])
async def test_dialog_count_refuses_bad_arguments(args, message):
    with pytest.raises(CallError, match=message):
        await perform(MemoryStore(), "dialog.count", args, key_prefix="")


# ------------------------------------------------------------- from Lua

@pytest.fixture
async def lua(tmp_path):
    started = []

    async def make(source, store):
        path = tmp_path / "main.lua"
        path.write_text(textwrap.dedent(source))
        rt = LuaRuntime(RuntimeSpec(route="main", path=path, runtime="lua54"), store=store)
        await rt.start()
        started.append(rt)
        return rt

    yield make
    for rt in started:
        await rt.aclose()


LUA_ROUTE = """
function on_request(req)
  if req.ruri_user == "where" then
    local found = req.registrar:lookup("sip:alice@example.com")
    local parts = {#found}
    for i, b in ipairs(found) do parts[#parts + 1] = b.contact .. "/" .. b.transport end
    return req:reply(200, table.concat(parts, " "))
  end
  if req.ruri_user == "cap" then
    local n = req.dialog:count("caller", req.from_uri)
    if n >= 2 then return req:reply(486, "Too many calls (" .. n .. ")") end
    req:add_profile("caller", req.from_uri)
    req:limit_duration(3600)
    return req:relay()
  end
  if req.ruri_user == "bad" then
    local ok, err = pcall(function() return req.dialog:count("") end)
    req.vars.err = err
    local ok2, err2 = pcall(function() return req.registrar.lookup("sip:a@b") end)
    req.vars.err2 = err2
    return req:reply(500, "bad")
  end
end
"""


async def test_lua_route_reads_bindings_and_profiles(lua):
    store = MemoryStore()
    await registered(store, AOR, *two_bindings())
    rt = await lua(LUA_ROUTE, store)
    d = await rt.handle(ON_REQUEST, event("where"))
    assert (d.code, d.reason) == (200, "2 sip:alice@198.51.100.1/tcp sip:alice@192.0.2.7:5062/udp")

    caller = event("cap")["from_uri"]
    await store.profile_add("caller", caller, "d1", 60)
    d = await rt.handle(ON_REQUEST, event("cap"))
    assert d.verb == "relay" and d.dialog == {"max_duration": 3600.0, "profiles": {"caller": caller}}
    await store.profile_add("caller", caller, "d2", 60)
    d = await rt.handle(ON_REQUEST, event("cap"))
    assert (d.code, d.reason) == (486, "Too many calls (2)")


async def test_lua_host_call_errors_name_the_call(lua):
    rt = await lua(LUA_ROUTE, MemoryStore())
    d = await rt.handle(ON_REQUEST, event("bad"))
    assert "req.dialog:count(): profile must be a string of 1-128 characters" in d.vars["err"]
    assert "req.registrar:lookup() called outside the event it belongs to" in d.vars["err2"]
    assert "use req.registrar:, not req.registrar." in d.vars["err2"]


async def test_lua_auth_user_reads_empty_when_absent(lua):
    rt = await lua("""
        function on_request(req) req.vars.who = req.auth_user; req.vars.t = type(req.auth_user) end
    """, MemoryStore())
    ev = event("x")
    ev.pop("auth_user", None)
    assert (await rt.handle(ON_REQUEST, ev)).vars == {"who": "", "t": "string"}
    assert (await rt.handle(ON_REQUEST, {**ev, "auth_user": "alice"})).vars == {"who": "alice",
                                                                                 "t": "string"}


# ------------------------------------------------------------- from a Python worker

PY_ROUTE = """
def on_request(req):
    if req.ruri_user == "where":
        found = req.registrar.lookup("sip:alice@example.com")
        return req.reply(200, " ".join([str(len(found))] + [b["contact"] for b in found]))
    if req.ruri_user == "cap":
        n = req.dialog.count("caller", req.from_uri)
        if n >= 1:
            return req.reply(486, "Too many calls (%d)" % n)
        req.add_profile("caller", req.from_uri)
        return req.relay()
    if req.ruri_user == "bad":
        try:
            req.dialog.count("")
        except Exception as e:
            return req.reply(500, str(e))
"""


async def test_python_worker_reads_bindings_and_profiles(tmp_path):
    path = tmp_path / "main.py"
    path.write_text(textwrap.dedent(PY_ROUTE))
    store = MemoryStore()
    await registered(store, AOR, *two_bindings())
    spec = RuntimeSpec("main", path, "python", deadline=2.0, pool=1,
                       options=FAST + (("state_dir", str(tmp_path / "state")),))
    rt = StdioRuntime(spec, store=store)
    await rt.start()
    try:
        d = await rt.handle(ON_REQUEST, event("where"))
        assert (d.code, d.reason) == (200, "2 sip:alice@198.51.100.1 sip:alice@192.0.2.7:5062")
        d = await rt.handle(ON_REQUEST, event("cap"))
        assert d.verb == "relay" and d.dialog["profiles"] == {"caller": event("cap")["from_uri"]}
        await store.profile_add("caller", event("cap")["from_uri"], "d1", 60)
        d = await rt.handle(ON_REQUEST, event("cap"))
        assert (d.code, d.reason) == (486, "Too many calls (1)")
        d = await rt.handle(ON_REQUEST, event("bad"))
        assert (d.code, d.reason) == (500, "dialog.count: profile must be a string of 1-128 characters, "
                                           "got ''")
    finally:
        await rt.aclose()
