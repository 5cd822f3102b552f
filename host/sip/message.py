"""SIP requests and responses (RFC 3261 §7).

Headers are kept in wire order as (key, value) pairs, key being the lower-case
long name; values stay strings until the core needs their structure. The few
fields every message needs on the hot path (top Via, Call-ID, CSeq) are parsed
once by the parser and cached here.
"""

from __future__ import annotations

from .uri import URI, parse_uri
from .scanned import ScannedHead
from .headers import DISPLAY_NAMES, Via, display_name, header_key, parse_via, split_commas, tag_of, SPLIT_ON_PARSE

# Header names as callers spell them -> our keys. Names come mostly from code,
# so this stays small; the bound keeps a script from growing it without end.
_KEYS: dict[str, str] = {}
_PARSED_URIS: dict[str, URI] = {}   # shared, so never mutate a parsed_uri


def _key(name: str) -> str:
    key = _KEYS.get(name)
    if key is None:
        key = header_key(name)
        if len(_KEYS) < 1024:
            _KEYS[name] = key
    return key


class Message:
    __slots__ = ("headers", "body", "_via", "call_id", "cseq", "cseq_method")

    def __init__(self, headers: list[tuple[str, str]] | None = None, body: bytes = b""):
        self.headers = headers if headers is not None else []
        self.body = body
        self._via: Via | None = None
        self.call_id = ""
        self.cseq = 0
        self.cseq_method = ""

    # --- header access -------------------------------------------------
    def header(self, name: str) -> str | None:
        """First value of a header (name in any case, compact forms accepted)."""
        key = _KEYS.get(name) or _key(name)
        for k, v in self.headers:
            if k == key:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        key = _KEYS.get(name) or _key(name)
        return [v for k, v in self.headers if k == key]

    def has_header(self, name: str) -> bool:
        key = _KEYS.get(name) or _key(name)
        for k, _ in self.headers:
            if k == key:
                return True
        return False

    def add_header(self, name: str, value: str, *, first: bool = False) -> None:
        """Append a header (or put it before every other instance of the same name)."""
        key = _key(name)
        values = split_commas(value) if key in SPLIT_ON_PARSE else [value]
        if first:
            for i, (k, _) in enumerate(self.headers):
                if k == key:
                    self.headers[i:i] = [(key, v) for v in values]
                    break
            else:
                self.headers[0:0] = [(key, v) for v in values]
        else:
            self.headers.extend((key, v) for v in values)
        if key == "via":
            self._via = None

    def set_header(self, name: str, value: str) -> None:
        """Replace every instance with one value, at the first instance's place."""
        key = _key(name)
        for i, (k, _) in enumerate(self.headers):
            if k == key:
                self.headers[i] = (key, value)
                self.headers[i + 1:] = [h for h in self.headers[i + 1:] if h[0] != key]
                break
        else:
            self.headers.append((key, value))
        if key == "via":
            self._via = None

    def remove_header(self, name: str) -> int:
        key = _key(name)
        before = len(self.headers)
        self.headers = [h for h in self.headers if h[0] != key]
        if key == "via":
            self._via = None
        return before - len(self.headers)

    def push_front(self, key: str, value: str) -> None:
        """Put a single-valued header of our own (our Via, our Record-Route)
        on top; `key` is already a lower-case long name."""
        headers = self.headers
        at = 0
        for i, (k, _) in enumerate(headers):
            if k == key:
                at = i  # keep rows of one name together, ours first
                break
        headers.insert(at, (key, value))
        if key == "via":
            self._via = None

    def pop_first(self, name: str) -> str | None:
        key = _key(name)
        for i, (k, v) in enumerate(self.headers):
            if k == key:
                del self.headers[i]
                if key == "via":
                    self._via = None
                return v
        return None

    # --- cached fields ---------------------------------------------------
    @property
    def via(self) -> Via | None:
        """The top Via, parsed."""
        if self._via is None:
            value = self.header("via")
            if value is not None:
                self._via = parse_via(value)
        return self._via

    @property
    def from_tag(self) -> str | None:
        return tag_of(self.header("from"))

    @property
    def to_tag(self) -> str | None:
        return tag_of(self.header("to"))

    # --- output ----------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        lines = [self.start_line()]
        append = lines.append
        names = DISPLAY_NAMES
        for k, v in self.headers:
            if k != "content-length":
                append(f"{names.get(k) or display_name(k)}: {v}")
        append(f"Content-Length: {len(self.body)}\r\n\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body

    def copy(self):
        raise NotImplementedError


class Request(Message):
    __slots__ = ("method", "uri", "version", "_ruri")

    def __init__(self, method: str, uri: str, headers=None, body: bytes = b"", version: str = "SIP/2.0"):
        super().__init__(headers, body)
        self.method = method
        self.uri = uri
        self.version = version
        self._ruri = None

    @property
    def parsed_uri(self) -> URI:
        """The Request-URI parsed, once per value of `uri`. Do not mutate it."""
        cached = self._ruri
        if cached is None or cached[0] is not self.uri:
            text = self.uri
            uri = _PARSED_URIS.get(text)
            if uri is None:
                uri = parse_uri(text)
                if len(_PARSED_URIS) >= 4096:  # most calls go to a few URIs
                    _PARSED_URIS.clear()
                _PARSED_URIS[text] = uri
            cached = self._ruri = (text, uri)
        return cached[1]

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> Request:
        r = Request(self.method, self.uri, list(self.headers), self.body, self.version)
        r._ruri = self._ruri
        r.call_id, r.cseq, r.cseq_method, r._via = self.call_id, self.cseq, self.cseq_method, self._via
        return r

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id!r}>"


class Response(Message):
    """A received response may keep its head as received instead of a header
    list (`lazy_head`): most are relayed with one change, our Via removed.
    Only responses: a property costs every read of `headers` some 40 ns,
    and requests read them much more (validation, loop checks, routing)."""

    __slots__ = ("status", "reason", "version", "local", "source", "_rows", "_head")

    def __init__(self, status: int, reason: str, headers=None, body: bytes = b"", version: str = "SIP/2.0"):
        super().__init__(headers, body)
        self.local = False  # made by this proxy, not received from downstream
        self.source = None  # (transport, ip, port) it came from, when received
        self.status = status
        self.reason = reason
        self.version = version

    @property
    def headers(self) -> list[tuple[str, str]]:
        rows = self._rows
        if rows is None:
            rows = self._rows = self._head.rows()
            self._head = None
        return rows

    @headers.setter
    def headers(self, rows: list[tuple[str, str]]) -> None:
        self._rows, self._head = rows, None

    def lazy_head(self, head: ScannedHead) -> None:
        """Keep the received head (parser.py); the header list is built
        from it on first use, and until then the response is written out
        by splicing the received bytes."""
        self._rows, self._head = None, head

    def header(self, name: str) -> str | None:
        head = self._head
        if head is not None:
            value = head.first(_KEYS.get(name) or _key(name))
            if value is not False:
                return value
        return super().header(name)

    def header_values(self, name: str) -> list[str]:
        head = self._head
        if head is not None:
            values = head.values(_KEYS.get(name) or _key(name))
            if values is not None:
                return values
        return super().header_values(name)

    def has_header(self, name: str) -> bool:
        return self.header(name) is not None if self._head is not None else super().has_header(name)

    def pop_first(self, name: str) -> str | None:
        head = self._head
        if head is not None and not head.top_via_removed and _key(name) == "via":
            head.top_via_removed = True   # §16.7 step 9, on a relayed response
            self._via = None
            return head.top_via()
        return super().pop_first(name)

    def serialize(self) -> bytes:
        head = self._head
        if head is not None:
            data = head.splice(self.start_line(), self.body)
            if data is not None:
                return data
        return super().serialize()

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> Response:
        r = Response(self.status, self.reason, list(self.headers), self.body, self.version)
        r.local, r.source = self.local, self.source
        r.call_id, r.cseq, r.cseq_method, r._via = self.call_id, self.cseq, self.cseq_method, self._via
        return r

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} cseq={self.cseq} {self.cseq_method}>"


# Default reason phrases (RFC 3261 §21 and companions).
REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}


def reason_for(status: int) -> str:
    return REASONS.get(status) or REASONS.get(status // 100 * 100, "Unknown")


# Headers copied from a request into a response it answers (RFC 3261 §8.2.6.2).
_COPIED_TO_RESPONSE = frozenset({"via", "from", "to", "call-id", "cseq"})


def make_response(request: Request, status: int, reason: str | None = None,
                  to_tag: str | None = None, extra: list[tuple[str, str]] | None = None) -> Response:
    """Build a response to `request` as a UAS or a proxy answering on its own."""
    headers = []
    for k, v in request.headers:
        if k in _COPIED_TO_RESPONSE:
            if k == "to" and to_tag and status > 100 and tag_of(v) is None:
                v = f"{v};tag={to_tag}"
            headers.append((k, v))
        elif k == "record-route" and 100 < status < 300:
            # §12.1.1: a UAS copies Record-Route into dialog-creating responses.
            headers.append((k, v))
    if extra:
        headers.extend((header_key(n), v) for n, v in extra)
    resp = Response(status, reason or reason_for(status), headers)
    resp._via = request._via  # the same top Via: no need to parse it again
    resp.call_id, resp.cseq, resp.cseq_method = request.call_id, request.cseq, request.cseq_method
    return resp
