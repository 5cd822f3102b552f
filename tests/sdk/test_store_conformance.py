"""One store test for every language: the conformance route "ratelimit"
(sdk/conformance/routes/<sdk>/ratelimit.*) counts calls per caller with the
host's store (incr with a ttl) and answers 403 over its limit, 503 when the
store refuses. Each language's route runs in its own runtime (Lua in-process,
Python, Perl and Java as stdio workers) against the same MemoryStore and the
same expectations, so a host call that works in one language and not in
another fails here. The route's keys are under its prefix in every one
(the host adds it: runtimes/jsonline/calls.py)."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from host.storage.memory import MemoryStore
from host.routes.runtime import RuntimeSpec, script_key_prefix

ROUTES = Path(__file__).resolve().parents[2] / "sdk" / "conformance" / "routes"
FAST = (("ping_interval", 0.1), ("grace", 0.5))
KEYS = script_key_prefix("ratelimit")   # where the host keeps the route's keys


def _has_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# runtime -> (route file, what it needs)
LANGUAGES = {
    "lua54": ("lua/ratelimit.lua", True),
    "luajit": ("lua/ratelimit.lua", _has_module("lupa.luajit21")),
    "python": ("python/ratelimit.py", True),
    "perl": ("perl/ratelimit.pl", shutil.which("perl") is not None),
    "java": ("java/RateLimit.java", shutil.which("javac") is not None),
}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def runtime_for(name: str, store, state: Path):
    route, _ = LANGUAGES[name]
    path = ROUTES / route
    if name in ("lua54", "luajit"):
        from runtimes.lua import LuaRuntime
        return LuaRuntime(RuntimeSpec("ratelimit", path, name, deadline=5.0), store=store)
    from runtimes.jsonline import StdioRuntime
    opts = FAST + (("state_dir", str(state)),)
    # Java's first start compiles the route and the SDK: a long first deadline.
    return StdioRuntime(RuntimeSpec("ratelimit", path, name, deadline=10.0, options=opts),
                        store=store)


def event(caller: str) -> dict:
    return {"hook": "on_request", "method": "INVITE", "ruri": "sip:bob@example.com",
            "ruri_user": "bob", "ruri_host": "example.com", "call_id": f"{caller}-1", "cseq": 1,
            "from_uri": f"sip:{caller}@example.org", "from_tag": "t", "to_uri": "sip:bob@example.com",
            "to_tag": "", "source_ip": "127.0.0.1", "source_port": 5060, "transport": "udp",
            "in_dialog": False, "headers": [], "body": "", "vars": {}}


@pytest.mark.parametrize("language", [
    pytest.param(name, marks=pytest.mark.skipif(not ok, reason=f"{name} is not available"))
    for name, (_, ok) in LANGUAGES.items()])
async def test_ratelimit_counts_calls_per_caller_in_the_store(language, tmp_path):
    clock = Clock()
    store = MemoryStore(clock=clock)
    await store.set(KEYS + "rate:sip:broken@example.org", "not a number")
    rt = runtime_for(language, store, tmp_path / "state")
    await rt.start()
    try:
        async def answer(caller):
            d = await rt.handle("on_request", event(caller))
            return d.code, d.reason

        assert [await answer("alice") for _ in range(4)] == [
            (200, "n=1"), (200, "n=2"), (200, "n=3"), (403, "Over limit")]
        assert await answer("bob") == (200, "n=1")             # per caller
        assert await store.get(KEYS + "rate:sip:alice@example.org") == 4
        # The route passed its ttl: 60 s later alice's count starts again.
        clock.now += 61
        assert await store.get(KEYS + "rate:sip:alice@example.org") is None
        assert await answer("alice") == (200, "n=1")
        # A refused incr is an error the route catches, in every language.
        assert await answer("broken") == (503, "Store unavailable")
    finally:
        await rt.aclose()
