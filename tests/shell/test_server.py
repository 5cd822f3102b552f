"""The server shell end to end on loopback, with routes as Python objects."""

import socket
import threading
import time

import pytest
import trio

import orjson

from host.routes.event import ScriptEvent, request_event, script_event
from host.routes.verbs import Decision, Recorder
from host.shell.server import RouteCall, Server, ServerConfig
from host.sip.actions import Consult
from host.sip.decision import ON_REPLY
from host.sip.parser import parse_message


class FakeRoute:
    """Stands in for a registry handle: records event order, answers relay."""

    def __init__(self, log, delays):
        self.log, self.delays = log, delays
        self.generation = None

    def submit(self, hook, event, done):
        return False  # no runtime thread: the server must take the async path

    async def handle(self, hook, event):
        # The async path may end in a line-JSON runtime: it gets every field.
        assert type(event) is dict and "headers" in event and "body" in event
        await trio.sleep(self.delays.get(event["method"], 0))
        self.log.append(event["method"])
        rec = Recorder(hook)
        rec.reply(200, "OK") if event["method"] != "ACK" else rec.relay("sip:127.0.0.1:9")
        return rec.decision


class ThreadedRoute(FakeRoute):
    """A route whose runtime has its own thread: each submitted event runs in
    a thread of its own after its delay and is answered through
    run_sync_soon, so events submitted together finish in any order; only
    the server's per-call queue keeps them in order. `refuse`: methods whose
    submit is declined (the async path takes them)."""

    def __init__(self, log, delays, refuse=()):
        super().__init__(log, delays)
        self.refuse = refuse

    def submit(self, hook, event, done):
        if event["method"] in self.refuse:
            return False
        token = trio.lowlevel.current_trio_token()

        def work():
            time.sleep(self.delays.get(event["method"], 0))
            token.run_sync_soon(self._answer, event, hook, done)

        threading.Thread(target=work, daemon=True).start()
        return True

    def _answer(self, event, hook, done):
        self.log.append(event["method"])
        rec = Recorder(hook)
        rec.reply(200, "OK") if event["method"] != "ACK" else rec.relay("sip:127.0.0.1:9")
        done(rec.decision)


class FakeRegistry:
    def __init__(self, route):
        self.route = route

    def select(self, event):
        return self.route


def request(method, port, cseq, to_tag="t1"):
    return (f"{method} sip:bob@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bK-{method}{cseq};rport\r\n"
            f"From: <sip:a@x>;tag=f1\r\nTo: <sip:bob@x>;tag={to_tag}\r\nCall-ID: order-1\r\n"
            f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("make_route", [
    lambda log, delays: FakeRoute(log, delays),                      # a task per event
    lambda log, delays: ThreadedRoute(log, delays),                  # submitted, answered by callback
    lambda log, delays: ThreadedRoute(log, delays, refuse={"ACK"}),  # submit, then task, then submit
], ids=["async", "submit", "mixed"])
async def test_route_events_of_one_call_keep_their_order(make_route):
    log = []
    server = Server(ServerConfig(listen=[("udp", "127.0.0.1", 0)]))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        port = bound[0][2]
        # The first event is slow: the second must still wait for it.
        server.registry = FakeRegistry(make_route(log, {"INFO": 0.2}))
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        await sock.sendto(request("INFO", port, 1), ("127.0.0.1", port))
        await sock.sendto(request("ACK", port, 2), ("127.0.0.1", port))
        await sock.sendto(request("BYE", port, 3), ("127.0.0.1", port))
        with trio.fail_after(5):
            while len(log) < 3:
                await trio.sleep(0.01)
        assert log == ["INFO", "ACK", "BYE"]
        assert server._consulting == {}
        nursery.cancel_scope.cancel()


async def test_a_bug_met_by_one_message_costs_that_message_not_the_server(monkeypatch):
    server = Server(ServerConfig(listen=[("udp", "127.0.0.1", 0)], relay_to="sip:127.0.0.1:9"))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        port = bound[0][2]
        real = server.core.receive

        def flaky(data, transport, src):
            if b"boom" in data:
                raise RuntimeError("a bug")
            return real(data, transport, src)

        monkeypatch.setattr(server.core, "receive", flaky)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        await sock.sendto(b"boom", ("127.0.0.1", port))
        options = request("OPTIONS", port, 1).replace(b"sip:bob@", b"sip:").replace(b";tag=t1", b"")
        await sock.sendto(options, ("127.0.0.1", port))
        with trio.fail_after(5):
            reply, _ = await sock.recvfrom(65535)
        assert reply.startswith(b"SIP/2.0 200")
        assert server.statistics()["internal_errors"] == 1
        nursery.cancel_scope.cancel()


async def test_tcp_response_goes_back_on_the_connection_not_to_the_via_port():
    server = Server(ServerConfig(listen=[("tcp", "127.0.0.1", 0)], relay_to="sip:127.0.0.1:9"))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        port = bound[0][2]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        # The Via names a port nobody listens on and asks for no rport: only
        # the open connection can carry the answer (RFC 3261 §18.2.2).
        options = (f"OPTIONS sip:127.0.0.1:{port};transport=tcp SIP/2.0\r\n"
                   f"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK-tcp1\r\n"
                   f"From: <sip:a@x>;tag=f1\r\nTo: <sip:p@x>\r\nCall-ID: tcp-1\r\n"
                   f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        await stream.send_all(options)
        with trio.fail_after(5):
            reply = await stream.receive_some(65535)
        assert reply.startswith(b"SIP/2.0 200")
        nursery.cancel_scope.cancel()


async def test_drain_waits_for_calls_in_progress_and_refuses_new_ones():
    sink = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a callee that never answers
    await sink.bind(("127.0.0.1", 0))
    server = Server(ServerConfig(listen=[("udp", "127.0.0.1", 0)],
                                 relay_to=f"sip:127.0.0.1:{sink.getsockname()[1]}"))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        port = bound[0][2]
        caller = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await caller.bind(("127.0.0.1", 0))
        invite = request("INVITE", port, 1, to_tag="").replace(b";tag=\r\n", b"\r\n")
        await caller.sendto(invite, ("127.0.0.1", port))
        with trio.fail_after(5):
            trying, _ = await caller.recvfrom(65535)
        assert trying.startswith(b"SIP/2.0 100")
        start = trio.current_time()
        async with trio.open_nursery() as inner:
            async def drain():
                assert await server.drain(0.5) == 1  # the call never got its answer
            inner.start_soon(drain)
            await trio.sleep(0.1)
            second = invite.replace(b"z9hG4bK-INVITE1", b"z9hG4bK-INVITE2").replace(b"order-1", b"order-2")
            await caller.sendto(second, ("127.0.0.1", port))
            with trio.fail_after(5):
                refused, _ = await caller.recvfrom(65535)
            assert refused.startswith(b"SIP/2.0 503") and b"Retry-After: 5" in refused
        assert trio.current_time() - start >= 0.5
        nursery.cancel_scope.cancel()


def test_the_script_event_builds_headers_and_body_only_when_read():
    req = parse_message(request("INVITE", 5090, 1, to_tag=None).replace(b";tag=None", b""))
    reply = parse_message(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bK-x\r\n"
                          b"From: <sip:a@x>;tag=f1\r\nTo: <sip:bob@x>\r\nCall-ID: order-1\r\nCSeq: 1 INVITE\r\n"
                          b"X-Hop: 1\r\nContent-Length: 0\r\n\r\n")
    consult = Consult(7, ON_REPLY, req, reply, ("udp", "127.0.0.1", 1), False, {"n": 1}, None)
    call = RouteCall(consult)
    event = call.event
    assert call.call_id == "order-1" and type(event) is ScriptEvent
    assert event["method"] == "INVITE" and event["vars"] == {"n": 1} and event["reply"]["code"] == 180
    assert "headers" not in event and "body" not in event and "headers" not in event["reply"]
    # Built on first read, by [] (Lua) or get (route table, runtimes), then kept.
    assert event.get("headers")[0] == ["Via", "SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bK-INVITE1;rport"]
    assert "headers" in event and event["body"] == ""
    assert event["reply"].get("headers") == [
        ["Via", "SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bK-x"], ["From", "<sip:a@x>;tag=f1"],
        ["To", "<sip:bob@x>"], ["Call-ID", "order-1"], ["CSeq", "1 INVITE"], ["X-Hop", "1"],
        ["Content-Length", "0"]]
    assert event.get("nonexistent", "d") == "d" and event["reply"].get("body") is None
    # plain(): every field, plain dicts all the way down, as a line-JSON runtime writes it.
    plain = script_event(consult).plain()
    assert type(plain) is dict and type(plain["reply"]) is dict
    assert plain == request_event(ON_REPLY, req, ("udp", "127.0.0.1", 1), in_dialog=False,
                                  vars={"n": 1}, reply=reply)
    assert set(plain) == {"hook", "method", "ruri", "ruri_user", "ruri_host", "ruri_local", "call_id", "cseq",
                          "from_uri", "from_tag", "to_uri", "to_tag", "source_ip", "source_port",
                          "transport", "in_dialog", "headers", "body", "vars", "reply"}
    assert set(plain["reply"]) == {"code", "reason", "headers"}
    assert orjson.loads(orjson.dumps(plain)) == plain
