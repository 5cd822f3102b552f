"""SIP over WebSocket (RFC 7118), both sides, as bytes in and bytes out.

`WsSession` wraps one wsproto connection: as a server it answers the HTTP
upgrade; as a client (a connection we open to a ws:/wss: next hop) it asks
for one. Either way it cuts the stream into SIP messages (one per text or
binary WebSocket message, RFC 7118 §5.1) and turns each SIP message we send
into one frame. It does no I/O, so the transport (host/shell/tcp.py, with
`websocket=True`) and tests drive it alike.

The upgrade (RFC 7118 §4, RFC 6455 §4.2):
- a GET that is not an upgrade at all gets 426 Upgrade Required naming
  `websocket`, so a browser pointed at the port learns what it speaks;
- an upgrade without `sip` among its Sec-WebSocket-Protocol values gets 400:
  we speak no other subprotocol, and accepting without one would leave the
  client to guess;
- whatever else wsproto refuses (no key, wrong version: 426 with
  Sec-WebSocket-Version 13) gets the answer wsproto proposes.
A refused upgrade ends the connection once the answer is written.

The upgrade we ask for (client side, RFC 7118 §4.1, RFC 6455 §4.1): a GET
offering only `sip`, masked frames after it (wsproto). The server must
choose `sip`: an answer that chooses nothing (or anything else), refuses,
or is not a valid handshake at all fails the connection, and the SIP
messages held for it are reported as not sent (`WsFeed.failure`). Messages
sent before the answer are held, up to `max_pending` bytes, and framed the
moment it comes.

After the upgrade: pings are answered with pongs (wsproto builds them),
a close is answered and ends the connection, a message larger than
`max_message` (the SIP parser's own cap) is refused with close code 1009,
and a frame wsproto cannot parse ends it with the code wsproto gives. A
message of CR/LF only is the SIP keep-alive some WebSocket clients send
(RFC 5626 §3.5.1 carried in a frame): the transport answers it, the core
never sees it.
"""

from __future__ import annotations

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, Pong,
                            RejectConnection, RejectData, Request, TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

SUBPROTOCOL = "sip"
MESSAGE_TOO_BIG = 1009   # RFC 6455 §7.4.1


class WsFeed:
    """What one `WsSession.feed` produced."""

    __slots__ = ("messages", "send", "traffic", "ended", "pings", "refused", "failure")

    def __init__(self):
        self.messages: list[bytes] = []   # complete SIP messages (CRLF keep-alives left out)
        self.send = b""                    # bytes to write back (upgrade answer, pongs, close)
        self.traffic = False               # anything but stray bytes: keeps the connection
        self.ended = False                 # write `send`, then close the connection
        self.pings = 0                     # CRLF keep-alive messages (answered by the caller)
        self.refused: int | None = None    # HTTP status of an upgrade we refused
        self.failure: str | None = None    # why the upgrade we asked for failed (client)


class WsSession:
    __slots__ = ("_ws", "max_message", "_parts", "_size", "open", "target", "client",
                 "max_pending", "_pending", "_pending_size")

    def __init__(self, max_message: int):
        self._ws = WSConnection(ConnectionType.SERVER)
        self.max_message = max_message
        self._parts: list[bytes] = []
        self._size = 0
        self.open = False           # upgraded: SIP messages may flow
        self.target: str | None = None
        self.client = False
        self.max_pending = 0
        self._pending: list[bytes] = []   # client: messages sent before the upgrade's answer
        self._pending_size = 0

    @classmethod
    def connect(cls, max_message: int, host: str, *, max_pending: int,
                target: str = "/") -> tuple["WsSession", bytes]:
        """A client session for a connection we open, and the upgrade
        request to write first; `host` is what the Host header names (the
        next hop's name and port)."""
        session = cls(max_message)
        session._ws = WSConnection(ConnectionType.CLIENT)
        session.client, session.max_pending, session.target = True, max_pending, target
        request = session._ws.send(Request(host=host, target=target, subprotocols=[SUBPROTOCOL]))
        return session, request

    def holding(self) -> bool:
        """Messages are held for an upgrade that was never answered."""
        return bool(self._pending)

    def partial(self) -> bool:
        """A message is being received (some of its frames are in)."""
        return bool(self._parts) or not self.open

    def frame(self, message: bytes) -> bytes | None:
        """One SIP message as one WebSocket message: text when it is UTF-8
        (what browsers' clients expect), else binary (a binary body). None
        once the connection is closing: nothing may be sent after a close.
        A client's message before the upgrade is answered is held (b"":
        nothing to write yet), or refused (None) past `max_pending`."""
        if self.client and not self.open and self._ws.state is ConnectionState.CONNECTING:
            if self._pending_size + len(message) > self.max_pending:
                return None
            self._pending.append(message)
            self._pending_size += len(message)
            return b""
        if not self.open or self._ws.state is not ConnectionState.OPEN:
            return None
        return self._frame_open(message)

    def _frame_open(self, message: bytes) -> bytes:
        try:
            event = TextMessage(message.decode("utf-8"))
        except UnicodeDecodeError:
            event = BytesMessage(message)
        return self._ws.send(event)

    def close(self, code: int = 1000, reason: str = "") -> bytes:
        if self._ws.state is not ConnectionState.OPEN:
            return b""
        return self._ws.send(CloseConnection(code, reason))

    def feed_untrusted(self, data: bytes) -> WsFeed:
        """Bytes from the peer in; what they mean out. Never raises on bad
        input: a bad upgrade or frame becomes an answer and `ended`."""
        out = WsFeed()
        if not data:
            out.ended = True
            return out
        sending = []
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._handle(event, out, sending)
                if out.ended:
                    break
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            if self.client and not self.open:
                out.failure = f"not a WebSocket upgrade answer: {exc}"
            elif isinstance(hint, RejectConnection):
                self._refuse(out, sending, *_refusal(str(exc), hint))
            elif hint is not None:
                sending.append(self._safe_send(hint))
            out.ended = True
        out.send = b"".join(sending)
        return out

    def _handle(self, event, out: WsFeed, sending: list) -> None:
        cls = type(event)
        if cls is TextMessage or cls is BytesMessage:
            out.traffic = True
            data = event.data.encode("utf-8") if cls is TextMessage else bytes(event.data)
            self._size += len(data)
            if self._size > self.max_message:
                sending.append(self.close(MESSAGE_TOO_BIG, f"SIP messages are at most {self.max_message} bytes"))
                out.ended = True
                return
            self._parts.append(data)
            if event.message_finished:
                message = b"".join(self._parts)
                self._parts, self._size = [], 0
                if message.strip(b"\r\n"):
                    out.messages.append(message)
                elif b"\r\n\r\n" in message:
                    out.pings += 1
        elif cls is Request:
            self.target = event.target
            if SUBPROTOCOL not in [p.lower() for p in event.subprotocols]:
                self._refuse(out, sending, 400, "Sec-WebSocket-Protocol must offer sip (RFC 7118)", [])
                out.ended = True
                return
            sending.append(self._ws.send(AcceptConnection(subprotocol=SUBPROTOCOL)))
            self.open = True
            out.traffic = True
        elif cls is AcceptConnection:   # client: the upgrade we asked for
            if event.subprotocol != SUBPROTOCOL:
                # RFC 7118 §4.1: without sip chosen, no SIP may flow.
                sending.append(self.close(1002, "the sip subprotocol was not chosen"))
                out.failure = "the answer to the upgrade chose no sip subprotocol"
                out.ended = True
                return
            self.open = True
            out.traffic = True
            sending.extend(self._frame_open(message) for message in self._pending)
            self._pending, self._pending_size = [], 0
        elif cls is RejectConnection:   # client: the upgrade was refused
            out.failure = f"upgrade refused with {event.status_code}"
            out.ended = True
        elif cls is Ping:
            out.traffic = True
            sending.append(self._safe_send(event.response()))
        elif cls is Pong:
            out.traffic = True
        elif cls is CloseConnection:
            sending.append(self._safe_send(event.response()))
            out.ended = True

    def _refuse(self, out: WsFeed, sending: list, status: int, why: str, headers: list) -> None:
        body = (why + "\n").encode()
        headers = headers + [(b"Content-Type", b"text/plain"), (b"Content-Length", str(len(body)).encode()),
                             (b"Connection", b"close")]
        sending.append(self._safe_send(RejectConnection(status_code=status, headers=headers, has_body=True)))
        sending.append(self._safe_send(RejectData(body)))
        out.refused = status
        out.ended = True

    def _safe_send(self, event) -> bytes:
        # The connection may already be past the state an answer fits in
        # (a close crossing ours): then there is nothing left to say.
        try:
            return self._ws.send(event)
        except LocalProtocolError:
            return b""


def _refusal(why: str, hint: RejectConnection) -> tuple[int, str, list]:
    """(status, reason, headers) for an upgrade wsproto refused: a request
    that is no upgrade at all gets 426 naming websocket (RFC 7231 §6.5.15)."""
    headers = [(bytes(k), bytes(v)) for k, v in (hint.headers or [])]
    if hint.status_code == 400 and ("'Connection: Upgrade'" in why or "'Upgrade:" in why):
        return 426, "this port speaks SIP over WebSocket (RFC 7118) only", [
            (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13")]
    return hint.status_code, why, headers
