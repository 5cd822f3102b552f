"""StdioRuntime with real Perl and Java workers (sdk/perl, sdk/java).

Java workers are compiled by the host's language table (languages.py); the
SDK classes are cached under the test's state directory, so the first Java
test pays for javac once per module (a module-scoped state dir).
"""

import os
import shutil
import signal
import time

import pytest
import trio

from host.storage.memory import MemoryStore
from host.routes.runtime import LoadError, RuntimeSpec, ScriptError
from runtimes.jsonline import StdioRuntime

pytestmark = pytest.mark.skipif(shutil.which("perl") is None or shutil.which("javac") is None,
                                reason="perl and a JDK are needed")

from jsonline_fixtures import FAST, event  # noqa: E402


PERL = """
use strict;
use warnings;
use POSIX ();

sub on_request {
    my ($req) = @_;
    my $user = $req->ruri_user;
    if ($user eq 'boom') { die "no route for boom\\n" }
    if ($user eq 'exit') { POSIX::_exit(7) }
    if ($user eq 'count') { $req->reply(200, $req->store->incr('n')); return }
    if ($user eq 'pid') { $req->reply(200, "$$"); return }
    $req->relay("sip:$user\\@backend");
}
1;
"""

JAVA = """
import babelsip.Request;
import babelsip.Route;

public class Main implements Route {
    @Override
    public void onRequest(Request req) {
        String user = req.ruriUser();
        switch (user) {
            case "boom": throw new IllegalArgumentException("no route for boom");
            case "exit": Runtime.getRuntime().halt(7); return;
            case "count": req.reply(200, String.valueOf(req.store().incr("n"))); return;
            case "pid": req.reply(200, String.valueOf(ProcessHandle.current().pid())); return;
            case "hang": while (true) { Thread.onSpinWait(); }
            default: req.relay("sip:" + user + "@backend");
        }
    }
}
"""

SOURCES = {"perl": ("main.pl", PERL), "java": ("Main.java", JAVA)}


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return tmp_path_factory.mktemp("state")


def spec_for(tmp_path, state, runtime, code=None, name=None, pool=1, options=()):
    fname, default = SOURCES[runtime]
    if code is None:
        # One shared file for the default route: javac runs once for all tests.
        tmp_path = state.parent / "shared-routes"
        tmp_path.mkdir(exist_ok=True)
    path = tmp_path / (name or fname)
    path.write_text(code if code is not None else default)
    opts = FAST + (("state_dir", str(state)),) + tuple(options)
    return RuntimeSpec(path.stem.lower(), path, runtime, deadline=2.0, pool=pool, options=opts)


async def started(spec, **kw):
    rt = StdioRuntime(spec, **kw)
    await rt.start()
    return rt


LANGS = pytest.mark.parametrize("runtime", ["perl", "java"])


@LANGS
async def test_decisions_and_store(tmp_path, state, runtime):
    rt = await started(spec_for(tmp_path, state, runtime), store=MemoryStore())
    try:
        assert rt.hooks == {"on_request"}
        d = await rt.handle("on_request", event("carol"))
        assert (d.verb, d.targets) == ("relay", ["sip:carol@backend"])
        assert [(await rt.handle("on_request", event("count"))).reason for _ in range(3)] == ["1", "2", "3"]
    finally:
        await rt.aclose()


@LANGS
async def test_pipelining_100_concurrent_events_matched_by_id(tmp_path, state, runtime):
    rt = await started(spec_for(tmp_path, state, runtime), store=MemoryStore())
    results = {}

    async def one(i):
        user = "count" if i % 10 == 0 else f"u{i}"
        results[i] = await rt.handle("on_request", event(user))

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                for i in range(100):
                    n.start_soon(one, i)
        assert all(results[i].targets == [f"sip:u{i}@backend"] for i in range(100) if i % 10)
        # the ten store calls interleaved with the other events, each got its own result
        assert sorted(int(results[i].reason) for i in range(0, 100, 10)) == list(range(1, 11))
    finally:
        await rt.aclose()


@LANGS
async def test_script_error_fails_that_event_only(tmp_path, state, runtime):
    rt = await started(spec_for(tmp_path, state, runtime))
    outcomes = {}

    async def one(user):
        try:
            outcomes[user] = (await rt.handle("on_request", event(user))).targets
        except ScriptError as e:
            outcomes[user] = e

    try:
        pid = rt.pids[0]
        async with trio.open_nursery() as n:
            for user in ("a", "boom", "b"):
                n.start_soon(one, user)
        err = outcomes["boom"]
        assert isinstance(err, ScriptError) and err.kind == "error"
        assert "no route for boom" in err.message
        assert outcomes["a"] == ["sip:a@backend"] and outcomes["b"] == ["sip:b@backend"]
        assert rt.pids[0] == pid and rt.statistics()["restarts"] == 0
    finally:
        await rt.aclose()


@LANGS
async def test_crash_is_script_error_then_restart(tmp_path, state, runtime):
    rt = await started(spec_for(tmp_path, state, runtime))
    try:
        old = rt.pids[0]
        with pytest.raises(ScriptError, match="exited with status 7") as info:
            await rt.handle("on_request", event("exit"))
        assert info.value.kind == "crash"
        with trio.fail_after(10):
            d = await rt.handle("on_request", event("pid"))
        assert int(d.reason) == rt.pids[0] != old
        assert rt.statistics()["failures"]["crash"] == 1
    finally:
        await rt.aclose()


@LANGS
async def test_kill_9_restarts_worker(tmp_path, state, runtime):
    rt = await started(spec_for(tmp_path, state, runtime))
    try:
        old = rt.pids[0]
        os.kill(old, signal.SIGKILL)
        with trio.fail_after(10):
            while rt.pids[0] == old or rt.statistics()["ready"] < 1:
                await trio.sleep(0.02)
            d = await rt.handle("on_request", event("after"))
        assert d.targets == ["sip:after@backend"]
    finally:
        await rt.aclose()


async def test_java_stuck_handler_stops_pongs_and_is_restarted(tmp_path, state):
    # Pings are answered by the reader thread; a handler busy past stuck_after
    # makes it withhold them, so the host's missed-ping rule applies to Java too.
    rt = await started(spec_for(tmp_path, state, "java", options=(("stuck_after", 0.3),)))
    try:
        old = rt.pids[0]
        t0 = time.monotonic()
        with pytest.raises(ScriptError, match="missed 2 pings") as info:
            await rt.handle("on_request", event("hang"))
        assert info.value.kind == "timeout" and time.monotonic() - t0 < 1.9
        with trio.fail_after(10):
            assert (await rt.handle("on_request", event("x"))).targets == ["sip:x@backend"]
        assert rt.pids[0] != old
    finally:
        await rt.aclose()


async def test_java_compile_error_is_load_error_with_line(tmp_path, state):
    code = "import babelsip.*;\npublic class Main implements Route {\n" \
           "    public void onRequest(Request req) { req.nonsense(); }\n}\n"
    with pytest.raises(LoadError, match="cannot find symbol") as info:
        await started(spec_for(tmp_path, state, "java", code))
    assert info.value.line == 3 and info.value.file.endswith("Main.java")


async def test_java_constructor_failure_is_load_error(tmp_path, state):
    code = ("import babelsip.*;\npublic class Main implements Route {\n"
            "    public Main() { throw new IllegalStateException(\"no database\"); }\n"
            "    public void onRequest(Request req) {}\n}\n")
    with pytest.raises(LoadError, match="no database") as info:
        await started(spec_for(tmp_path, state, "java", code))
    assert info.value.line == 3


async def test_java_route_name_is_the_file_stem(tmp_path, state):
    code = JAVA.replace("class Main", "class LcrRoute")
    spec = spec_for(tmp_path, state, "java", code, name="LcrRoute.java")
    assert spec.route == "lcrroute"
    rt = await started(spec)
    try:
        assert (await rt.handle("on_request", event("z"))).targets == ["sip:z@backend"]
    finally:
        await rt.aclose()


async def test_perl_load_error_names_the_line(tmp_path, state):
    code = "use strict;\n\nmy $x = ;\nsub on_request {}\n1;\n"
    with pytest.raises(LoadError, match="syntax error") as info:
        await started(spec_for(tmp_path, state, "perl", code))
    assert info.value.line == 3


async def test_perl_route_without_hooks_is_load_error(tmp_path, state):
    with pytest.raises(LoadError, match="defines none of"):
        await started(spec_for(tmp_path, state, "perl", "my $x = 1;\n1;\n"))


async def test_perl_handler_can_keep_pipelining_with_pp_json(tmp_path, state):
    """The JSON::PP fallback path behaves like the XS one through the host."""
    spec = spec_for(tmp_path, state, "perl", options=(("env", {"BABELSIP_PERL_JSON": "PP"}),))
    rt = await started(spec, store=MemoryStore())
    try:
        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(rt.handle, "on_request", event(f"u{i}"))
        assert (await rt.handle("on_request", event("count"))).reason == "1"
    finally:
        await rt.aclose()


# ---------------------------------------------------------------- examples/specialized

EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples" / "specialized" / "routes"


async def test_specialized_example_routes_each_request_to_its_runtime(tmp_path, state, monkeypatch):
    """The example folder through the real registry: Lua, Perl, Java and
    Python routes side by side, chosen by routes.toml."""
    from host.routes.registry import RouteRegistry

    monkeypatch.setenv("BABELSIP_STATE_DIR", str(state))
    registry = RouteRegistry(EXAMPLE, housekeeping_every=0.05)

    async def decide(method="INVITE", user="bob", host="example.com", **kw):
        ev = event(user, method=method, ruri=f"sip:{user}@{host}", ruri_host=host, **kw)
        handle = registry.select(ev)
        try:
            return handle.route, await handle.handle("on_request", ev)
        finally:
            handle.release()

    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            await nursery.start(registry.run)
        try:
            status = registry.status()["routes"]
            assert {n: (r["state"], r["runtime"]) for n, r in status.items()} == {
                "registrar": ("ok", "lua54"), "acme": ("ok", "perl"),
                "globex": ("ok", "java"), "main": ("ok", "python")}

            name, d = await decide("REGISTER", headers=[["Contact", "<sip:bob@10.0.0.9:5062>"],
                                                        ["Expires", "600"]])
            assert (name, d.verb, d.code) == ("registrar", "reply", 200)
            assert ("Contact", "<sip:bob@10.0.0.9:5062>;expires=600") in d.headers

            name, d = await decide(user="+33 1 23 45 67 89", host="acme.example")
            assert (name, d.verb, d.targets) == ("acme", "relay", ["sip:+33123456789@127.0.0.1:5071"])
            assert ("set_header", "X-Tenant", "acme") in d.edits and d.vars == {"number": "+33123456789"}
            name, d = await decide(user="4021", host="pbx.acme.example")
            assert d.targets == ["sip:ext-4021@127.0.0.1:5070"]   # from the route's env option
            name, d = await decide(user="112", host="acme.example")
            assert d.targets == ["sip:112@127.0.0.1:5072"]
            name, d = await decide(user="12", host="acme.example")
            assert (d.verb, d.code) == ("reply", 484)

            name, d = await decide(user="sales", host="globex.example",
                                   headers=[["X-Globex-Clock", "10:15"]])
            assert (name, d.verb, d.parallel, d.timeout) == ("globex", "relay", False, 10)
            assert d.targets == [f"sip:desk{i}@127.0.0.1:5080" for i in (1, 2, 3)]
            name, d = await decide(user="sales", host="globex.example",
                                   headers=[["X-Globex-Clock", "21:00"]])
            assert (d.verb, d.contacts) == ("redirect", ["sip:after-hours@127.0.0.1:5081"])

            name, d = await decide(user="carol", host="example.com")
            assert (name, d.verb, d.targets) == ("main", "relay", [])
            name, d = await decide(user="carol", host="elsewhere.example")
            assert (name, d.verb, d.code) == ("main", "reply", 404)
            # no event took a fallback: every answer above came from the scripts
            assert all(r["fallbacks"] == 0 and r["errors"] == 0
                       for r in registry.status()["routes"].values())
        finally:
            nursery.cancel_scope.cancel()
