"""The registry with a fake runtime: route files are Python source whose
hook functions return Decisions, so these tests need no Lua and no workers."""

import inspect
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from host.routes.discovery import runtime_of_file, scan_routes
from host.routes.records import FAILED, OK, RESTARTING
from host.routes.registry import RouteRegistry
from host.routes.runtime import LoadError, Runtime, ScriptError
from host.routes.settings import ConfigError, Fallback
from host.routes.verbs import HOOKS, ON_FAILURE, ON_REPLY, ON_REQUEST, Decision


class Damage(Exception):
    """Raised by a test script to play a runtime whose state is now unusable."""


class FakeRuntime(Runtime):
    def __init__(self, spec, env):
        self.spec, self.env, self.closed = spec, env, False

    async def start(self):
        source = self.spec.path.read_text()
        try:
            code = compile(source, str(self.spec.path), "exec")
        except SyntaxError as exc:
            raise LoadError(self.spec.path, exc.lineno, f"syntax error: {exc.msg}") from None
        ns = {"Decision": Decision, "trio": trio, "env": self.env, "Damage": Damage}
        exec(code, ns)
        if self.env.get("fail_start"):
            raise LoadError(self.spec.path, None, "refuses to start")
        self.funcs = {h: ns[h] for h in HOOKS if h in ns}
        self.hooks = frozenset(self.funcs)

    async def handle(self, hook, event):
        try:
            result = self.funcs[hook](event)
            if inspect.isawaitable(result):
                result = await result
            return result
        except Damage as exc:
            raise ScriptError(str(exc), file=str(self.spec.path), line=exc.__traceback__.tb_next.tb_lineno,
                              damaged=True, kind="memory") from None
        except Exception as exc:
            tb = exc.__traceback__
            while tb.tb_next:
                tb = tb.tb_next
            raise ScriptError(str(exc), file=str(self.spec.path), line=tb.tb_lineno) from None

    async def aclose(self):
        self.closed = True


class Factory:
    def __init__(self):
        self.env, self.made = {}, []

    def __call__(self, spec):
        runtime = FakeRuntime(spec, self.env)
        self.made.append(runtime)
        return runtime


REPLY = "def on_request(e):\n    return Decision(verb='reply', code={code}, reason='R')\n"


def event(method="INVITE", **kw):
    e = {"hook": ON_REQUEST, "method": method, "ruri_user": "bob", "ruri_host": "example.com",
         "source_ip": "127.0.0.1", "headers": []}
    e.update(kw)
    return e


@asynccontextmanager
async def running(folder: Path, factory=None, **kw):
    factory = factory or Factory()
    registry = RouteRegistry(folder, runtime_factory=factory, housekeeping_every=0.02, **kw)
    registry.factory = factory
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        yield registry
        nursery.cancel_scope.cancel()


async def decide(registry, hook=ON_REQUEST, **kw):
    return await registry.select(event(**kw)).handle(hook, event(**kw))


async def eventually(predicate, timeout=1.0):
    """Poll a condition; returns the seconds it took."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)
    return trio.current_time() - start


def write(path: Path, text: str):
    """Save as editors do: a temporary file, then a rename over the route."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_load_select_and_decide(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    (tmp_path / "README.md").write_text("not a route")
    async with running(tmp_path) as reg:
        handle = reg.select(event())
        assert handle.route == "main" and handle.generation.number == 1
        d = await handle.handle(ON_REQUEST, event())
        assert (d.verb, d.code) == ("reply", 200)
        stats = reg.statistics()
        assert list(stats) == ["main"]
        s = stats["main"]
        assert (s.state, s.generation, s.events, s.decisions["reply"], s.errors) == (OK, 1, 1, 1, 0)
        assert s.runtime == "python" and s.file == str(tmp_path / "main.py")
        assert reg.status()["routes"]["main"]["state"] == OK


async def test_route_names_are_case_insensitive_stems(tmp_path):
    (tmp_path / "Main.py").write_text(REPLY.format(code=202))
    async with running(tmp_path) as reg:
        assert (await decide(reg)).code == 202


async def test_hook_not_defined_is_no_decision_without_calling(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    async with running(tmp_path) as reg:
        handle = reg.select(event())
        for hook in (ON_FAILURE, ON_REPLY):
            d = await handle.handle(hook, event())
            assert d.verb is None and d.edits == []
        assert reg.statistics()["main"].events == 0


async def test_deadline_gives_fallback_in_time(tmp_path):
    (tmp_path / "main.py").write_text("async def on_request(e):\n    await trio.sleep(10)\n")
    (tmp_path / "routes.toml").write_text(
        "[routes.main]\ndeadline = 0.05\nfallback = { code = 503, retry_after = 7 }\n")
    async with running(tmp_path) as reg:
        start = trio.current_time()
        d = await decide(reg)
        assert trio.current_time() - start < 0.5
        assert (d.verb, d.code, d.headers) == ("reply", 503, [("Retry-After", "7")])
        s = reg.statistics()["main"]
        assert (s.timeouts, s.fallbacks, s.errors, s.restarts) == (1, 1, 0, 0)
        assert s.last_error.kind == "timeout"


async def test_repeated_overruns_count_as_hung_and_restart(tmp_path):
    (tmp_path / "main.py").write_text("async def on_request(e):\n    await trio.sleep(10)\n")
    (tmp_path / "routes.toml").write_text("[routes.main]\ndeadline = 0.02\n")
    async with running(tmp_path) as reg:
        for _ in range(3):
            await decide(reg)
        await eventually(lambda: reg.statistics()["main"].state == OK and len(reg.factory.made) == 2)
        assert reg.statistics()["main"].restarts == 1


async def test_script_error_gives_fallback_and_is_counted(tmp_path, caplog):
    (tmp_path / "main.py").write_text("def on_request(e):\n    x = 1\n    return e['nope']\n")
    async with running(tmp_path) as reg:
        with caplog.at_level(logging.WARNING, logger="babelsip.routes"):
            d = await decide(reg)
        assert (d.verb, d.code, d.reason) == ("reply", 500, "Server Internal Error")
        s = reg.statistics()["main"]
        assert (s.errors, s.fallbacks, s.restarts, s.state) == (1, 1, 0, OK)
        assert (s.last_error.file, s.last_error.line) == (str(tmp_path / "main.py"), 3)
        assert f"{tmp_path / 'main.py'}:3" in caplog.text
        assert len(reg.factory.made) == 1   # not damaged: no restart


async def test_relay_fallback_and_on_reply_failure_forwards(tmp_path):
    (tmp_path / "main.py").write_text("def on_request(e):\n    1/0\non_reply = on_request\n")
    (tmp_path / "routes.toml").write_text('[routes.main]\nfallback = { relay = "sip:backup@192.0.2.9" }\n')
    async with running(tmp_path) as reg:
        d = await decide(reg)
        assert (d.verb, d.targets) == ("relay", ["sip:backup@192.0.2.9"])
        assert (await decide(reg, hook=ON_REPLY)).verb is None


async def test_garbage_from_runtime_is_a_fallback(tmp_path):
    (tmp_path / "main.py").write_text("def on_request(e):\n    return 'relay please'\n")
    async with running(tmp_path) as reg:
        assert (await decide(reg)).code == 500
        assert reg.statistics()["main"].last_error.kind == "protocol"


async def test_damaged_runtime_is_restarted(tmp_path):
    (tmp_path / "main.py").write_text(
        "def on_request(e):\n    if e['method'] == 'BOOM':\n        raise Damage('out of memory')\n"
        "    return Decision(verb='reply', code=200)\n")
    async with running(tmp_path) as reg:
        first = reg.factory.made[0]
        assert (await decide(reg, method="BOOM")).code == 500
        # The next event waits for the restart (within its deadline) and is served.
        assert (await decide(reg)).code == 200
        s = reg.statistics()["main"]
        assert (s.restarts, s.generation, s.state, s.errors) == (1, 1, OK, 1)
        assert len(reg.factory.made) == 2
        await eventually(lambda: first.closed)


async def test_crash_loop_marks_failed_then_retries(tmp_path):
    (tmp_path / "main.py").write_text("def on_request(e):\n    raise Damage('boom')\n")
    (tmp_path / "routes.toml").write_text(
        "[routes.main]\nfallback = 503\nrestart = { intensity = 2, period = 60, retry_every = 0.3 }\n")
    async with running(tmp_path) as reg:
        for _ in range(3):
            assert (await decide(reg)).code == 503
        await eventually(lambda: reg.statistics()["main"].state == FAILED)
        s = reg.statistics()["main"]
        assert s.restarts == 2 and s.generation is None
        made = len(reg.factory.made)
        assert (await decide(reg)).code == 503          # failed: fallback, runtime not called
        assert len(reg.factory.made) == made
        # retried every retry_every seconds, without a file change
        await eventually(lambda: reg.statistics()["main"].state == OK, timeout=2.0)
        assert reg.statistics()["main"].generation == 2


async def test_runtime_dying_at_start_is_a_crash_loop(tmp_path):
    (tmp_path / "main.py").write_text("def on_request(e):\n    raise Damage('died')\n")
    (tmp_path / "routes.toml").write_text(
        "[routes.main]\nrestart = { intensity = 3, period = 60, retry_every = 60 }\n")
    async with running(tmp_path) as reg:
        reg.factory.env["fail_start"] = True
        assert (await decide(reg)).code == 500
        await eventually(lambda: reg.statistics()["main"].state == FAILED)
        s = reg.statistics()["main"]
        assert s.restarts == 3 and "refuses to start" in s.load_error.message
        # the next file change retries at once
        reg.factory.env["fail_start"] = False
        write(tmp_path / "main.py", REPLY.format(code=200))
        await eventually(lambda: reg.statistics()["main"].state == OK)
        assert (await decide(reg)).code == 200


async def test_hot_reload_within_a_second(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    async with running(tmp_path) as reg:
        first = reg.factory.made[0]
        write(tmp_path / "main.py", REPLY.format(code=201))
        took = await eventually(lambda: reg.statistics()["main"].generation == 2)
        assert took < 1.0
        assert (await decide(reg)).code == 201
        await eventually(lambda: first.closed)
        # The first load starts at full speed; a reload, beside a serving generation, unhurried.
        assert [made.unhurried for made in reg.factory.made] == [False, True]


async def test_unchanged_content_makes_no_new_generation(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    (tmp_path / "other.py").write_text(REPLY.format(code=200))
    async with running(tmp_path) as reg:
        write(tmp_path / "main.py", REPLY.format(code=200))
        write(tmp_path / "other.py", REPLY.format(code=204))
        await eventually(lambda: reg.statistics()["other"].generation == 2)
        await trio.sleep(0.05)
        assert reg.statistics()["main"].generation == 1


async def test_broken_file_keeps_the_old_generation(tmp_path, caplog):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    async with running(tmp_path) as reg:
        with caplog.at_level(logging.ERROR, logger="babelsip.routes"):
            write(tmp_path / "main.py", "def on_request(e):\n    return (\n\n")
            await eventually(lambda: reg.statistics()["main"].load_error is not None)
        s = reg.statistics()["main"]
        assert (s.state, s.generation) == (OK, 1)
        assert s.load_error.file == str(tmp_path / "main.py") and s.load_error.line == 2
        assert "keeps serving" in caplog.text
        assert (await decide(reg)).code == 200
        # fixing it clears the error
        write(tmp_path / "main.py", REPLY.format(code=203))
        await eventually(lambda: reg.statistics()["main"].generation == 2)
        assert reg.statistics()["main"].load_error is None


async def test_file_without_on_request_is_refused(tmp_path):
    (tmp_path / "main.py").write_text("def on_reply(e):\n    return Decision()\n")
    async with running(tmp_path) as reg:
        s = reg.statistics()["main"]
        assert s.state == FAILED and "no on_request" in s.load_error.message
        assert (await decide(reg)).code == 500


async def test_deleting_a_route_answers_its_fallback(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    (tmp_path / "routes.toml").write_text("[routes.main]\nfallback = 480\n")
    async with running(tmp_path) as reg:
        runtime = reg.factory.made[0]
        (tmp_path / "main.py").unlink()
        await eventually(lambda: reg.statistics()["main"].state == "absent")
        d = await decide(reg)
        assert (d.code, d.reason) == (480, "Temporarily Unavailable")
        await eventually(lambda: runtime.closed)
        (tmp_path / "main.py").write_text(REPLY.format(code=200))
        await eventually(lambda: reg.statistics()["main"].state == OK)
        assert reg.statistics()["main"].generation == 2


async def test_no_route_at_all_gives_default_fallback(tmp_path):
    async with running(tmp_path, default_fallback=Fallback(code=503, reason="Service Unavailable")) as reg:
        d = await decide(reg)
        assert (d.code, d.reason) == (503, "Service Unavailable")
        assert reg.status()["unrouted"] == {"main": 1}


async def test_routes_toml_reload_and_bad_one_kept_out(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    (tmp_path / "reg.py").write_text(REPLY.format(code=401))
    async with running(tmp_path) as reg:
        assert (await decide(reg, method="REGISTER")).code == 200
        write(tmp_path / "routes.toml", '[[match]]\nroute = "reg"\nmethod = "REGISTER"\n')
        await eventually(lambda: reg.config.file is not None)
        assert (await decide(reg, method="REGISTER")).code == 401
        write(tmp_path / "routes.toml", '[[match]]\nroute = "reg"\nmethod = "REGISTER"\nruri_user = "(("\n')
        await eventually(lambda: reg.config_error is not None)
        assert reg.config_error.line == 4 and "bad regex" in reg.config_error.message
        assert reg.status()["config"]["error"]["line"] == 4
        assert (await decide(reg, method="REGISTER")).code == 401   # the old table still serves
        (tmp_path / "routes.toml").unlink()
        await eventually(lambda: reg.config.file is None)
        assert reg.config_error is None
        assert (await decide(reg, method="REGISTER")).code == 200


async def test_routes_toml_naming_a_route_before_its_file_is_retried(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    async with running(tmp_path) as reg:
        write(tmp_path / "routes.toml", '[[match]]\nroute = "reg"\nmethod = "REGISTER"\n')
        await eventually(lambda: reg.config_error is not None)
        write(tmp_path / "reg.py", REPLY.format(code=401))
        await eventually(lambda: reg.config_error is None and "reg" in reg.statistics())
        await eventually(lambda: reg.statistics()["reg"].state == OK)
        assert (await decide(reg, method="REGISTER")).code == 401


async def test_settings_change_makes_a_new_generation(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    async with running(tmp_path) as reg:
        write(tmp_path / "routes.toml", "[routes.main]\ndeadline = 0.3\n")
        await eventually(lambda: reg.statistics()["main"].generation == 2)
        assert reg.factory.made[-1].spec.deadline == 0.3
        write(tmp_path / "routes.toml", "[routes.main]\ndeadline = 0.3\nfallback = 503\n")
        await eventually(lambda: reg.config.settings("main").fallback.code == 503)
        await trio.sleep(0.05)
        assert reg.statistics()["main"].generation == 2   # fallback applies without a reload


async def test_bad_routes_toml_at_startup_raises(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    (tmp_path / "routes.toml").write_text('default = "nosuch"\n')
    registry = RouteRegistry(tmp_path, runtime_factory=Factory())
    with pytest.raises(ConfigError) as info:
        await registry.run()
    assert info.value.line == 1


async def test_two_files_for_one_route_is_an_error(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    (tmp_path / "Main.pl").write_text("sub on_request {}\n")
    (tmp_path / "other.py").write_text(REPLY.format(code=200))
    async with running(tmp_path) as reg:
        s = reg.statistics()
        assert s["main"].state == FAILED and "two files for route 'main'" in s["main"].load_error.message
        assert "Main.pl" in s["main"].load_error.message and "main.py" in s["main"].load_error.message
        assert s["other"].state == OK                       # other routes unaffected
        assert (await decide(reg)).code == 500
        (tmp_path / "Main.pl").unlink()
        await eventually(lambda: reg.statistics()["main"].state == OK)


async def test_in_flight_event_finishes_on_its_generation(tmp_path):
    script = ("async def on_request(e):\n    if e['method'] == 'SLOW':\n"
              "        await env['release'].wait()\n    return Decision(verb='reply', code={code})\n"
              "def on_failure(e):\n    return Decision(verb='reply', code={code} + 1)\n")
    (tmp_path / "main.py").write_text(script.format(code=200))
    (tmp_path / "routes.toml").write_text("[routes.main]\ndeadline = 5\n")
    async with running(tmp_path) as reg:
        reg.factory.env["release"] = trio.Event()
        old = reg.factory.made[0]
        pinned = reg.select(event())
        results = []

        async def slow():
            handle = reg.select(event("SLOW"))
            results.append(await handle.handle(ON_REQUEST, event("SLOW")))
            handle.release()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await trio.sleep(0.01)
            write(tmp_path / "main.py", script.format(code=300))
            await eventually(lambda: reg.statistics()["main"].generation == 2)
            assert (await decide(reg)).code == 300              # new events: new generation
            assert not old.closed                               # the old one is still busy
            reg.factory.env["release"].set()
        assert results[0].code == 200                           # finished on generation 1
        # a transaction that started on generation 1 continues there
        assert (await pinned.handle(ON_FAILURE, event())).code == 201
        assert not old.closed
        pinned.release()
        await eventually(lambda: old.closed)
        assert reg.status()["retired_generations"] == 0


async def test_dropped_handle_unpins(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    async with running(tmp_path) as reg:
        old = reg.factory.made[0]
        handle = reg.select(event())
        write(tmp_path / "main.py", REPLY.format(code=201))
        await eventually(lambda: reg.statistics()["main"].generation == 2)
        await trio.sleep(0.05)
        assert not old.closed
        del handle
        await eventually(lambda: old.closed)


async def test_closing_the_registry_closes_runtimes(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    (tmp_path / "b.py").write_text(REPLY.format(code=200))
    async with running(tmp_path) as reg:
        made = list(reg.factory.made)
        assert len(made) == 2 and not any(r.closed for r in made)
    assert all(r.closed for r in made)


def test_runtime_of_file(tmp_path):
    exe = tmp_path / "route"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    noshebang = tmp_path / "data"
    noshebang.write_text("x")
    noshebang.chmod(0o755)
    for name in ("a.lua", "b.py", "c.pl", "D.java", ".hidden.lua", "x.lua~", "x.lua.swp", "#x.lua#"):
        (tmp_path / name).write_text("")
    assert runtime_of_file(tmp_path / "a.lua") == "lua54"
    assert runtime_of_file(tmp_path / "D.java") == "java"
    assert runtime_of_file(exe) == "exec"
    assert runtime_of_file(noshebang) is None
    assert runtime_of_file(tmp_path / ".hidden.lua") is None
    assert set(scan_routes(tmp_path)) == {"a", "b", "c", "d", "route"}


class ThreadedRuntime(FakeRuntime):
    """A runtime that runs each event in a thread and answers through
    run_sync_soon, as the Lua runtime's submit does."""

    def submit(self, hook, event, deadline_at, done):
        token = trio.lowlevel.current_trio_token()
        self.deadlines = getattr(self, "deadlines", []) + [deadline_at - time.monotonic()]

        def work():
            try:
                result = self.funcs[hook](event)
            except Damage as exc:
                result = ScriptError(str(exc), file=str(self.spec.path), damaged=True, kind="memory")
            except Exception as exc:
                result = ScriptError(str(exc), file=str(self.spec.path),
                                     kind="timeout" if "late" in str(exc) else "error")
            token.run_sync_soon(done, result)

        threading.Thread(target=work, daemon=True).start()


class ThreadedFactory(Factory):
    def __call__(self, spec):
        runtime = ThreadedRuntime(spec, self.env)
        self.made.append(runtime)
        return runtime


async def submit(handle, hook=ON_REQUEST, **kw):
    """handle.submit(...) -> (accepted, the decision once answered or None)."""
    answers = []
    accepted = handle.submit(hook, event(**kw), answers.append)
    if accepted:
        await eventually(lambda: answers)
    assert len(answers) <= 1
    return accepted, answers[0] if answers else None


async def test_submit_runs_a_threaded_runtime_with_the_same_accounting(tmp_path):
    (tmp_path / "main.py").write_text(
        "def on_request(e):\n    if e['method'] == 'LATE':\n        raise Exception('late')\n"
        "    if e['method'] == 'OOPS':\n        raise Exception('oops')\n"
        "    return Decision(verb='reply', code=200)\n")
    (tmp_path / "routes.toml").write_text("[routes.main]\ndeadline = 0.5\nfallback = 503\n")
    async with running(tmp_path, factory=ThreadedFactory()) as reg:
        handle = reg.select(event())
        assert await submit(handle) == (True, Decision(verb="reply", code=200))
        s = reg.statistics()["main"]
        assert (s.events, s.decisions["reply"], s.inflight) == (1, 1, 0)
        # The route's deadline goes to the runtime, which keeps it.
        assert 0.4 < reg.factory.made[0].deadlines[0] <= 0.5
        # A hook the script lacks: no decision, at once, nothing run.
        answers = []
        assert handle.submit(ON_REPLY, event(), answers.append) and answers == [Decision()]
        # Script errors and late events get the fallback; late ones count as timeouts.
        accepted, d = await submit(handle, method="OOPS")
        assert accepted and (d.verb, d.code) == ("reply", 503)
        accepted, d = await submit(handle, method="LATE")
        assert accepted and d.code == 503
        s = reg.statistics()["main"]
        assert (s.events, s.fallbacks, s.errors, s.timeouts, s.restarts) == (3, 2, 1, 1, 0)


async def test_submit_declines_while_restarting_and_without_a_threaded_runtime(tmp_path):
    (tmp_path / "main.py").write_text(
        "def on_request(e):\n    if e['method'] == 'BOOM':\n        raise Damage('out of memory')\n"
        "    return Decision(verb='reply', code=200)\n")
    async with running(tmp_path, factory=ThreadedFactory()) as reg:
        seen = []

        def done(decision):
            # Damaged: restarting from now on, so the next event must take
            # handle() (which waits for the restart) and submit declines it.
            late = []
            seen.append((decision.code, reg.statistics()["main"].state,
                         reg.select(event()).submit(ON_REQUEST, event(), late.append), late))

        assert reg.select(event()).submit(ON_REQUEST, event(method="BOOM"), done)
        await eventually(lambda: seen)
        assert seen == [(500, RESTARTING, False, [])]
        assert (await decide(reg)).code == 200
        assert await submit(reg.select(event())) == (True, Decision(verb="reply", code=200))
        assert reg.statistics()["main"].restarts == 1
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    async with running(tmp_path) as reg:   # FakeRuntime: no submit
        assert await submit(reg.select(event())) == (False, None)


class BusyRuntime(ThreadedRuntime):
    """A runtime whose submit declines while `busy` (a worker pool at its cap)."""

    busy = True

    def submit(self, hook, event, deadline_at, done):
        if self.busy:
            return False
        return super().submit(hook, event, deadline_at, done)


class BusyFactory(Factory):
    def __call__(self, spec):
        runtime = BusyRuntime(spec, self.env)
        self.made.append(runtime)
        return runtime


async def test_a_declined_submit_counts_nothing_and_leaves_handle_to_the_caller(tmp_path):
    (tmp_path / "main.py").write_text(REPLY.format(code=200))
    async with running(tmp_path, factory=BusyFactory()) as reg:
        answers = []
        assert reg.select(event()).submit(ON_REQUEST, event(), answers.append) is False
        s = reg.statistics()["main"]
        assert (s.events, s.inflight, s.fallbacks, answers) == (0, 0, 0, [])
        assert (await decide(reg)).code == 200   # the caller's way: handle()
        reg.factory.made[0].busy = False
        assert await submit(reg.select(event())) == (True, Decision(verb="reply", code=200, reason="R"))
        s = reg.statistics()["main"]
        assert (s.events, s.inflight, s.decisions["reply"]) == (2, 0, 2)


ROUTES_DIR = Path(__file__).resolve().parents[2] / "host" / "routes"


def test_handles_use_only_the_registrys_public_api():
    """RouteHandle reaches the registry through public methods only, and each
    of them exists (the split of registry.py keeps that seam honest)."""
    import ast

    tree = ast.parse((ROUTES_DIR / "handle.py").read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "_registry":
            used.add(node.attr)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "_registry":
            names = {t.id for t in node.targets if isinstance(t, ast.Name)}
            for sub in ast.walk(tree):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id in names:
                    used.add(sub.attr)
    assert used == {"answer_unrouted", "script_failed", "generation_released"}
    assert all(callable(getattr(RouteRegistry, name)) for name in used)


def test_the_routes_layer_imports_no_runtime():
    """The Runtime interface is the host's (host/routes/runtime.py); adapters
    are named only as strings in runtimes_table.py, imported on first use."""
    import ast

    for path in sorted(ROUTES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            assert not any(m == "runtimes" or m.startswith("runtimes.") for m in modules), (path.name, modules)
