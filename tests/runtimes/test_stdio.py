"""StdioRuntime with real Python workers."""

import os
import signal
import textwrap
import time

import pytest
import trio

from host.storage.memory import MemoryStore
from host.routes.runtime import LoadError, RuntimeSpec, ScriptError
from runtimes.jsonline import StdioRuntime
from runtimes.jsonline.pool import restart_delay

from jsonline_fixtures import FAST, event  # noqa: E402


ROUTE = """
import os, time
from babelsip_sdk import session

def on_request(req):
    user = req.ruri_user
    if user.startswith("sleep"):
        time.sleep(float(user[5:] or "0.05"))
    if user == "hang":
        while True:
            pass
    if user == "garbage":
        session._active._write(b"this is not json\\n")
    if user == "huge":
        req.reply(200, "x" * 5000)
        return
    if user == "exit":
        os._exit(7)
    if user == "count":
        req.reply(200, str(req.store.incr("n")))
        return
    req.relay("sip:" + user + "@backend")
"""


def spec_for(tmp_path, code=ROUTE, name="main", pool=1, options=(), runtime="python", mode=None):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    if mode is not None:
        path.chmod(mode)
    opts = FAST + (("state_dir", str(tmp_path / "state")),) + tuple(options)
    return RuntimeSpec(name, path, runtime, deadline=1.0, pool=pool, options=opts)


async def started(spec, **kw):
    rt = StdioRuntime(spec, **kw)
    await rt.start()
    return rt


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


async def test_decisions_and_store(tmp_path):
    rt = await started(spec_for(tmp_path), store=MemoryStore())
    try:
        assert rt.hooks == {"on_request"}
        d = await rt.handle("on_request", event("carol"))
        assert (d.verb, d.targets) == ("relay", ["sip:carol@backend"])
        assert (await rt.handle("on_request", event("count"))).reason == "1"
        assert (await rt.handle("on_request", event("count"))).reason == "2"
        # a hook the route does not implement: no decision, no worker round trip
        assert (await rt.handle("on_reply", event())).verb is None
    finally:
        await rt.aclose()


async def test_worker_environment_and_cwd(tmp_path):
    code = """
    import os, resource
    def on_request(req):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        req.reply(200, "|".join([os.getcwd(), os.environ.get("LANG", ""), os.environ.get("SECRET", "-"),
                                 str(soft), os.environ.get("ROUTE_OPT", "")]))
    """
    os.environ["SECRET"] = "leak"
    try:
        rt = await started(spec_for(tmp_path, code, options=(("nofile", 64), ("env", {"ROUTE_OPT": "yes"}))))
    finally:
        del os.environ["SECRET"]
    try:
        cwd, lang, secret, nofile, opt = (await rt.handle("on_request", event())).reason.split("|")
        assert cwd == str(tmp_path / "state" / "routes" / "main")
        assert (lang, secret, nofile, opt) == ("C.UTF-8", "-", "64", "yes")
    finally:
        await rt.aclose()


async def test_pipelining_200_concurrent_events_matched_by_id(tmp_path):
    code = """
    import time
    CONCURRENCY = 50
    def on_request(req):
        time.sleep(0.05)
        req.relay("sip:" + req.ruri_user + "@backend")
    """
    rt = await started(spec_for(tmp_path, code))
    results = {}

    async def one(i):
        results[i] = await rt.handle("on_request", event(f"u{i}"))

    try:
        t0 = time.monotonic()
        async with trio.open_nursery() as n:
            for i in range(200):
                n.start_soon(one, i)
        elapsed = time.monotonic() - t0
        assert all(results[i].targets == [f"sip:u{i}@backend"] for i in range(200))
        assert elapsed < 3.0, elapsed   # one at a time would take 10 s
    finally:
        await rt.aclose()


async def test_least_in_flight_spreads_over_pool(tmp_path):
    code = """
    import os, time
    def on_request(req):
        time.sleep(0.02)
        req.reply(200, str(os.getpid()))
    """
    rt = await started(spec_for(tmp_path, code, pool=3))
    pids = []

    async def one():
        pids.append(int((await rt.handle("on_request", event())).reason))

    try:
        async with trio.open_nursery() as n:
            for _ in range(30):
                n.start_soon(one)
        assert set(pids) == set(rt.pids) and len(set(pids)) == 3
    finally:
        await rt.aclose()


async def test_backpressure_caps_in_flight_per_worker(tmp_path):
    rt = await started(spec_for(tmp_path, options=(("max_in_flight", 4),)))
    peak = 0

    async def sample():
        nonlocal peak
        while True:
            peak = max(peak, rt.statistics()["in_flight"])
            await trio.sleep(0.005)

    try:
        async with trio.open_nursery() as n:
            n.start_soon(sample)
            async with trio.open_nursery() as m:
                for _ in range(20):
                    m.start_soon(rt.handle, "on_request", event("sleep0.02"))
            n.cancel_scope.cancel()
        assert peak == 4
    finally:
        await rt.aclose()


async def test_kill_9_fails_in_flight_then_restarts(tmp_path):
    rt = await started(spec_for(tmp_path))
    outcomes = []

    async def one():
        try:
            await rt.handle("on_request", event("sleep0.1"))
            outcomes.append("ok")
        except ScriptError as e:
            outcomes.append(e.kind)

    try:
        old = rt.pids[0]
        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(one)
            await trio.sleep(0.05)
            os.kill(old, signal.SIGKILL)
        assert "crash" in outcomes and set(outcomes) <= {"ok", "crash"}
        with trio.fail_after(5):
            d = await rt.handle("on_request", event("after"))
        assert d.targets == ["sip:after@backend"]
        assert rt.pids[0] != old and rt.statistics()["restarts"] >= 1
        assert rt.statistics()["failures"]["crash"] == 1
    finally:
        await rt.aclose()


async def test_crash_message_names_the_exit_status(tmp_path):
    rt = await started(spec_for(tmp_path))
    try:
        with pytest.raises(ScriptError, match="exited with status 7") as info:
            await rt.handle("on_request", event("exit"))
        assert info.value.kind == "crash"
    finally:
        await rt.aclose()


async def test_garbage_output_is_protocol_error_for_that_worker_only(tmp_path):
    rt = await started(spec_for(tmp_path, pool=2))
    try:
        pids = list(rt.pids)
        with pytest.raises(ScriptError, match="protocol error") as info:
            await rt.handle("on_request", event("garbage"))
        assert info.value.kind == "protocol"
        with trio.fail_after(5):
            while rt.statistics()["ready"] < 2:
                await trio.sleep(0.02)
        assert len(set(rt.pids) & set(pids)) == 1   # the other worker kept running
        assert (await rt.handle("on_request", event())).verb == "relay"
    finally:
        await rt.aclose()


async def test_oversize_line_is_protocol_error(tmp_path):
    rt = await started(spec_for(tmp_path, options=(("max_line", 2000),)))
    try:
        with pytest.raises(ScriptError, match="exceeds|longer") as info:
            await rt.handle("on_request", event("huge"))
        assert info.value.kind == "protocol"
        with trio.fail_after(5):
            assert (await rt.handle("on_request", event())).verb == "relay"
    finally:
        await rt.aclose()


async def test_hang_detected_by_missed_pings_and_killed(tmp_path):
    rt = await started(spec_for(tmp_path))
    try:
        old = rt.pids[0]
        t0 = time.monotonic()
        with pytest.raises(ScriptError, match="missed 2 pings") as info:
            await rt.handle("on_request", event("hang"))
        assert info.value.kind == "timeout"
        assert time.monotonic() - t0 < 1.5
        with trio.fail_after(5):
            assert (await rt.handle("on_request", event())).verb == "relay"
        assert not alive(old)
    finally:
        await rt.aclose()


async def test_deadline_cancellation_then_late_answer_ignored(tmp_path):
    rt = await started(spec_for(tmp_path))
    try:
        with trio.move_on_after(0.05):
            await rt.handle("on_request", event("sleep0.2"))
        assert rt.statistics()["in_flight"] == 0
        await trio.sleep(0.3)   # the late decision arrives and is dropped
        assert (await rt.handle("on_request", event("ok"))).targets == ["sip:ok@backend"]
        assert rt.statistics()["restarts"] == 0
    finally:
        await rt.aclose()


@pytest.mark.parametrize("code, match, line", [
    ("import os\nos._exit(3)\n", "exited with status 3", None),
    ("def on_request(req)\n    pass\n", "SyntaxError", 1),
    ("x = 1\n", "defines none of", None),
    ("import sys\n\nraise RuntimeError('no db')\n", "no db", 3),
])
async def test_worker_failing_at_start_is_load_error(tmp_path, code, match, line):
    spec = spec_for(tmp_path, code, pool=2)
    with pytest.raises(LoadError, match=match) as info:
        await started(spec)
    assert info.value.line == line


async def test_missing_file_and_unknown_runtime(tmp_path):
    spec = spec_for(tmp_path)
    spec.path.unlink()
    with pytest.raises(LoadError, match="not found"):
        await started(spec)
    with pytest.raises(LoadError, match="no stdio runtime"):
        StdioRuntime(spec_for(tmp_path, runtime="cobol"))


async def test_exec_runtime_needs_run_bit(tmp_path):
    with pytest.raises(LoadError, match="not executable"):
        await started(spec_for(tmp_path, "#!/bin/sh\n", runtime="exec", mode=0o644))


async def test_crash_loop_marks_route_failed(tmp_path):
    spec = spec_for(tmp_path)
    rt = await started(spec)
    try:
        spec.path.write_text("import os\nos._exit(1)\n")   # every restart now dies at start
        os.kill(rt.pids[0], signal.SIGKILL)
        with trio.fail_after(8):
            while rt.failure is None:
                await trio.sleep(0.05)
        assert "exited with status 1" in rt.statistics()["failed"]
        with pytest.raises(ScriptError, match="route failed") as info:
            await rt.handle("on_request", event())
        assert info.value.damaged
    finally:
        await rt.aclose()


async def test_aclose_drains_in_flight_then_stops_workers(tmp_path):
    # pings 1 s apart: a handler busy for 0.3 s must not look hung here
    rt = await started(spec_for(tmp_path, pool=2, options=(("ping_interval", 1.0),)))
    pids = list(rt.pids)
    got = []

    async def one():
        got.append(await rt.handle("on_request", event("sleep0.3")))

    async with trio.open_nursery() as n:
        n.start_soon(one)
        n.start_soon(one)
        await trio.sleep(0.05)
        await rt.aclose()
    assert [d.verb for d in got] == ["relay", "relay"]
    assert not any(alive(p) for p in pids)
    with pytest.raises(ScriptError, match="closing"):
        await rt.handle("on_request", event())


def test_restart_delay_backs_off_and_caps():
    assert restart_delay(0) == 0
    assert [restart_delay(n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert restart_delay(50) == 5.0


async def test_workers_outlive_the_thread_that_spawned_them(tmp_path, monkeypatch):
    # trio forks workers from its thread cache; an idle cached thread exits
    # (after 10 s normally, here at once). A worker tied to that thread (e.g.
    # by PR_SET_PDEATHSIG) would die with it.
    import trio._core._thread_cache as thread_cache
    monkeypatch.setattr(thread_cache, "IDLE_TIMEOUT", 0.05)
    rt = await started(spec_for(tmp_path))
    try:
        (pid,) = rt.pids
        await trio.sleep(0.5)  # the spawning thread has exited by now
        assert alive(pid)
        d = await rt.handle("on_request", event("carol"))
        assert d.verb == "relay" and rt.pids == [pid]
    finally:
        await rt.aclose()


@pytest.mark.parametrize("unhurried", [False, True])
async def test_a_reload_starts_its_workers_one_after_another(tmp_path, monkeypatch, unhurried):
    """Runtime.unhurried (set by the registry when a generation serves
    meanwhile): slot 1's worker is spawned once slot 0's is ready; a first
    load starts them all at once."""
    steps = []
    real_open, real_started = StdioRuntime.open_link, StdioRuntime._started

    async def open_link(self, index, nursery):
        steps.append(("spawn", index))
        return await real_open(self, index, nursery)

    def started_(self, index, outcome):
        steps.append(("ready", index))
        return real_started(self, index, outcome)
    monkeypatch.setattr(StdioRuntime, "open_link", open_link)
    monkeypatch.setattr(StdioRuntime, "_started", started_)
    rt = StdioRuntime(spec_for(tmp_path, pool=2))
    rt.unhurried = unhurried
    await rt.start()
    try:
        assert sorted(steps) == [("ready", 0), ("ready", 1), ("spawn", 0), ("spawn", 1)]
        if unhurried:
            assert steps.index(("spawn", 1)) > steps.index(("ready", 0))
        else:
            assert sorted(steps[:2]) == [("spawn", 0), ("spawn", 1)]   # both before either is ready
        assert len({pid for pid in rt.pids if pid}) == 2
    finally:
        await rt.aclose()
