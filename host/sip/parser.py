"""Bytes to messages (RFC 3261 §7, §18.3, §25).

`parse_message` takes one datagram or one framed stream message and raises only
`BadMessage`. `StreamFramer` cuts a TCP byte stream into messages using
Content-Length, accepting several messages per segment and messages split
across segments.
"""

from __future__ import annotations

from .errors import BadMessage
from .headers import COMPACT, SPLIT_ON_PARSE, split_commas
from .message import Message, Request, Response

MAX_MESSAGE = 65535      # largest datagram; also our cap for one stream message
MAX_HEADERS = 256        # header lines; more is an attack, not a call
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


def parse_message(data: bytes, *, stream: bool = False) -> Message:
    """Parse one message. On a datagram a missing Content-Length means "the
    rest", a shorter body is an error and extra bytes are dropped (§18.3)."""
    if len(data) > MAX_MESSAGE:
        raise BadMessage("message too large", 513)
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        head, body = data[:end], data[end + 4:]
    else:
        # Tolerate bare LF line ends, as robust parsers do (RFC 4475 §3.1.1.1 spirit).
        end = data.find(b"\n\n")
        if end < 0:
            if data.endswith(b"\r\n") or data.endswith(b"\n"):
                head, body = data.rstrip(b"\r\n"), b""
            else:
                raise BadMessage("no end of headers", None if not data.strip() else 400)
        else:
            head, body = data[:end], data[end + 2:]
    text = head.decode("utf-8", "surrogateescape").lstrip("\r\n")
    lines = text.split("\n")
    first = lines[0].rstrip("\r")
    msg = _start_line(first)
    headers = msg.headers
    unfolded: list[str] = []
    for line in lines[1:]:
        line = line.rstrip("\r")
        if line[:1] in (" ", "\t"):
            if not unfolded:
                raise BadMessage("continuation line before any header")
            unfolded[-1] += " " + line.strip()  # §7.3.1: folding is one space
        elif line:
            unfolded.append(line)
    if len(unfolded) > MAX_HEADERS:
        raise BadMessage("too many headers", 513)
    content_length = None
    for line in unfolded:
        colon = line.find(":")
        if colon <= 0:
            raise BadMessage(f"malformed header line {line[:60]!r}")
        name = line[:colon].strip().lower()
        if not name or not all(c in _TOKEN_CHARS for c in name):
            raise BadMessage(f"bad header name {line[:colon][:40]!r}")
        key = COMPACT.get(name, name)
        value = line[colon + 1:].strip()
        if key in SPLIT_ON_PARSE:
            for part in split_commas(value):
                headers.append((key, part))
        else:
            headers.append((key, value))
            if key == "content-length":
                if not value.isdigit():
                    raise BadMessage(f"bad Content-Length {value[:20]!r}")
                if content_length is not None and int(value) != content_length:
                    raise BadMessage("conflicting Content-Length headers")
                content_length = int(value)
    if content_length is not None:
        if len(body) < content_length:
            raise BadMessage("body shorter than Content-Length")
        body = body[:content_length]
    elif stream:
        body = b""  # §18.3: on a stream a missing Content-Length means no body
    msg.body = body
    _cache_fields(msg)
    return msg


def _start_line(line: str) -> Message:
    if line.startswith("SIP/"):
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if version != "SIP/2.0":
            raise BadMessage(f"unsupported version {version[:20]!r}", None)
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise BadMessage(f"bad status code {code[:20]!r}", None)
        return Response(int(code), reason.strip())
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise BadMessage(f"malformed request line {line[:80]!r}")
    method, uri, version = parts
    if not all(c in _TOKEN_CHARS for c in method):
        raise BadMessage(f"bad method {method[:20]!r}")
    if version != "SIP/2.0":
        if version.upper() == "SIP/2.0":
            version = "SIP/2.0"  # the version string is case-insensitive (§7.1)
        elif version.upper().startswith("SIP/"):
            raise BadMessage(f"unsupported version {version[:20]!r}", 505)
        else:
            raise BadMessage(f"malformed request line {line[:80]!r}")
    return Request(method, uri, version=version)


def _cache_fields(msg: Message) -> None:
    """Pull Call-ID and CSeq out once; every later layer reads these fields."""
    call_id = cseq = None
    for k, v in msg.headers:
        if k == "call-id":
            if call_id is not None:
                raise BadMessage("more than one Call-ID")
            call_id = v
        elif k == "cseq":
            if cseq is not None:
                raise BadMessage("more than one CSeq")
            cseq = v
    if not call_id:
        raise BadMessage("missing Call-ID")
    if not cseq:
        raise BadMessage("missing CSeq")
    num, _, method = cseq.partition(" ")
    method = method.strip()
    if not num.isdigit() or len(num) > 10 or int(num) >= 2 ** 31 or not method:
        raise BadMessage(f"bad CSeq {cseq[:40]!r}")
    msg.call_id, msg.cseq, msg.cseq_method = call_id, int(num), method
    if isinstance(msg, Request) and method != msg.method:
        raise BadMessage("CSeq method does not match the request method")


class StreamFramer:
    """Cuts messages out of a byte stream (RFC 3261 §18.3)."""

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = MAX_MESSAGE):
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete raw messages now available.
        Raises BadMessage(None) when the stream cannot be framed any more
        (the connection must then be closed)."""
        buf = self._buf
        buf += data
        out = []
        while True:
            # Keep-alive CRLFs between messages (RFC 5626 §3.5.1) are skipped.
            skip = 0
            while skip < len(buf) and buf[skip] in (13, 10):
                skip += 1
            if skip:
                del buf[:skip]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_size:
                    raise BadMessage("header block too large on stream", None)
                return out
            length = _content_length(bytes(buf[:end]))
            total = end + 4 + length
            if total > self.max_size:
                raise BadMessage("message too large on stream", None)
            if len(buf) < total:
                return out
            out.append(bytes(buf[:total]))
            del buf[:total]


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        colon = line.find(b":")
        if colon > 0:
            name = line[:colon].strip().lower()
            if name in (b"content-length", b"l"):
                value = line[colon + 1:].strip()
                if not value.isdigit():
                    raise BadMessage("bad Content-Length on stream", None)
                return int(value)
    return 0
