"""Bytes to messages (RFC 3261 §7, §18.3, §25).

`parse_message` takes one datagram or one framed stream message and raises
only `BadMessage`. Its status hint says what the shell may answer: 400 for a
malformed request, 505 for a bad version, 513 for one too large, and `None`
when no answer is possible (any broken response, a request without a usable
Via). `StreamFramer` cuts a TCP byte stream into messages using
Content-Length, accepting several messages per segment and messages split
anywhere across segments.

The hot path works on whole strings with str/bytes methods and compiled
regular expressions; per-header work is a dict lookup for the name and a
strip for the value. When the optional C scanner (`_speedups`, built from
_scan.c through cffi) is present, one C call checks a plain message head and
returns where everything lies, so Python only slices; the scanner leaves
anything unusual to the pure-Python path, which stays the reference.
"""

from __future__ import annotations

import logging
import re

from .errors import BadMessage
from .headers import (COMPACT, SPLIT_ON_PARSE, TOKEN_RE, Via, parse_via, split_commas,
                      split_simple_params)
from .message import Message, Request, Response
from .scanned import (FIXED as _FIXED, NAMES as _NAMES, NAMES_MAX as _NAMES_MAX, REGULAR as _REGULAR,
                      SCAN_KEYS as _SCAN_KEYS, VIA_LIST as _SCAN_VIA_LIST,
                      VIA_LIST_CHECKED as _SCAN_VIA_LIST_CHECKED, ScannedHead, learn_name as _learn_name)

try:
    from ._speedups import ffi as _ffi, lib as _lib
except ImportError:  # not built (no compiler): the pure-Python path does it all
    _ffi = _lib = None

__all__ = ["parse_message", "StreamFramer", "MAX_MESSAGE", "MAX_HEADERS", "MAX_LINE",
           "accelerated", "use_accelerator"]

MAX_MESSAGE = 65535   # largest UDP datagram; also our cap for one stream message
MAX_HEADERS = 256     # header lines, and values after splitting comma lists;
                      # more is an attack, not a call
MAX_LINE = 8192       # one (unfolded) header line, the common HTTP server limit

# Control characters are not allowed in a header line (RFC 3261 §25.1:
# TEXT-UTF8 and LWS only); HTAB is. A stray CR or LF inside a line is one.
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# §7.3.1: a line starting with whitespace continues the previous one, and
# the folding is equivalent to one SP.
_FOLD = re.compile(r"[ \t]*\n[ \t]+")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_VIA_LINE = re.compile(rb"\n(?:via|v)[ \t]*:", re.I)
_DIGITS = re.compile(r"[0-9]+")
_CSEQ = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)")
_CALL_ID = re.compile(r"[!-~]+")  # RFC 3261 callid: printable ASCII, no LWS
_REQUEST_URI = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[!#-;=?-\[\]-~]+")
_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+", re.I)

_KNOWN_METHODS = {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK",
                  "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"}
# Fields whose presence and count the parser checks while it walks the headers.
_WATCHED = frozenset({"content-length", "call-id", "cseq", "via", "from", "to"})


def parse_message(data: bytes, *, stream: bool = False) -> Message:
    """Parse one message. On a datagram a missing Content-Length means "the
    rest", a body shorter than Content-Length is an error and extra bytes are
    dropped (§18.3). With `stream=True` a missing Content-Length means no body.

    Call-ID, CSeq and the top Via are parsed and cached on the message (for a
    response the second Via is checked too), so `msg.via` cannot raise later."""
    try:
        return _parse(bytes(data), stream)
    except BadMessage as exc:
        if exc.status is not None and not _answerable(data):
            exc.status = None
        raise


def accelerated() -> bool:
    """Whether the C scanner is built and importable."""
    return _lib is not None


def use_accelerator(enabled: bool) -> None:
    """Switch the C scanner on or off (tests and benchmarks compare the two)."""
    global _use_c
    _use_c = enabled and _lib is not None


_use_c = _lib is not None

# The scanner's output (see _scan.c, scanned.py): _FIXED ints, then 5 per
# header line (id, name start, name end, value start, value end).
_SCAN_CAP = _FIXED + 5 * MAX_HEADERS
if _lib is not None and getattr(_lib, "bs_layout", lambda: None)() != _FIXED:
    # An extension built from an older _scan.c would be read at the wrong
    # offsets: use the pure-Python path until it is rebuilt.
    logging.getLogger("babelsip").warning(
        "host/sip/_speedups is stale (built from an older _scan.c); parsing without it "
        "until rebuilt: python host/sip/_speedups_build.py")
    _ffi = _lib = None
    _use_c = False
_SPLIT_IDS = 5
# Output arrays are reused from a free list: a fresh 5 KB array per message
# was a malloc and a free on every parse. list.pop and append are atomic, so
# threads parsing at once (cffi releases the GIL during the scan) each hold
# their own. Not cleared: the scanner writes every int it reports.
_new_ints = _ffi.new_allocator(should_clear_after_alloc=False) if _ffi else None
_free_buffers: list = []


def _answerable(data: bytes) -> bool:
    """Whether a reply could be routed at all: only requests are answered
    (§18.3 discards broken responses), and only along a Via (§18.2.2)."""
    head = bytes(data[:MAX_MESSAGE]).lstrip(b"\r\n")
    if head[:4].upper() == b"SIP/":
        return False
    return _VIA_LINE.search(head) is not None


def _parse(data: bytes, stream: bool) -> Message:
    if len(data) > MAX_MESSAGE:
        raise BadMessage("message too large", 513)
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # §7.5: ignore CRLFs before the start line
    if _use_c:
        out = _free_buffers.pop() if _free_buffers else _new_ints("int32_t[]", _SCAN_CAP)
        n = _lib.bs_scan(data, len(data), out, _SCAN_CAP)
        scanned = _ffi.unpack(out, n) if n > 0 else None
        _free_buffers.append(out)
        if scanned is not None:
            return _parse_scanned(data, scanned, stream)
    lines, body = _head_lines(data)
    first = lines[0]
    if not first.isprintable():
        _check_controls(first)
    msg = _start_line(first)

    headers = msg.headers
    append = headers.append
    names = _NAMES
    content_length = call_id = cseq = None
    vias: list[str] = []
    n_from = n_to = 0
    for line in lines[1:]:
        colon = line.find(":")
        if colon <= 0:
            raise BadMessage(f"malformed header line {line[:60]!r}")
        if not line.isprintable():
            _check_controls(line)
        raw = line[:colon]
        key = names.get(raw)
        if key is None:
            key = _learn_name(raw)
        value = line[colon + 1:].strip(" \t")
        if key in SPLIT_ON_PARSE and "," in value:
            parts = split_commas(value)
            headers.extend([(key, part) for part in parts])
            if len(headers) > MAX_HEADERS:  # a comma list counts value by value
                raise BadMessage("too many header values", 513)
            if key == "via":
                _check_via_list(value, parts)
                vias.extend(parts)
            continue
        append((key, value))
        if key in _WATCHED:
            if key == "via":
                vias.append(value)
            elif key == "call-id":
                if call_id is not None:
                    raise BadMessage("more than one Call-ID")
                call_id = value
            elif key == "cseq":
                if cseq is not None:
                    raise BadMessage("more than one CSeq")
                cseq = value
            elif key == "from":
                n_from += 1
            elif key == "to":
                n_to += 1
            else:
                content_length = _content_length(value, content_length)

    _check_fields(msg, call_id, cseq, n_from, n_to)
    _check_vias(msg, vias)

    if content_length is not None:
        if len(body) < content_length:
            raise BadMessage("body shorter than Content-Length")
        if len(body) > content_length:
            body = body[:content_length]  # §18.3: extra datagram bytes are dropped
    elif stream:
        body = b""  # §18.3: on a stream a missing Content-Length means no body
    msg.body = body
    return msg


def _parse_scanned(data: bytes, v: list[int], stream: bool) -> Message:
    """Build the message from the C scanner's offsets. The scanner accepted
    the head only if it is plain ASCII with CRLF lines, no folding, token
    names, exactly one From/To/Call-ID/CSeq with valid syntax, no Via list
    and a sane Content-Length, so the checks left are those of the start
    line, comma lists, the CSeq method and the Vias — made here in the same
    order as the pure-Python path, with the same errors."""
    head_end = v[0]
    text = data[:head_end].decode("ascii")
    kind = v[10]
    if kind == 1:
        msg = Request(text[:v[11]], text[v[12]:v[13]])
    elif kind == 2:
        msg = Response(v[11], text[v[12]:v[13]])
    else:
        msg = _start_line(text[:v[1]])
    # A Via line holds a list: the Vias are checked here, as the pure-Python
    # path checks them, not from the scanner's offsets.
    vias: list[str] | None = [] if v[9] <= _SCAN_VIA_LIST else None
    if kind == 2 and v[_REGULAR] and v[14] and v[9] in (-1, _SCAN_VIA_LIST_CHECKED):
        # A response, relayed as received but for our Via: its header list
        # is built only if something asks for it (scanned.py). The scanner
        # has checked all that building it would (a plain top Via, a plain
        # second one or none, lists without empty elements, the count).
        msg.lazy_head(ScannedHead(data, text, v))
        rows, headers, append, vias = (), None, None, None
    else:
        rows = range(_FIXED, len(v), 5)
        headers = msg.headers
        append = headers.append
    keys = _SCAN_KEYS
    names = _NAMES
    for i in rows:
        kid = v[i]
        value = text[v[i + 3]:v[i + 4]]
        if kid:
            key = keys[kid]
            if kid <= _SPLIT_IDS and "," in value:
                parts = split_commas(value)
                headers.extend([(key, part) for part in parts])
                if len(headers) > MAX_HEADERS:  # a comma list counts value by value
                    raise BadMessage("too many header values", 513)
                if kid == 1:
                    _check_via_list(value, parts)
                    vias.extend(parts)
                continue
            if kid == 1 and vias is not None:
                vias.append(value)
        else:
            raw = text[v[i + 1]:v[i + 2]]
            key = names.get(raw)
            if key is None:
                key = _learn_name(raw)
        append((key, value))
    i = _FIXED + 5 * v[4]
    msg.call_id = text[v[i + 3]:v[i + 4]]
    msg.cseq = v[5]
    msg.cseq_method = method = text[v[6]:v[7]]
    if type(msg) is Request and method != msg.method:
        raise BadMessage("CSeq method does not match the request method")
    i = _FIXED + 5 * v[8]
    if v[14]:  # a plain top Via (a line or a list's first), read by the scanner as parse_via would
        port, params_at, via_end = v[18], v[19], v[20]
        msg._via = Via(text[v[i + 3] + 8:v[15]], text[v[16]:v[17]],
                       port if port >= 0 else None,
                       split_simple_params(text[params_at:via_end]) if params_at < via_end else {})
        check_via_params(text[v[i + 3]:via_end])
        if type(msg) is Response:   # the second Via, when the scanner did not read it
            if v[9] >= 0:
                i = _FIXED + 5 * v[9]
                parse_via(text[v[i + 3]:v[i + 4]])
            elif v[9] == _SCAN_VIA_LIST and len(vias) > 1:
                parse_via(vias[1])
    elif vias is not None:
        _check_vias(msg, vias)
    else:
        try:
            msg._via = parse_via(text[v[i + 3]:v[i + 4]])
        except BadMessage as exc:
            exc.status = None
            raise
        check_via_params(text[v[i + 3]:v[i + 4]])
        if v[9] >= 0 and type(msg) is Response:
            i = _FIXED + 5 * v[9]
            parse_via(text[v[i + 3]:v[i + 4]])
    body = data[head_end + 4:]
    length = v[3]
    if length >= 0:
        if len(body) < length:
            raise BadMessage("body shorter than Content-Length")
        if len(body) > length:
            body = body[:length]  # §18.3: extra datagram bytes are dropped
    elif stream:
        body = b""  # §18.3: on a stream a missing Content-Length means no body
    msg.body = body
    return msg


def _head_lines(data: bytes) -> tuple[list[str], bytes]:
    """The header block as unfolded lines (start line first) and the body.
    CRLF is the rule (§7); bare LF line ends are tolerated, as robust parsers
    do, at the price of a second, slower pass."""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        head, body = data[:end], data[end + 4:]
        text = _decode(head)
        lines = text.split("\r\n")
        # Every LF belongs to a CRLF, so no earlier empty line hides in `head`.
        if head.count(b"\n") == len(lines) - 1:
            if "\r\n " in text or "\r\n\t" in text:
                lines = _unfold("\n".join(lines))
            return _check_size(head, lines), body
    m = _HEAD_END.search(data)
    if m is not None:
        head, body = data[:m.start()], data[m.end():]
    elif data.endswith(b"\n") and data.strip():
        head, body = data.rstrip(b"\r\n"), b""  # no final empty line: no body
    else:
        raise BadMessage("no end of header block")
    # A bare CR left after this is refused later as a control character.
    text = _decode(head).replace("\r\n", "\n")
    lines = _unfold(text) if "\n " in text or "\n\t" in text else text.split("\n")
    return _check_size(head, lines), body


def _decode(head: bytes) -> str:
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError:
        raise BadMessage("header block is not UTF-8") from None


def _unfold(text: str) -> list[str]:
    """§7.3.1: a line starting with whitespace continues the previous one,
    and the fold counts as one SP. `text` has LF line ends."""
    return _FOLD.sub(" ", text).split("\n")


def _check_size(head: bytes, lines: list[str]) -> list[str]:
    if len(lines) > MAX_HEADERS + 1:
        raise BadMessage("too many header lines", 513)
    if len(head) > MAX_LINE and any(len(line) > MAX_LINE for line in lines):
        raise BadMessage("header line too long", 513)
    return lines


def _check_controls(line: str) -> None:
    """Called for the rare line str.isprintable() refuses: HTAB and printable
    non-ASCII are fine, control characters are not (§25.1)."""
    if _CTL.search(line) is not None:
        raise BadMessage(f"control character in header line {line[:60]!r}")


def _start_line(line: str) -> Message:
    if line[:4].upper() == "SIP/":
        # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (§7.2)
        version, _, rest = line.partition(" ")
        if version.upper() != "SIP/2.0":
            raise BadMessage(f"unsupported version {version[:20]!r}", None)
        code, sp, reason = rest[:3], rest[3:4], rest[4:]
        if not code.isdigit() or not code.isascii() or sp not in ("", " ") \
                or not 100 <= int(code) <= 699:
            raise BadMessage(f"bad status line {line[:40]!r}", None)
        return Response(int(code), reason.strip(" \t"))
    # Request-Line = Method SP Request-URI SP SIP-Version (§7.1), single spaces.
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise BadMessage(f"malformed request line {line[:80]!r}")
    method, uri, version = parts
    if method not in _KNOWN_METHODS and TOKEN_RE.fullmatch(method) is None:
        raise BadMessage(f"bad method {method[:20]!r}")
    if version != "SIP/2.0":
        if version.upper() == "SIP/2.0":
            version = "SIP/2.0"  # the version is case-insensitive (§7.1)
        elif _VERSION.fullmatch(version):
            raise BadMessage(f"unsupported version {version[:20]!r}", 505)
        else:
            raise BadMessage(f"malformed request line {line[:80]!r}")
    if _REQUEST_URI.fullmatch(uri) is None:
        # The scheme itself is judged by validate.check_request (416).
        raise BadMessage(f"malformed Request-URI {uri[:80]!r}")
    return Request(method, uri, version=version)


def _content_length(value: str, previous: int | None) -> int:
    # A value longer than ten digits cannot fit any message we accept and
    # would only cost int() time.
    if len(value) > 10 or _DIGITS.fullmatch(value) is None:
        raise BadMessage(f"bad Content-Length {value[:20]!r}")
    length = int(value)
    if previous is not None and previous != length:
        raise BadMessage("conflicting Content-Length headers")
    return length


def _check_fields(msg: Message, call_id, cseq, n_from: int, n_to: int) -> None:
    """The fields every message needs (§8.1.1); Call-ID and CSeq are cached on
    the message because every later layer reads them."""
    if not call_id:
        raise BadMessage("missing Call-ID")
    if _CALL_ID.fullmatch(call_id) is None:
        raise BadMessage(f"bad Call-ID {call_id[:40]!r}")
    if not cseq:
        raise BadMessage("missing CSeq")
    m = _CSEQ.fullmatch(cseq)
    if m is None:
        raise BadMessage(f"bad CSeq {cseq[:40]!r}")
    num = int(m.group(1))
    if num >= 2 ** 31:  # §8.1.1.5: the sequence number is below 2**31
        raise BadMessage(f"CSeq number too large {cseq[:40]!r}")
    method = m.group(2)
    for name, count in (("From", n_from), ("To", n_to)):
        if count != 1:
            raise BadMessage(f"missing {name}" if not count else f"more than one {name}")
    msg.call_id, msg.cseq, msg.cseq_method = call_id, num, method
    if isinstance(msg, Request) and method != msg.method:
        raise BadMessage("CSeq method does not match the request method")


def _check_vias(msg: Message, vias: list[str]) -> None:
    """Parse the top Via once (every layer wants it), and for a response the
    second one too: that is where a proxy forwards it (§16.7 step 3). A
    request whose top Via is missing or unreadable cannot be answered."""
    if not vias:
        raise BadMessage("missing Via", None)
    try:
        msg._via = parse_via(vias[0])
    except BadMessage as exc:
        exc.status = None
        raise
    check_via_params(vias[0])
    if len(vias) > 1 and isinstance(msg, Response):
        parse_via(vias[1])


# An empty via-params element: ';;', a trailing ';' (RFC 3261 §25.1 has
# *( SEMI via-params ) with a non-empty via-params).
_EMPTY_PARAM = re.compile(r";[ \t]*(?:;|$)")


def check_via_params(value: str) -> None:
    """parse_params skips empty elements, which is harmless when reading a
    Via but would have us accept and relay one the next hop may not read.
    Checked on the raw value, before received/rport rewrite the top Via."""
    if _EMPTY_PARAM.search(value) is not None:
        raise BadMessage(f"empty parameter in Via {value[:80]!r}")


def _check_via_list(value: str, parts: list[str]) -> None:
    """A Via list with an empty element (`a,,b`, a trailing comma) is not
    §25.1 grammar. Elsewhere split_commas drops empty elements harmlessly;
    in a Via they would make us relay a list the next hop cannot parse."""
    if '"' not in value and value.count(",") != len(parts) - 1:
        raise BadMessage("empty element in Via list")


class StreamFramer:
    """Cuts messages out of a byte stream (RFC 3261 §18.3).

    `feed` returns the complete raw messages available so far. When the
    stream cannot be framed any more (no sane Content-Length, a message over
    `max_size`) it raises BadMessage(status=None) and the connection must be
    closed; messages completed earlier in the same call are returned first and
    the error is raised by the next call.
    """

    __slots__ = ("_buf", "max_size", "_scanned", "_need", "_error")

    def __init__(self, max_size: int = MAX_MESSAGE):
        self._buf = bytearray()
        self.max_size = max_size
        self._scanned = 0     # bytes of the buffer already searched for the head end
        self._need = None     # total size of the current message once its head is known
        self._error: BadMessage | None = None

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        out: list[bytes] = []
        try:
            while self._next(buf, out):
                pass
        except BadMessage as exc:
            exc.status = None
            if not out:
                raise
            self._error = exc
        return out

    def _next(self, buf: bytearray, out: list[bytes]) -> bool:
        """Cut one message if it is complete; False when more bytes are needed."""
        if self._need is None:
            if buf[:1] in (b"\r", b"\n"):
                # CRLF keep-alives between messages (RFC 5626 §3.5.1) and
                # CRLFs before a start line (§7.5) are skipped.
                skip = len(buf) - len(buf.lstrip(b"\r\n"))
                del buf[:skip]
                self._scanned = 0
            # The head ends at the first empty line: "\r\n\r\n" normally,
            # "\n\n" when bare LFs are used. Look for the bare form only
            # before the CRLF one, so bodies are not scanned twice.
            start = max(0, self._scanned - 3)
            end, sep = buf.find(b"\n\r\n", start), 3
            bare = buf.find(b"\n\n", start, end if end >= 0 else len(buf))
            if bare >= 0:
                end, sep = bare, 2
            if end < 0:
                self._scanned = len(buf)
                if len(buf) > self.max_size:
                    raise BadMessage("header block too large on stream", None)
                return False
            length = _stream_content_length(bytes(buf[:end]))
            self._need = end + sep + length
            if self._need > self.max_size:
                raise BadMessage("message too large on stream", None)
        if len(buf) < self._need:
            return False
        out.append(bytes(buf[:self._need]))
        del buf[:self._need]
        self._need = None
        self._scanned = 0
        return True

    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf)


_STREAM_CL = re.compile(rb"\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.I)


def _stream_content_length(head: bytes) -> int:
    """Content-Length from a raw header block; absent means 0. Several equal
    values are fine, different ones make the stream unframeable."""
    length = None
    for m in _STREAM_CL.finditer(head):
        value = m.group(1).strip(b" \t")
        if not value.isdigit() or len(value) > 10:
            raise BadMessage("bad Content-Length on stream", None)
        if length is not None and int(value) != length:
            raise BadMessage("conflicting Content-Length on stream", None)
        length = int(value)
    return length or 0
