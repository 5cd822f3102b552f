"""The TLS and WebSocket transports on 127.0.0.1 with real sockets: TLS
both ways with certificate checks and mutual TLS, handshake failures and
timeouts counted; the WebSocket upgrade (sip subprotocol required, 400/426
otherwise), one SIP message per frame, ping/pong, close, CRLF keep-alive,
oversized messages. Certificates are made by the test (tls_certs.py)."""

import ssl

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, Pong,
                            RejectConnection, Request, TextMessage)

from host.shell.tcp import TcpTransport
from host.shell.tls import TlsConfigError, TlsLayer, TlsSettings, client_context, server_context
from host.shell.websocket import WsSession
from tests.shell.tls_certs import make_pki, openssl_available

pytestmark = pytest.mark.skipif(not openssl_available(), reason="the openssl command is not installed")

MSG = (b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bK1\r\n"
       b"From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
       b"Content-Length: 4\r\n\r\nbody")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("other-pki"), name="someone else's CA")


def server_settings(pki, **kw):
    return TlsSettings(cert=str(pki.cert), key=str(pki.key), ca=str(pki.ca), **kw)


async def wait_for(predicate, timeout=5.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# ------------------------------------------------------------------- TLS
def test_settings_errors_name_the_flag(pki, tmp_path):
    with pytest.raises(TlsConfigError, match="needs --tls-cert FILE and --tls-key FILE"):
        server_context(TlsSettings())
    with pytest.raises(TlsConfigError, match="no such file"):
        server_context(TlsSettings(cert=str(tmp_path / "missing.pem"), key=str(pki.key)))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsConfigError, match="--tls-ca .*not a PEM CA bundle"):
        client_context(TlsSettings(ca=str(garbage)))
    with pytest.raises(TlsConfigError, match="--tls-require-client-cert needs --tls-ca"):
        server_context(TlsSettings(cert=str(pki.cert), key=str(pki.key), require_client_cert=True))
    with pytest.raises(TlsConfigError, match="both --tls-client-cert and --tls-client-key"):
        client_context(TlsSettings(client_cert=str(pki.client_cert)))


async def test_tls_both_ways_with_verified_certificates(pki):
    got_a, got_b, errors = [], [], []
    a = TcpTransport("127.0.0.1", 0, lambda d, s: got_a.append((d, s)), layer=TlsLayer(server_settings(pki)))
    b = TcpTransport("127.0.0.1", 0, lambda d, s: got_b.append((d, s)), errors.append,
                     layer=TlsLayer(server_settings(pki)))
    assert a.name == "tls"
    async with trio.open_nursery() as nursery:
        _, port_a = await nursery.start(a.serve)
        await nursery.start(b.serve)
        # b connects to a as a client (its next hop), checking a's certificate for 127.0.0.1.
        assert b.send(MSG, "127.0.0.1", port_a)
        await wait_for(lambda: got_a)
        data, remote = got_a[0]
        assert data == MSG
        # a answers on the same TLS connection.
        assert a.has_connection(*remote)
        assert a.send(MSG.replace(b"body", b"back"), *remote)
        await wait_for(lambda: got_b)
        assert got_b[0] == (MSG.replace(b"body", b"back"), ("127.0.0.1", port_a))
        assert b.connections() == [("127.0.0.1", port_a)]
        assert errors == [] and a.handshake_failures == b.handshake_failures == 0
        nursery.cancel_scope.cancel()


async def test_tls_next_hop_with_an_untrusted_certificate_fails_and_is_reported(pki, other_pki):
    errors = []
    a = TcpTransport("127.0.0.1", 0, lambda d, s: None, layer=TlsLayer(server_settings(pki)))
    # b trusts another CA only.
    b = TcpTransport("127.0.0.1", 0, lambda d, s: None, errors.append,
                     layer=TlsLayer(server_settings(other_pki)))
    async with trio.open_nursery() as nursery:
        _, port_a = await nursery.start(a.serve)
        await nursery.start(b.serve)
        assert b.send(MSG, "127.0.0.1", port_a)
        await wait_for(lambda: errors)
        assert errors == [("127.0.0.1", port_a)]
        assert b.handshake_failures == 1
        assert b.statistics()["handshake_failures"] == 1
        nursery.cancel_scope.cancel()


async def test_tls_verify_none_accepts_any_certificate(pki, other_pki):
    got = []
    a = TcpTransport("127.0.0.1", 0, lambda d, s: got.append(d), layer=TlsLayer(server_settings(pki)))
    b = TcpTransport("127.0.0.1", 0, lambda d, s: None,
                     layer=TlsLayer(server_settings(other_pki, verify="none")))
    async with trio.open_nursery() as nursery:
        _, port_a = await nursery.start(a.serve)
        await nursery.start(b.serve)
        assert b.send(MSG, "127.0.0.1", port_a)
        await wait_for(lambda: got)
        nursery.cancel_scope.cancel()


async def test_mutual_tls_requires_a_client_certificate_signed_by_the_ca(pki):
    got = []
    a = TcpTransport("127.0.0.1", 0, lambda d, s: got.append(d),
                     layer=TlsLayer(server_settings(pki, require_client_cert=True)))
    without = TcpTransport("127.0.0.1", 0, lambda d, s: None, layer=TlsLayer(server_settings(pki)))
    with_cert = TcpTransport("127.0.0.1", 0, lambda d, s: None, layer=TlsLayer(server_settings(
        pki, client_cert=str(pki.client_cert), client_key=str(pki.client_key))))
    async with trio.open_nursery() as nursery:
        _, port_a = await nursery.start(a.serve)
        await nursery.start(without.serve)
        await nursery.start(with_cert.serve)
        assert without.send(MSG, "127.0.0.1", port_a)
        await wait_for(lambda: a.handshake_failures == 1)
        assert got == []
        assert with_cert.send(MSG, "127.0.0.1", port_a)
        await wait_for(lambda: got)
        assert got == [MSG]
        nursery.cancel_scope.cancel()


async def test_tls_handshake_timeout_closes_a_silent_client(pki):
    a = TcpTransport("127.0.0.1", 0, lambda d, s: None,
                     layer=TlsLayer(server_settings(pki, handshake_timeout=0.3)))
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(a.serve)
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        with trio.fail_after(5):
            try:
                assert await silent.receive_some(100) == b""
            except trio.BrokenResourceError:
                pass   # closed with a reset
        assert 0.25 < trio.current_time() - start < 3
        await wait_for(lambda: a.handshake_failures == 1 and not a.connections())
        await silent.aclose()
        nursery.cancel_scope.cancel()


async def test_plain_tcp_client_on_a_tls_port_is_a_handshake_failure(pki):
    a = TcpTransport("127.0.0.1", 0, lambda d, s: None, layer=TlsLayer(server_settings(pki)))
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(a.serve)
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        await plain.send_all(MSG)
        await wait_for(lambda: a.handshake_failures == 1)
        await plain.aclose()
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------- WebSocket
class WsClient:
    """A browser-like WebSocket client over a trio stream, with wsproto."""

    def __init__(self, stream):
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events = []

    async def send(self, event):
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self, timeout=5.0):
        with trio.fail_after(timeout):
            while not self.events:
                data = await self.stream.receive_some(65536)
                self.ws.receive_data(data or None)
                self.events.extend(self.ws.events())
                if not data and not self.events:
                    return None
        return self.events.pop(0)

    async def upgrade(self, subprotocols=("sip",)):
        await self.send(Request(host="127.0.0.1", target="/", subprotocols=list(subprotocols)))
        return await self.next_event()


async def ws_transport(nursery, got, **kw):
    t = TcpTransport("127.0.0.1", 0, lambda d, s: got.append((d, s)), websocket=True, **kw)
    _, port = await nursery.start(t.serve)
    return t, port


async def test_websocket_upgrade_then_one_sip_message_per_frame_both_ways():
    got = []
    async with trio.open_nursery() as nursery:
        t, port = await ws_transport(nursery, got)
        assert t.name == "ws"
        client = WsClient(await trio.open_tcp_stream("127.0.0.1", port))
        accepted = await client.upgrade(("foo", "sip"))
        assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "sip"
        # Two messages, the second split across two frames.
        await client.send(TextMessage(MSG.decode()))
        await client.send(TextMessage(MSG.decode()[:20], message_finished=False))
        await client.send(TextMessage(MSG.decode()[20:]))
        await wait_for(lambda: len(got) == 2)
        assert [d for d, _ in got] == [MSG, MSG]
        remote = got[0][1]
        # What we send is one text message per SIP message.
        assert t.send(MSG, *remote) and t.send(MSG.replace(b"body", b"2nd!"), *remote)
        first, second = await client.next_event(), await client.next_event()
        assert isinstance(first, TextMessage) and first.data == MSG.decode() and first.message_finished
        assert second.data.endswith("2nd!")
        # A body that is not UTF-8 goes as a binary message.
        assert t.send(MSG.replace(b"body", b"\xff\xfe\x00\x01"), *remote)
        binary = await client.next_event()
        assert isinstance(binary, BytesMessage) and binary.data.endswith(b"\xff\xfe\x00\x01")
        # Pings are answered; a CRLF keep-alive message gets a CRLF message back.
        await client.send(Ping(b"hi"))
        pong = await client.next_event()
        assert isinstance(pong, Pong) and pong.payload == b"hi"
        await client.send(TextMessage("\r\n\r\n"))
        crlf = await client.next_event()
        assert isinstance(crlf, TextMessage) and crlf.data == "\r\n"
        assert len(got) == 2 and t.pings == 1 and t.pongs == 1   # the keep-alive is not a message
        # Close is answered, and the connection ends.
        await client.send(CloseConnection(1000, "bye"))
        closed = await client.next_event()
        assert isinstance(closed, CloseConnection) and closed.code == 1000
        await wait_for(lambda: not t.connections())
        nursery.cancel_scope.cancel()


async def test_websocket_upgrade_without_sip_subprotocol_is_refused_with_400():
    got = []
    async with trio.open_nursery() as nursery:
        t, port = await ws_transport(nursery, got)
        client = WsClient(await trio.open_tcp_stream("127.0.0.1", port))
        refused = await client.upgrade(("chat",))
        assert isinstance(refused, RejectConnection) and refused.status_code == 400
        await wait_for(lambda: not t.connections() and t.upgrades_refused == 1)
        nursery.cancel_scope.cancel()


async def test_plain_http_and_raw_sip_on_a_websocket_port_get_426():
    async with trio.open_nursery() as nursery:
        t, port = await ws_transport(nursery, [])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in answer:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 426 ")
        assert b"upgrade: websocket" in answer.lower()
        await stream.aclose()
        # SIP straight onto the port is not HTTP: the connection is closed.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(MSG)
        with trio.fail_after(5):
            rest = b""
            while True:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                rest += chunk
        assert not rest.startswith(b"HTTP/1.1 101")
        await wait_for(lambda: not t.connections())
        assert t.internal_errors == 0 and t.callback_errors == 0   # bad input, not a bug
        nursery.cancel_scope.cancel()


async def test_a_websocket_send_to_an_address_nobody_listens_on_is_reported():
    # The connection (a browser's gone, or a next hop down) cannot be
    # opened: the error callback tells the core, and nothing stays behind.
    errors = []
    async with trio.open_nursery() as nursery:
        t = TcpTransport("127.0.0.1", 0, lambda d, s: None, errors.append, websocket=True)
        await nursery.start(t.serve)
        closed = trio.socket.socket()
        await closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        assert t.send(MSG, "127.0.0.1", port)
        await wait_for(lambda: errors)
        assert errors == [("127.0.0.1", port)] and t.connections() == []
        nursery.cancel_scope.cancel()


async def test_silent_websocket_client_is_closed_after_the_header_timeout():
    async with trio.open_nursery() as nursery:
        t, port = await ws_transport(nursery, [], header_timeout=0.3)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await wait_for(lambda: t.header_timeouts == 1 and not t.connections())
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_wss_over_tls(pki):
    got = []
    async with trio.open_nursery() as nursery:
        t, port = await ws_transport(nursery, got, layer=TlsLayer(server_settings(pki), https_compatible=True))
        assert t.name == "wss"
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        tls = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname="127.0.0.1")
        client = WsClient(tls)
        assert isinstance(await client.upgrade(), AcceptConnection)
        await client.send(TextMessage(MSG.decode()))
        await wait_for(lambda: got)
        assert t.send(MSG, *got[0][1])
        assert (await client.next_event()).data == MSG.decode()
        nursery.cancel_scope.cancel()


def test_ws_session_refuses_a_message_over_the_limit():
    client = WSConnection(ConnectionType.CLIENT)
    session = WsSession(max_message=100)
    feed = session.feed_untrusted(client.send(Request(host="h", target="/", subprotocols=["sip"])))
    client.receive_data(feed.send)
    assert isinstance(next(client.events()), AcceptConnection) and session.open
    feed = session.feed_untrusted(client.send(TextMessage("x" * 60, message_finished=False)))
    assert not feed.ended and session.partial()
    feed = session.feed_untrusted(client.send(TextMessage("x" * 60)))
    assert feed.ended and feed.messages == []
    client.receive_data(feed.send)
    closed = next(client.events())
    assert isinstance(closed, CloseConnection) and closed.code == 1009


def test_ws_session_frames_nothing_before_the_upgrade_or_after_a_close():
    client = WSConnection(ConnectionType.CLIENT)
    session = WsSession(max_message=1000)
    assert session.frame(MSG) is None
    client.receive_data(session.feed_untrusted(client.send(Request(host="h", target="/", subprotocols=["sip"]))).send)
    assert session.frame(MSG) is not None
    feed = session.feed_untrusted(client.send(CloseConnection(1000)))
    assert feed.ended and session.frame(MSG) is None
