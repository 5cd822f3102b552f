"""The Python SDK in-process: Request API, session loop over fake pipes."""

import os
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sdk" / "python"))

from babelsip_sdk import Request, StoreError, VerbError, wire
from babelsip_sdk.loader import RouteLoadError, load_route
from babelsip_sdk.session import Session

EVENT = {"hook": "on_request", "method": "INVITE", "ruri": "sip:bob@example.com", "ruri_user": "bob",
         "ruri_host": "example.com", "call_id": "c1", "cseq": 7, "from_uri": "sip:a@x", "from_tag": "ft",
         "to_uri": "sip:bob@example.com", "to_tag": "", "source_ip": "10.0.0.1", "source_port": 5062,
         "transport": "tcp", "in_dialog": True, "body": "v=0",
         "headers": [["Via", "SIP/2.0/UDP h"], ["X-Multi", "1"], ["x-multi", "2"]], "vars": {"k": 1}}


def test_request_fields_and_headers():
    r = Request("on_request", EVENT)
    assert (r.method, r.ruri, r.ruri_user, r.ruri_host, r.call_id, r.cseq) == \
        ("INVITE", "sip:bob@example.com", "bob", "example.com", "c1", 7)
    assert (r.from_uri, r.from_tag, r.to_uri, r.to_tag) == ("sip:a@x", "ft", "sip:bob@example.com", "")
    assert (r.source_ip, r.source_port, r.transport, r.in_dialog, r.body) == ("10.0.0.1", 5062, "tcp", True, "v=0")
    assert r.header("X-MULTI") == "1" and r.headers("x-multi") == ["1", "2"]
    assert r.header("Missing") is None and r.headers("missing") == []
    assert r.headers()[0] == ("Via", "SIP/2.0/UDP h")
    assert r.vars == {"k": 1}


def test_verbs_record_calls_in_order():
    r = Request("on_request", EVENT)
    r.record_route()
    r.set_header("X-A", "1")
    r.relay(["sip:a", "sip:b"], mode="serial", timeout=2)
    msg = r.decision_message(4)
    assert msg == {"type": "decision", "id": 4, "verbs": [
        ["record_route"], ["set_header", "X-A", "1"], ["relay", ["sip:a", "sip:b"], {"mode": "serial", "timeout": 2}]]}
    r2 = Request("on_request", EVENT)
    r2.reply(302, headers={"Contact": "<sip:x>"})
    assert r2.decision_message(1)["verbs"] == [["reply", 302, None, [["Contact", "<sip:x>"]]]]


def test_vars_sent_only_when_changed():
    r = Request("on_request", EVENT)
    r.relay()
    assert "vars" not in r.decision_message(1)
    r.vars["k"] = 2
    assert r.decision_message(1)["vars"] == {"k": 2}
    assert EVENT["vars"] == {"k": 1}   # the event itself is not mutated


def test_local_verb_checks():
    r = Request("on_request", EVENT)
    r.reply(200)
    with pytest.raises(VerbError, match="already has a decision"):
        r.drop()
    f = Request("on_failure", {**EVENT, "reply": {"code": 486, "reason": "Busy", "headers": []}})
    with pytest.raises(VerbError, match="not allowed in on_failure"):
        f.record_route()
    assert f.reply_info.code == 486 and f.reply_info.reason == "Busy"


def test_loader_errors(tmp_path):
    p = tmp_path / "r.py"
    p.write_text("def on_request(req):\n    pass\nCONCURRENCY = 0\n")
    with pytest.raises(RouteLoadError, match="CONCURRENCY"):
        load_route(str(p))
    p.write_text("\n\nimport nonexistent_module_xyz\n")
    with pytest.raises(RouteLoadError) as info:
        load_route(str(p))
    assert info.value.line == 3 and "ModuleNotFoundError" in info.value.message
    p.write_text("def on_reply(req, reply):\n    pass\nCONCURRENCY = 4\n")
    route = load_route(str(p))
    assert set(route.hooks) == {"on_reply"} and route.concurrency == 4


class Pipe:
    """Fake host: feeds lines to the session and answers calls."""

    def __init__(self, lines, answer=None):
        self.rfd, self.wfd = os.pipe()
        self.out = []
        self.answer = answer
        for line in lines:
            os.write(self.wfd, wire.dumps(line))

    def read(self, n):
        return os.read(self.rfd, n)

    def write(self, data):
        for raw in data.splitlines():
            msg = wire.loads(raw)
            self.out.append(msg)
            if msg["type"] == "call" and self.answer:
                os.write(self.wfd, wire.dumps({"type": "result", "id": msg["id"], **self.answer(msg)}))
            if len([m for m in self.out if m["type"] in ("decision", "error")]) == self.expected:
                os.close(self.wfd)

    expected = 0


def run_session(tmp_path, code, events, answer=None):
    p = tmp_path / "route.py"
    p.write_text(code)
    hello = {"type": "hello", "protocol": 1, "route": "r", "settings": {}}
    pipe = Pipe([hello] + [{"type": "event", "id": i + 1, "hook": "on_request", "event": e}
                           for i, e in enumerate(events)], answer)
    pipe.expected = len(events)
    session = Session(load_route(str(p)), pipe.read, pipe.write)
    t = threading.Thread(target=session.run)
    t.start()
    t.join(10)
    assert not t.is_alive()
    return pipe.out


def test_session_store_calls_inline_and_threaded(tmp_path):
    store = {}

    def answer(msg):
        op, args = msg["op"], msg["args"]
        if op == "kv.incr":
            store[args[0]] = store.get(args[0], 0) + args[1]
            return {"value": store[args[0]]}
        if op == "kv.get" and args[0] == "bad":
            return {"error": "refused"}
        return {"value": None}

    code = ("def on_request(req):\n"
            "    if req.ruri_user == 'bad':\n"
            "        req.store.get('bad')\n"
            "    req.reply(200, str(req.store.incr('n', 1)))\n")
    for extra in ("", "CONCURRENCY = 4\n"):
        store.clear()
        out = run_session(tmp_path, code + extra,
                          [EVENT] * 5 + [{**EVENT, "ruri_user": "bad"}], answer)
        assert out[0]["type"] == "ready"
        replies = sorted(int(m["verbs"][0][2]) for m in out if m["type"] == "decision")
        assert replies == [1, 2, 3, 4, 5]
        [err] = [m for m in out if m["type"] == "error"]
        assert err["id"] == 6 and "refused" in err["message"] and "StoreError" in err["message"]


def test_session_error_carries_route_line(tmp_path):
    out = run_session(tmp_path, "def on_request(req):\n    x = {}\n    x['missing']\n", [EVENT])
    [err] = [m for m in out if m["type"] == "error"]
    assert err["line"] == 3 and err["file"].endswith("route.py") and "KeyError" in err["message"]


def test_unserialisable_vars_become_an_error(tmp_path):
    out = run_session(tmp_path, "def on_request(req):\n    req.vars['x'] = object()\n", [EVENT])
    [err] = [m for m in out if m["type"] == "error"]
    assert "JSON" in err["message"]


def test_store_error_type_is_exported(tmp_path):
    """A route imports StoreError from the package itself and catches the
    refused store call with it: the name is exported and is the type raised."""
    import babelsip_sdk
    assert "StoreError" in babelsip_sdk.__all__ and babelsip_sdk.StoreError is StoreError
    code = ("from babelsip_sdk import StoreError\n"
            "def on_request(req):\n"
            "    try:\n"
            "        req.store.get('k')\n"
            "    except StoreError as e:\n"
            "        return req.reply(503, 'caught: ' + str(e))\n"
            "    req.reply(200)\n")
    out = run_session(tmp_path, code, [EVENT], lambda msg: {"error": "refused"})
    [decision] = [m for m in out if m["type"] == "decision"]
    assert decision["verbs"] == [["reply", 503, "caught: kv.get: refused"]]
