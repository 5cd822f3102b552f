"""WebSocket connections we open to a ws:/wss: next hop (RFC 7118 §4.1),
on 127.0.0.1 with real sockets: the upgrade asks for `sip` only, messages
sent before its answer are held and then framed in order, the connection is
reused both ways, wss verifies the next hop's certificate as TLS does, and
every way the upgrade can fail (refused, no sip chosen, not HTTP at all, no
answer) is counted and reported to the sender. Then the sans-IO client
session alone."""

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from host.shell.tcp import TcpTransport
from host.shell.tls import TlsLayer, TlsSettings
from host.shell.websocket import WsSession
from tests.shell.tls_certs import make_pki, openssl_available

MSG = (b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS 127.0.0.1:1;branch=z9hG4bK1\r\n"
       b"From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
       b"Content-Length: 4\r\n\r\nbody")

needs_openssl = pytest.mark.skipif(not openssl_available(), reason="the openssl command is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


async def wait_for(predicate, timeout=5.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def numbered(i: int) -> bytes:
    return MSG.replace(b"body", f"b{i:03d}".encode())


async def test_a_ws_next_hop_is_connected_to_upgraded_and_reused_both_ways():
    got_a, got_b, errors = [], [], []
    a = TcpTransport("127.0.0.1", 0, lambda d, s: got_a.append((d, s)), errors.append, websocket=True)
    b = TcpTransport("127.0.0.1", 0, lambda d, s: got_b.append((d, s)), errors.append, websocket=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        _, port_b = await nursery.start(b.serve)
        # Five messages before the upgrade can have been answered: held, then
        # sent in order once it is, one WebSocket message each.
        for i in range(5):
            assert a.send(numbered(i), "127.0.0.1", port_b)
        await wait_for(lambda: len(got_b) == 5)
        assert [d for d, _ in got_b] == [numbered(i) for i in range(5)]
        # b answers on the connection it accepted; a hears it from b's address.
        remote = got_b[0][1]
        assert b.send(MSG.replace(b"body", b"back"), *remote)
        await wait_for(lambda: got_a)
        assert got_a == [(MSG.replace(b"body", b"back"), ("127.0.0.1", port_b))]
        # Reused: a later send takes the same connection.
        assert a.send(numbered(5), "127.0.0.1", port_b)
        await wait_for(lambda: len(got_b) == 6)
        assert {s for _, s in got_b} == {remote}
        assert a.connections() == [("127.0.0.1", port_b)] and b.accepted == 1
        assert errors == [] and a.handshake_failures == 0 and b.upgrades_refused == 0
        nursery.cancel_scope.cancel()


async def serve_once(answer, seen: list):
    """A TCP server for one connection: records the request it reads, and
    writes `answer(request)` (None: says nothing) then closes."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]

    async def handle(stream):
        request = b""
        with trio.move_on_after(3):
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                request += chunk
        seen.append(request)
        reply = answer(request)
        if reply is None:
            await trio.sleep_forever()
        await stream.send_all(reply)
        await trio.sleep(0.5)
        await stream.aclose()
    return listener, handle


def accept_choosing_nothing(request: bytes) -> bytes:
    """A WebSocket server's 101 that chooses no subprotocol."""
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(request)
    assert [type(e) for e in server.events()] == [Request]
    return server.send(AcceptConnection(subprotocol=None))


ANSWERS = {
    "refused": lambda request: b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
    "no-sip": accept_choosing_nothing,
    "not-http": lambda request: b"SIP/2.0 200 OK\r\n\r\n",
    "silent": lambda request: None,
}


@pytest.mark.parametrize("case", sorted(ANSWERS))
async def test_a_failed_upgrade_is_counted_and_reported_to_the_sender(case):
    errors, seen = [], []
    a = TcpTransport("127.0.0.1", 0, lambda d, s: None, errors.append, websocket=True, header_timeout=0.5)
    listener, handle = await serve_once(ANSWERS[case], seen)
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        nursery.start_soon(trio.serve_listeners, handle, [listener])
        assert a.send(MSG, "127.0.0.1", port)
        await wait_for(lambda: errors)
        assert errors == [("127.0.0.1", port)]
        # The upgrade asked for sip, for the host addressed, and no SIP went out.
        request = seen[0].lower()
        assert request.startswith(b"get / http/1.1\r\n")
        assert b"\r\nsec-websocket-protocol: sip\r\n" in request
        assert f"\r\nhost: 127.0.0.1:{port}\r\n".encode() in request
        assert b"OPTIONS" not in seen[0]
        if case == "silent":
            assert a.header_timeouts == 1
        else:
            assert a.handshake_failures == 1
        await wait_for(lambda: not a.connections())
        assert a.internal_errors == 0
        nursery.cancel_scope.cancel()


@needs_openssl
async def test_wss_next_hop_verified_against_the_ca(pki, tmp_path):
    got, errors = [], []
    settings = TlsSettings(cert=str(pki.cert), key=str(pki.key), ca=str(pki.ca))
    b = TcpTransport("127.0.0.1", 0, lambda d, s: got.append(d), websocket=True,
                     layer=TlsLayer(settings, https_compatible=True))
    a = TcpTransport("127.0.0.1", 0, lambda d, s: None, errors.append, websocket=True,
                     layer=TlsLayer(settings, https_compatible=True))
    other = make_pki(tmp_path / "other", name="not trusted")
    untrusting = TcpTransport("127.0.0.1", 0, lambda d, s: None, errors.append, websocket=True,
                              layer=TlsLayer(TlsSettings(cert=str(pki.cert), key=str(pki.key),
                                                         ca=str(other.ca)), https_compatible=True))
    assert a.name == "wss"
    async with trio.open_nursery() as nursery:
        _, port_b = await nursery.start(b.serve)
        await nursery.start(a.serve)
        await nursery.start(untrusting.serve)
        assert a.send(MSG, "127.0.0.1", port_b)
        await wait_for(lambda: got)
        assert got == [MSG] and errors == []
        # A next hop whose certificate does not verify: no upgrade, no SIP.
        assert untrusting.send(MSG, "127.0.0.1", port_b)
        await wait_for(lambda: errors)
        assert errors == [("127.0.0.1", port_b)] and untrusting.handshake_failures == 1
        assert got == [MSG]
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------- sans-IO
def server_answering(request: bytes):
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(request)
    (event,) = list(server.events())
    assert isinstance(event, Request) and event.subprotocols == ["sip"] and event.host == "proxy.test:8080"
    return server


def test_client_session_holds_messages_until_the_upgrade_is_answered():
    session, request = WsSession.connect(1000, "proxy.test:8080", max_pending=2 * len(MSG))
    server = server_answering(request)
    assert session.frame(MSG) == b"" and session.frame(MSG) == b"" and session.holding()
    assert session.frame(MSG) is None        # over max_pending: refused, not held
    feed = session.feed_untrusted(server.send(AcceptConnection(subprotocol="sip")))
    assert session.open and not session.holding() and feed.failure is None and feed.traffic
    server.receive_data(feed.send)
    assert [e.data for e in server.events()] == [MSG.decode(), MSG.decode()]
    # Open: framed at once, masked as a client's frames must be (the server parses them).
    server.receive_data(session.frame(MSG))
    (event,) = list(server.events())
    assert isinstance(event, TextMessage) and event.data == MSG.decode()
    # And the server's messages come out as SIP messages.
    feed = session.feed_untrusted(server.send(TextMessage(MSG.decode())))
    assert feed.messages == [MSG]


def test_client_session_fails_when_the_server_chooses_no_sip():
    session, request = WsSession.connect(1000, "proxy.test:8080", max_pending=1000)
    server = server_answering(request)
    session.frame(MSG)
    feed = session.feed_untrusted(server.send(AcceptConnection()))
    assert feed.ended and "no sip subprotocol" in feed.failure
    assert session.holding() and session.frame(MSG) is None
