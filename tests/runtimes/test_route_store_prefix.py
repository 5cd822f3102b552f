"""Per-route store namespaces: a route's kv.* calls use keys under
`route:NAME:` unless routes.toml gives it `shared_store = true`. The prefix
is added where the host serves a script's store calls (runtimes/jsonline/
calls.py), so it holds in Lua in-process and in line-JSON workers alike;
these tests run real routes in both, loaded through the registry from a
routes.toml, against one MemoryStore."""

from __future__ import annotations

import importlib
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from host.routes.registry import RouteRegistry
from host.routes.runtimes_table import RUNTIME_CLASSES
from host.routes.verbs import ON_REQUEST
from host.storage.memory import MemoryStore

LUA = """
function on_request(req)
  if req.ruri_user == "write" then
    req.store:set("colour", "%(name)s")
    req:reply(200, "wrote")
  else
    req:reply(200, tostring(req.store:get("colour")))
  end
end
"""
PYTHON = '''
def on_request(req):
    if req.ruri_user == "write":
        req.store.set("colour", "%(name)s")
        req.reply(200, "wrote")
    else:
        req.reply(200, str(req.store.get("colour")))
'''
EXT = {"lua": (".lua", LUA), "python": (".py", PYTHON)}


def write_routes(folder: Path, routes: dict[str, str], toml_extra: str = "") -> None:
    """routes: name -> language; each route takes requests to host NAME.test."""
    folder.mkdir(exist_ok=True)
    toml = []
    for name, language in routes.items():
        ext, source = EXT[language]
        (folder / f"{name}{ext}").write_text(source % {"name": name})
        toml.append(f'[[match]]\nroute = "{name}"\nruri_host = "^{name}\\\\.test$"\n')
    (folder / "routes.toml").write_text("\n".join(toml) + "\n" + toml_extra)


@asynccontextmanager
async def registry_over(folder: Path, store: MemoryStore):
    def factory(spec):
        module, _, cls = RUNTIME_CLASSES[spec.runtime].partition(":")
        return getattr(importlib.import_module(module), cls)(spec, store=store)
    registry = RouteRegistry(folder, runtime_factory=factory, housekeeping_every=0.05)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            await nursery.start(registry.run)
        yield registry
        nursery.cancel_scope.cancel()


async def ask(registry, route: str, user: str) -> str:
    ev = {"hook": ON_REQUEST, "method": "INVITE", "ruri": f"sip:{user}@{route}.test",
          "ruri_user": user, "ruri_host": f"{route}.test", "call_id": f"{route}-{user}", "cseq": 1,
          "from_uri": "sip:a@b", "from_tag": "t", "to_uri": f"sip:{user}@{route}.test", "to_tag": "",
          "source_ip": "127.0.0.1", "source_port": 5060, "transport": "udp", "in_dialog": False,
          "headers": [], "body": "", "vars": {}}
    with trio.fail_after(20):
        handle = registry.select(ev)
        assert handle.route == route
        decision = await handle.handle(ON_REQUEST, ev)
    assert decision.code == 200, decision
    return decision.reason


@pytest.mark.parametrize("languages", [("lua", "lua"), ("python", "python"), ("lua", "python")],
                         ids="-".join)
async def test_two_routes_writing_one_key_do_not_see_each_other(tmp_path, languages):
    store = MemoryStore()
    write_routes(tmp_path / "routes", {"red": languages[0], "blue": languages[1]})
    async with registry_over(tmp_path / "routes", store) as registry:
        assert await ask(registry, "red", "read") == ("None" if languages[0] == "python" else "nil")
        assert await ask(registry, "red", "write") == "wrote"
        assert await ask(registry, "blue", "write") == "wrote"
        assert await ask(registry, "red", "read") == "red"
        assert await ask(registry, "blue", "read") == "blue"
    # where the host put them: under each route's prefix, nothing unprefixed
    assert await store.get("route:red:colour") == "red"
    assert await store.get("route:blue:colour") == "blue"
    assert await store.get("colour") is None


@pytest.mark.parametrize("languages", [("lua", "python"), ("python", "python")], ids="-".join)
async def test_shared_store_routes_share_the_unprefixed_namespace(tmp_path, languages):
    store = MemoryStore()
    await store.set("route:private:colour", "private")
    write_routes(tmp_path / "routes", {"red": languages[0], "blue": languages[1],
                                       "private": "lua"},
                 "[routes.red]\nshared_store = true\n\n[routes.blue]\nshared_store = true\n")
    async with registry_over(tmp_path / "routes", store) as registry:
        assert await ask(registry, "red", "write") == "wrote"
        assert await ask(registry, "blue", "read") == "red"        # blue sees red's value
        assert await ask(registry, "private", "read") == "private"  # not the shared one
        assert await ask(registry, "blue", "write") == "wrote"
        assert await ask(registry, "red", "read") == "blue"
    assert await store.get("colour") == "blue"
    assert await store.get("route:red:colour") is None


async def test_turning_shared_store_on_is_a_new_generation_with_the_new_namespace(tmp_path):
    store = MemoryStore()
    folder = tmp_path / "routes"
    write_routes(folder, {"red": "lua"})
    async with registry_over(folder, store) as registry:
        assert await ask(registry, "red", "write") == "wrote"
        write_routes(folder, {"red": "lua"}, "[routes.red]\nshared_store = true\n")
        await store.set("colour", "from another route")
        with trio.fail_after(10):
            while await ask(registry, "red", "read") != "from another route":
                await trio.sleep(0.05)
    assert await store.get("route:red:colour") == "red"
