"""The host codec, sans-IO: bytes in, effects out, no processes."""

import orjson
import pytest

from host.routes.verbs import Decision
from runtimes.jsonline.codec import (MAX_LINE, Answered, Call, Failed, Fatal, HostCodec, Log,
                                      Pong, ProtocolError, Ready, decision_from_message)


def line(obj) -> bytes:
    return orjson.dumps(obj) + b"\n"


def ready_codec(max_line=MAX_LINE, hooks=("on_request", "on_failure")) -> HostCodec:
    c = HostCodec(max_line)
    c.hello("main")
    [eff] = c.receive(line({"type": "ready", "protocol": 1, "sdk": "t/1", "hooks": list(hooks)}))
    assert isinstance(eff, Ready)
    return c


def test_hello_carries_version_route_settings():
    c = HostCodec(4096)
    msg = orjson.loads(c.hello("main", {"deadline": 1.0}))
    assert msg == {"type": "hello", "protocol": 1, "route": "main",
                   "settings": {"max_line": 4096, "deadline": 1.0}}
    with pytest.raises(RuntimeError):
        c.hello("again")


def test_ready_hooks_unknown_names_ignored():
    c = HostCodec()
    c.hello("r")
    [eff] = c.receive(line({"type": "ready", "protocol": 1, "hooks": ["on_request", "on_future"]}))
    assert eff == Ready(1, "", frozenset({"on_request"}))
    assert c.hooks == {"on_request"}


@pytest.mark.parametrize("msg, why", [
    ({"type": "ready", "protocol": 2, "hooks": []}, "protocol"),
    ({"type": "ready", "protocol": 1}, "hooks"),
    ({"type": "ready", "protocol": 1, "hooks": "on_request"}, "hooks"),
    ({"type": "decision", "id": 1, "verbs": []}, "before 'ready'"),
    ({"type": "pong", "id": 1}, "before 'ready'"),
])
def test_bad_handshakes(msg, why):
    c = HostCodec()
    c.hello("r")
    with pytest.raises(ProtocolError, match=why):
        c.receive(line(msg))


def test_message_before_hello_is_protocol_error():
    with pytest.raises(ProtocolError, match="before 'hello'"):
        HostCodec().receive(line({"type": "log", "message": "x"}))


def test_second_ready_is_protocol_error():
    c = ready_codec()
    with pytest.raises(ProtocolError, match="second"):
        c.receive(line({"type": "ready", "protocol": 1, "hooks": []}))


def test_fatal_before_ready_with_location():
    c = HostCodec()
    c.hello("r")
    [eff] = c.receive(line({"type": "fatal", "message": "SyntaxError", "file": "r.py", "line": 3}))
    assert eff == Fatal("SyntaxError", "r.py", 3)


def test_event_ids_increase_and_frame_is_one_line():
    c = ready_codec()
    i1, d1 = c.event("on_request", {"ruri": "sip:a"})
    i2, _ = c.event("on_request", {})
    assert (i1, i2) == (1, 2)
    assert d1.endswith(b"\n") and d1.count(b"\n") == 1
    assert orjson.loads(d1) == {"type": "event", "id": 1, "hook": "on_request", "event": {"ruri": "sip:a"}}
    assert c.in_flight == 2


def test_event_before_ready_is_refused():
    c = HostCodec()
    with pytest.raises(RuntimeError):
        c.event("on_request", {})


def test_oversize_event_fails_only_that_event():
    c = ready_codec(max_line=200)
    from host.routes.runtime import ScriptError
    with pytest.raises(ScriptError, match="exceeds"):
        c.event("on_request", {"body": "x" * 500})
    assert c.in_flight == 0
    ident, _ = c.event("on_request", {})
    assert ident == 1  # the refused event consumed no id


def test_out_of_order_answers():
    c = ready_codec()
    ids = [c.event("on_request", {})[0] for _ in range(3)]
    effects = c.receive(line({"type": "decision", "id": ids[2], "verbs": [["drop"]]})
                        + line({"type": "decision", "id": ids[0], "verbs": [["reply", 404, "Nope"]]}))
    assert [type(e) for e in effects] == [Answered, Answered]
    assert effects[0].id == 3 and effects[0].decision.verb == "drop"
    assert effects[1].id == 1 and (effects[1].decision.code, effects[1].decision.reason) == (404, "Nope")
    assert c.in_flight == 1


def test_decision_maps_onto_recorder():
    c = ready_codec()
    ident, _ = c.event("on_request", {})
    [eff] = c.receive(line({"type": "decision", "id": ident, "vars": {"n": 1},
                            "verbs": [["record_route"], ["set_header", "X-A", "1"],
                                      ["relay", ["sip:a", "sip:b"], {"mode": "serial", "timeout": 3}]]}))
    d = eff.decision
    assert d.verb == "relay" and d.targets == ["sip:a", "sip:b"] and d.parallel is False
    assert d.timeout == 3.0 and d.edits == [("record_route",), ("set_header", "X-A", "1")]
    assert d.vars == {"n": 1}


def test_empty_decision_means_no_decision_and_vars_unchanged():
    d = decision_from_message("on_request", {"type": "decision", "id": 1})
    assert d == Decision()
    assert d.vars is None


def test_vars_are_capped_for_every_runtime():
    """VARS_MAX_BYTES (host.routes.verbs): the host keeps vars for the whole
    call, outside any worker's memory limit (issue 7: 8 calls x 25 MB)."""
    from host.routes.verbs import VARS_MAX_BYTES, VerbError
    fits = {"k": "x" * (VARS_MAX_BYTES - 16)}
    assert decision_from_message("on_request", {"vars": fits}).vars == fits
    with pytest.raises(VerbError, match="more than the"):
        decision_from_message("on_request", {"vars": {"k": "x" * VARS_MAX_BYTES}})


@pytest.mark.parametrize("verbs, why", [
    ([["teleport"]], "unknown verb"),
    ([["reply", 200], ["relay"]], "already has a decision"),
    ([["record_route"]], "not allowed in on_failure"),
    ([["reply", "two hundred"]], "integer"),
    ([["set_header", "Via", "x"]], "managed by the SIP core"),
    ("drop", "must be a list"),
    ([[]], "must be"),
    ([[1, 2]], "must be"),
])
def test_bad_decision_content_fails_that_event_only(verbs, why):
    c = ready_codec()
    ident, _ = c.event("on_failure", {})
    other, _ = c.event("on_failure", {})
    [eff] = c.receive(line({"type": "decision", "id": ident, "verbs": verbs}))
    assert isinstance(eff, Failed) and eff.id == ident
    assert why in eff.error.message and eff.error.kind == "error"
    [eff] = c.receive(line({"type": "decision", "id": other, "verbs": [["reply", 500]]}))
    assert isinstance(eff, Answered)


def test_script_error_message():
    c = ready_codec()
    ident, _ = c.event("on_request", {})
    [eff] = c.receive(line({"type": "error", "id": ident, "message": "KeyError: x", "file": "r.py", "line": 7}))
    assert isinstance(eff, Failed)
    assert (eff.error.message, eff.error.file, eff.error.line, eff.error.kind) == ("KeyError: x", "r.py", 7, "error")
    assert c.in_flight == 0


def test_unknown_and_stale_ids():
    c = ready_codec()
    ident, _ = c.event("on_request", {})
    with pytest.raises(ProtocolError, match="never sent"):
        c.receive(line({"type": "decision", "id": 99, "verbs": []}))
    c2 = ready_codec()
    ident, _ = c2.event("on_request", {})
    c2.abandon(ident)   # host deadline passed: the late answer is dropped, not an error
    assert c2.receive(line({"type": "decision", "id": ident, "verbs": []})) == []
    ident, _ = c2.event("on_request", {})
    c2.receive(line({"type": "decision", "id": ident, "verbs": []}))
    assert c2.receive(line({"type": "error", "id": ident, "message": "dup"})) == []


@pytest.mark.parametrize("ident", [None, "1", 1.5, True, 0, -1])
def test_bad_event_id_types(ident):
    c = ready_codec()
    c.event("on_request", {})
    with pytest.raises(ProtocolError):
        c.receive(line({"type": "decision", "id": ident, "verbs": []}))


@pytest.mark.parametrize("data", [
    b"not json\n", b"[1,2]\n", b'"text"\n', b'{"no_type":1}\n', b'{"type":"teleport"}\n',
    b'{"type":7}\n', b'{"type":"decision","id":1\n', b"\xff\xfe\n",
])
def test_malformed_lines(data):
    c = ready_codec()
    c.event("on_request", {})
    with pytest.raises(ProtocolError):
        c.receive(data)


def test_oversize_line_detected_without_newline():
    c = ready_codec(max_line=100)
    c.receive(b'{"type":"log","message":"' + b"x" * 50)   # partial, still under the limit
    with pytest.raises(ProtocolError, match="longer than"):
        c.receive(b"x" * 100)


def test_oversize_line_detected_with_newline():
    c = ready_codec(max_line=100)
    with pytest.raises(ProtocolError, match="exceeds"):
        c.receive(line({"type": "log", "message": "x" * 200}))


def test_line_at_limit_is_accepted():
    c = ready_codec(max_line=100)
    msg = {"type": "log", "message": ""}
    pad = 100 - len(orjson.dumps(msg))
    msg["message"] = "y" * pad
    assert len(orjson.dumps(msg)) == 100
    [eff] = c.receive(line(msg))
    assert eff.message == "y" * pad


def test_framing_across_reads_and_blank_lines_and_crlf():
    c = ready_codec()
    a, _ = c.event("on_request", {})
    b, _ = c.event("on_request", {})
    data = line({"type": "decision", "id": a, "verbs": [["drop"]]}) + b"\n\r\n" + \
        orjson.dumps({"type": "decision", "id": b, "verbs": []}) + b"\r\n"
    effects = []
    for i in range(len(data)):   # one byte at a time
        effects += c.receive(data[i:i + 1])
    assert [e.id for e in effects] == [a, b]


def test_calls_are_validated_and_passed_through():
    c = ready_codec()
    [eff] = c.receive(line({"type": "call", "id": 5, "event": 1, "op": "kv.get", "args": ["k"]}))
    assert eff == Call(5, 1, "kv.get", ["k"])
    [eff] = c.receive(line({"type": "call", "id": "c9", "op": "kv.incr"}))
    assert eff == Call("c9", None, "kv.incr", [])
    for bad in ({"type": "call", "op": "kv.get"}, {"type": "call", "id": 1, "op": 5},
                {"type": "call", "id": 1, "op": "kv.get", "args": "k"}, {"type": "call", "id": [1], "op": "x"}):
        with pytest.raises(ProtocolError):
            ready_codec().receive(line(bad))


def test_results_encode():
    c = ready_codec()
    assert orjson.loads(c.result(3, {"a": 1})) == {"type": "result", "id": 3, "value": {"a": 1}}
    assert orjson.loads(c.call_error("x", "nope")) == {"type": "result", "id": "x", "error": "nope"}


def test_ping_pong_accounting():
    c = ready_codec()
    assert orjson.loads(c.ping()) == {"type": "ping", "id": 1}
    c.ping()
    assert c.unanswered_pings == 2
    [eff] = c.receive(line({"type": "pong", "id": 1}))
    assert eff == Pong(1) and c.unanswered_pings == 1
    c.receive(line({"type": "pong", "id": 2}))
    assert c.unanswered_pings == 0
    with pytest.raises(ProtocolError, match="never sent"):
        c.receive(line({"type": "pong", "id": 3}))


def test_log_levels_normalised():
    c = ready_codec()
    effects = c.receive(line({"type": "log", "level": "error", "message": "m", "event": 2})
                        + line({"type": "log", "level": "loud", "message": {"x": 1}}))
    assert effects == [Log("error", "m", 2), Log("info", '{"x":1}', None)]


def test_take_in_flight_and_shutdown():
    c = ready_codec()
    ids = [c.event("on_request", {})[0] for _ in range(3)]
    assert sorted(c.take_in_flight()) == ids and c.in_flight == 0
    assert orjson.loads(c.shutdown()) == {"type": "shutdown"}
    # answers to forgotten events after a crash are stale, not errors
    assert c.receive(line({"type": "decision", "id": ids[0], "verbs": []})) == []
