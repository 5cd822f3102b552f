"""The Java SDK (sdk/java): its JSON reader/writer and request API through a
small Java harness, and the runner's protocol loop over real pipes. The SDK,
the harness and the test routes are compiled once for the module."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JAVA_SDK = REPO / "sdk" / "java"
sys.path.insert(0, str(REPO / "sdk" / "conformance"))
import run as conformance  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("javac") is None, reason="no JDK")

SOURCES = {
    # Reads JSON lines on stdin; writes each value re-encoded, or ERR.
    "JsonCheck.java": """
        import babelsip.Json;
        import java.io.*;
        import java.nio.charset.StandardCharsets;
        public class JsonCheck {
            public static void main(String[] a) throws Exception {
                BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
                PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
                for (String line; (line = in.readLine()) != null; ) {
                    try { out.println(Json.toString(Json.parse(line))); }
                    catch (Json.JsonException e) { out.println("ERR"); }
                }
            }
        }""",
    # Prints the verbs a sequence of API calls records, one JSON line per case.
    "ApiCheck.java": """
        import babelsip.*;
        import java.util.*;
        public class ApiCheck {
            static Map<String, Object> ev(String hook) {
                return (Map<String, Object>) Json.parse("{\\"method\\":\\"INVITE\\",\\"ruri_user\\":\\"bob\\","
                    + "\\"cseq\\":7,\\"source_port\\":5062,\\"in_dialog\\":true,\\"vars\\":{\\"k\\":1},"
                    + "\\"headers\\":[[\\"X-M\\",\\"1\\"],[\\"x-m\\",\\"2\\"]],"
                    + "\\"reply\\":{\\"code\\":486,\\"reason\\":\\"Busy\\",\\"headers\\":[[\\"Retry-After\\",\\"5\\"]]}}");
            }
            static void show(Object o) { System.out.println(Json.toString(o)); }
            public static void main(String[] a) {
                Request r = Request.forTest("on_request", ev("on_request"));
                show(List.of(r.method(), r.ruriUser(), r.cseq(), r.sourcePort(), r.inDialog(), r.header("x-M"),
                             r.headers("X-m"), r.headers().size(), r.body(), String.valueOf(r.header("none"))));
                r.recordRoute(); r.setHeader("X-A", "1"); r.addHeader("X-B", "2"); r.removeHeader("X-C");
                r.setRuri("sip:n@h"); r.relay(List.of("sip:a", "sip:b"), "serial", 2.5);
                show(r.decisionMessage());
                Request r2 = Request.forTest("on_request", ev("on_request"));
                Map<String, String> h = new LinkedHashMap<>(); h.put("X-1", "a"); h.put("X-2", "b");
                r2.reply(302, null, h);
                show(r2.verbs());
                Request r3 = Request.forTest("on_request", ev("on_request"));
                r3.reply(200, "OK", "X-A", "1", "X-A", "2");
                show(r3.verbs());
                Request r4 = Request.forTest("on_failure", ev("on_failure"));
                r4.redirect("sip:x", "sip:y");
                show(List.of(r4.verbs(), r4.replyInfo().code(), r4.replyInfo().reason(), r4.replyInfo().header("retry-after")));
                List<String> errs = new ArrayList<>();
                try { r4.drop(); } catch (VerbException e) { errs.add(e.getMessage()); }
                try { r4.relay(); } catch (VerbException e) { errs.add(e.getMessage()); }
                try { r3.reply(200, "OK", "odd"); } catch (VerbException e) { errs.add(e.getMessage()); }
                try { r.store().get("k"); } catch (StoreException e) { errs.add(e.getMessage()); }
                show(errs);
                Request v1 = Request.forTest("on_request", ev("on_request"));
                v1.vars().get("k");
                Request v2 = Request.forTest("on_request", ev("on_request"));
                v2.vars().put("k", 2L);
                Request v3 = Request.forTest("on_request", ev("on_request"));
                v3.vars().put("list", new ArrayList<>(List.of(1)));
                ((List<Object>) v3.vars().get("list")).add(2);
                show(List.of(v1.decisionMessage().containsKey("vars"), v2.decisionMessage().get("vars"),
                             v3.decisionMessage().get("vars")));
            }
        }""",
    "StoreRoute.java": """
        import babelsip.*;
        public class StoreRoute implements Route {
            public int concurrency() { return 2; }
            public void onRequest(Request req) {
                System.out.println("printed by the route");
                Log.info("module log");
                req.log("warning", "event log");
                if (req.ruriUser().equals("store")) {
                    req.reply(200, "v=" + req.store().incr("k", 2, 30));
                    return;
                }
                req.relay("sip:" + req.ruriUser() + "@b");
            }
        }""",
    "ReplyOnly.java": """
        import babelsip.*;
        class ReplyOnly implements Route {   // package-private: the runner can still make one
            public void onRequest(Request req) {}
            public void onReply(Request req, Reply reply) { req.setHeader("X-Seen", "" + reply.code()); }
        }""",
    "NotARoute.java": """
        public class NotARoute { }""",
    "acme/Packaged.java": """
        package acme;
        import babelsip.*;
        public class Packaged implements Route {
            public void onRequest(Request req) { req.reply(200, "packaged"); }
        }""",
    "Broken.java": """
        import babelsip.*;
        public class Broken implements Route {
            static final int N = Integer.parseInt("not a number");
            public void onRequest(Request req) {}
        }""",
}


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("classes")
    files = []
    for name, code in SOURCES.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code))
        files.append(str(path))
    sdk = sorted(str(p) for p in JAVA_SDK.rglob("*.java"))
    result = subprocess.run(["javac", "-J-XX:TieredStopAtLevel=1", "-nowarn", "-encoding", "UTF-8",
                             "-d", str(out), *sdk, *files], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return out


def java(classes, main, *args, stdin=b""):
    out = subprocess.run(["java", "-XX:TieredStopAtLevel=1", "-cp", str(classes), main, *args],
                         input=stdin, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


def test_json_round_trip(classes):
    values = [
        {"a": [1, -2, 3.5, -0.25, 1e300, True, False, None], "b": {}, "c": [], "": ""},
        "plain", "quote \" backslash \\ slash / tab \t newline \n cr \r ctrl \u0001",
        "h\u00e9llo \u2713 \U0001F600", 9007199254740993, -123456789012345678, 12345678901234567890,
        [[[[]]]], {"nested": {"k": [{"x": None}]}},
    ]
    lines = "\n".join(json.dumps(v, ensure_ascii=ea) for v in values for ea in (True, False)) + "\n"
    got = java(classes, "JsonCheck", stdin=lines.encode()).splitlines()
    assert len(got) == 2 * len(values)
    for i, line in enumerate(got):
        want = values[i // 2]
        if want == 12345678901234567890:
            assert json.loads(line) == float(want)   # beyond a long: read as a double
        else:
            assert json.loads(line) == want, line
        assert "\n" not in line


def test_json_rejects_malformed_input(classes):
    bad = ['[1,', '{"a" 1}', 'tru', '"\\x"', '1 2', '{"a":1,}', '"unterminated', '[' * 600 + ']' * 600,
           '{1:2}', '-', '"\u0001"']
    got = java(classes, "JsonCheck", stdin=("\n".join(bad) + "\n").encode()).splitlines()
    assert got == ["ERR"] * len(bad)


def test_request_api(classes):
    fields, decision, map_reply, pair_reply, failure, errors, vars_ = map(
        json.loads, java(classes, "ApiCheck").splitlines())
    assert fields == ["INVITE", "bob", 7, 5062, True, "1", ["1", "2"], 2, "", "null"]
    assert decision == {"type": "decision", "id": 1, "verbs": [
        ["record_route"], ["set_header", "X-A", "1"], ["add_header", "X-B", "2"], ["remove_header", "X-C"],
        ["set_ruri", "sip:n@h"], ["relay", ["sip:a", "sip:b"], {"mode": "serial", "timeout": 2.5}]]}
    assert map_reply == [["reply", 302, None, [["X-1", "a"], ["X-2", "b"]]]]
    assert pair_reply == [["reply", 200, "OK", [["X-A", "1"], ["X-A", "2"]]]]
    assert failure == [[["redirect", ["sip:x", "sip:y"]]], 486, "Busy", "5"]
    assert errors[0] == "drop() is not allowed in on_failure"
    assert errors[1] == "relay(): this event already has a decision (redirect)"
    assert "name, value pairs" in errors[2] and "not connected" in errors[3]
    assert vars_ == [False, {"k": 2}, {"k": 1, "list": [1, 2]}]


# ---------------------------------------------------------------- the runner over pipes

HELLO = {"type": "hello", "protocol": 1, "route": "main", "settings": {"max_line": 1048576}}
EVENT = {"hook": "on_request", "method": "INVITE", "ruri": "sip:bob@example.com", "ruri_user": "bob",
         "headers": [], "body": "", "vars": {}}


def runner(classes, cls):
    return conformance.Worker(["java", "-XX:TieredStopAtLevel=1", "-cp", str(classes), "babelsip.Runner", cls],
                              dict(os.environ))


def raw_next(w):
    line = w.lines.get(timeout=10)
    assert line is not None, "worker closed stdout"
    return json.loads(line)


def ev(i, user, hook="on_request", **kw):
    return {"type": "event", "id": i, "hook": hook, "event": {**EVENT, "ruri_user": user, "hook": hook, **kw}}


def next_of(w, kind):
    while True:
        msg = raw_next(w)
        if msg["type"] == kind:
            return msg


def test_store_wait_does_not_block_other_events_or_pings(classes):
    w = runner(classes, "StoreRoute")
    try:
        w.send(HELLO)
        ready = raw_next(w)
        assert ready["type"] == "ready" and ready["hooks"] == ["on_request"]
        w.send(ev(1, "store"))
        call = next_of(w, "call")
        assert (call["op"], call["args"], call["event"]) == ("kv.incr", ["k", 2, 30], 1)
        # With concurrency 2, event 2 is answered while event 1 waits: out of order.
        w.send(ev(2, "other"))
        assert next_of(w, "decision") == {"type": "decision", "id": 2, "verbs": [["relay", "sip:other@b"]]}
        w.send({"type": "ping", "id": 9})
        assert next_of(w, "pong") == {"type": "pong", "id": 9}
        w.send({"type": "shutdown"})      # event 1 still completes after shutdown
        w.send({"type": "result", "id": call["id"], "value": 12})
        assert next_of(w, "decision") == {"type": "decision", "id": 1, "verbs": [["reply", 200, "v=12"]]}
        w.wait_exit(0)
    finally:
        stderr = w.close()
    assert "printed by the route" in stderr


def test_log_lines(classes):
    w = runner(classes, "StoreRoute")
    try:
        w.send(HELLO)
        raw_next(w)
        w.send(ev(1, "x"))
        msgs = [raw_next(w) for _ in range(3)]
        assert msgs[0] == {"type": "log", "level": "info", "message": "module log"}
        assert msgs[1] == {"type": "log", "level": "warning", "message": "event log", "event": 1}
        assert msgs[2]["type"] == "decision"
    finally:
        w.close()


def test_host_closing_during_store_call_fails_that_event(classes):
    w = runner(classes, "StoreRoute")
    try:
        w.send(HELLO)
        raw_next(w)
        w.send(ev(1, "store"))
        next_of(w, "call")
        w.proc.stdin.close()
        err = next_of(w, "error")
        assert err["id"] == 1 and "host closed the connection" in err["message"]
        w.wait_exit(0)
    finally:
        w.close()


def test_hooks_are_the_overridden_methods_and_class_may_be_package_private(classes):
    w = runner(classes, "ReplyOnly")
    try:
        w.send(HELLO)
        assert sorted(raw_next(w)["hooks"]) == ["on_reply", "on_request"]
        w.send(ev(1, "x", "on_reply", reply={"code": 180, "reason": "Ringing", "headers": []}))
        assert raw_next(w)["verbs"] == [["set_header", "X-Seen", "180"]]
    finally:
        w.close()


def test_packaged_route_class_is_found_by_its_stem(classes):
    w = runner(classes, "packaged")
    try:
        w.send(HELLO)
        assert raw_next(w)["type"] == "ready"
        w.send(ev(1, "x"))
        assert raw_next(w)["verbs"] == [["reply", 200, "packaged"]]
    finally:
        w.close()


@pytest.mark.parametrize("cls, text, line", [
    ("NotARoute", "does not implement babelsip.Route", None),
    ("Missing", "no class Missing", None),
    ("Broken", "NumberFormatException", 4),   # line 1 of each source is blank
])
def test_load_failures_are_fatal(classes, cls, text, line):
    w = runner(classes, cls)
    try:
        msg = raw_next(w)
        assert msg["type"] == "fatal" and text in msg["message"]
        assert msg.get("line") == line and msg["file"] == f"{cls}.java"
        w.wait_exit("nonzero")
    finally:
        w.close()


def test_exception_in_handler_reports_route_line(classes):
    w = runner(classes, "StoreRoute")
    try:
        w.send(HELLO)
        raw_next(w)
        w.send(ev(1, "store"))
        call = next_of(w, "call")
        w.send({"type": "result", "id": call["id"], "error": "not an integer"})
        err = next_of(w, "error")
        assert err["message"] == "StoreException: kv.incr: not an integer"
        assert err["file"] == "StoreRoute.java" and err["line"] == 10
    finally:
        w.close()
