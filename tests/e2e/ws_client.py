"""A small SIP-over-WebSocket user agent for the end-to-end tests: a blocking
socket with wsproto framing, speaking like a browser client (RFC 7118 §5:
.invalid host in Via and Contact), enough to register with digest and to
answer one call, or to place one. Every wait has a deadline."""

from __future__ import annotations

import re
import secrets
import socket
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage, BytesMessage

from host.sip import digest
from host.sip.parser import parse_message

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class WsUA:
    def __init__(self, host: str, port: int, user: str, *, timeout: float = 5.0):
        self.host, self.port, self.user = host, port, user
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.inbox: list = []
        self.invalid = f"{secrets.token_hex(5)}.invalid"
        self.contact = f"<sip:{secrets.token_hex(4)}@{self.invalid};transport=ws;ob>"
        self.sock.sendall(self.ws.send(Request(host=f"{host}:{port}", target="/", subprotocols=["sip"])))
        accepted = self._next_event(timeout)
        if not isinstance(accepted, AcceptConnection) or accepted.subprotocol != "sip":
            raise AssertionError(f"upgrade not accepted: {accepted!r}")

    def close(self) -> None:
        try:
            self.sock.sendall(self.ws.send(CloseConnection(1000)))
        except Exception:
            pass
        self.sock.close()

    def _next_event(self, timeout: float):
        end = time.monotonic() + timeout
        while not self.inbox:
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            self.ws.receive_data(data or None)
            self.inbox.extend(self.ws.events())
            if not data and not self.inbox:
                return None
        return self.inbox.pop(0)

    def send(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(text)))

    def receive(self, timeout: float = 5.0):
        """The next SIP message (parsed), or None at the deadline."""
        end = time.monotonic() + timeout
        parts = []
        while time.monotonic() < end:
            event = self._next_event(end - time.monotonic())
            if event is None:
                return None
            if isinstance(event, (TextMessage, BytesMessage)):
                parts.append(event.data.encode() if isinstance(event, TextMessage) else event.data)
                if event.message_finished:
                    return parse_message(b"".join(parts))
        return None

    def via(self) -> str:
        return f"SIP/2.0/WS {self.invalid};branch=z9hG4bK{secrets.token_hex(8)}"

    def register(self, password: str, realm: str, expires: int = 600) -> int:
        """REGISTER, answer the challenge, return the final status."""
        call_id, tag = secrets.token_hex(8), secrets.token_hex(4)
        uri = f"sip:{self.host}:{self.port}"
        auth = None
        for cseq in (1, 2):
            lines = [f"REGISTER {uri} SIP/2.0", f"Via: {self.via()}", "Max-Forwards: 70",
                     f"From: <sip:{self.user}@{self.host}>;tag={tag}", f"To: <sip:{self.user}@{self.host}>",
                     f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER", f"Contact: {self.contact}",
                     f"Expires: {expires}"]
            if auth:
                lines.append(f"Authorization: {auth}")
            self.send("\r\n".join(lines + ["Content-Length: 0", "", ""]))
            resp = self.receive()
            while resp is not None and resp.status == 100:
                resp = self.receive()
            if resp is None:
                raise AssertionError("no answer to REGISTER")
            if resp.status != 401 or auth:
                return resp.status
            nonce = re.search(r'nonce="([^"]+)"', resp.header("www-authenticate")).group(1)
            ha1 = digest.ha1("MD5", self.user, realm, password)
            cnonce = secrets.token_hex(8)
            answer = digest.response("MD5", ha1, nonce=nonce, nc="00000001", cnonce=cnonce, qop="auth",
                                     method="REGISTER", uri=uri)
            auth = (f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                    f'response="{answer}", algorithm=MD5, qop=auth, nc=00000001, cnonce="{cnonce}"')
        raise AssertionError("unreachable")

    def answer(self, request, status: int, reason: str, *, to_tag: str = "", body: str = "") -> None:
        """A response to `request` as a UAS writes it (Vias, From, To, Call-ID, CSeq copied)."""
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in request.header_values("via")]
        lines += [f"Record-Route: {v}" for v in request.header_values("record-route")]
        to = request.header("to")
        if to_tag and ";tag=" not in to:
            to += f";tag={to_tag}"
        lines += [f"From: {request.header('from')}", f"To: {to}", f"Call-ID: {request.call_id}",
                  f"CSeq: {request.header('cseq')}"]
        if status < 300 and request.method == "INVITE":
            lines.append(f"Contact: {self.contact}")
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body.encode())}", "", body]
        self.send("\r\n".join(lines))

    def final_response(self, timeout: float = 10.0):
        """The next final response (provisional ones skipped), or None at the deadline."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            message = self.receive(end - time.monotonic())
            if message is None:
                return None
            if getattr(message, "status", None) is not None and message.status >= 200:
                return message
        return None

    def call(self, uri: str, call_id: str, timeout: float = 10.0) -> tuple[int | None, int | None]:
        """INVITE `uri`, ACK the answer and hang up along the dialog's
        route set (RFC 3261 §12.2.1.1: the Record-Route reversed, the remote
        Contact as Request-URI). Returns (INVITE's final status, BYE's)."""
        tag = secrets.token_hex(4)
        head = [f"From: <sip:{self.user}@{self.host}>;tag={tag}", f"Call-ID: {call_id}", "Max-Forwards: 70"]
        self.send("\r\n".join([f"INVITE {uri} SIP/2.0", f"Via: {self.via()}", *head, f"To: <{uri}>",
                                "CSeq: 1 INVITE", f"Contact: {self.contact}", "Content-Type: application/sdp",
                                f"Content-Length: {len(SDP)}", "", SDP]))
        final = self.final_response(timeout)
        if final is None or final.status >= 300:
            return (final.status if final is not None else None), None
        to = final.header("to")
        routes = list(reversed(final.header_values("record-route")))
        target = re.search(r"<([^>]+)>", final.header("contact")).group(1)

        def in_dialog(method: str, cseq: int, via: str) -> str:
            return "\r\n".join([f"{method} {target} SIP/2.0", f"Via: {via}", *head, f"To: {to}",
                                 f"CSeq: {cseq} {method}", *[f"Route: {r}" for r in routes],
                                 "Content-Length: 0", "", ""])
        self.send(in_dialog("ACK", 1, self.via()))
        self.send(in_dialog("BYE", 2, self.via()))
        bye = self.final_response(timeout)
        return final.status, (bye.status if bye is not None else None)
