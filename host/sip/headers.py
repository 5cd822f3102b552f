"""Header names and the header values the core must understand (RFC 3261 §7.3, §20, §25).

Header values stay strings in the message; these functions parse the few the
proxy acts on (Via, name-addr headers, parameters) on demand. Every parser
here raises only BadMessage, and does its scanning with compiled regular
expressions rather than a Python loop per character.
"""

from __future__ import annotations

import functools
import re

from .errors import BadMessage
from .uri import check_absolute_uri, simple_hostport, valid_host

__all__ = [
    "COMPACT", "SPLIT_ON_PARSE", "header_key", "display_name", "split_commas",
    "parse_params", "format_params", "Via", "parse_via", "NameAddr",
    "parse_name_addr", "tag_of", "unquote_string", "TOKEN_RE",
]

# RFC 3261 §7.3.3 and later RFCs' compact forms.
COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "o": "event", "u": "allow-events", "r": "refer-to", "b": "referred-by",
    "x": "session-expires", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition", "y": "identity",
}

# Names whose conventional spelling is not plain Title-Case.
_SPECIAL_DISPLAY = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version", "rack": "RAck", "rseq": "RSeq",
    "sip-etag": "SIP-ETag", "sip-if-match": "SIP-If-Match",
}

# Headers whose comma-separated values the core splits into one entry each,
# because it adds, removes or inspects single values (RFC 3261 §7.3.1 makes
# the two forms equivalent).
SPLIT_ON_PARSE = frozenset({"via", "route", "record-route", "contact", "path"})

# RFC 3261 §25.1 token and quoted-string. A quoted-pair escapes any
# character but CR and LF; the message parser has already refused other
# control characters.
_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN = rf"[{_TOKEN_CHARS}]+"
_QUOTED = r'"(?:[^"\\\r\n]|\\[^\r\n])*"'
TOKEN_RE = re.compile(_TOKEN)

# key -> wire spelling; filled by display_name(), read directly by hot loops.
DISPLAY_NAMES: dict[str, str] = {}


def header_key(name: str) -> str:
    """Lower-case long form of a header name: 'v' -> 'via', 'Call-Id' -> 'call-id'."""
    key = name.strip().lower()
    return COMPACT.get(key, key)


def display_name(key: str) -> str:
    name = DISPLAY_NAMES.get(key)
    if name is None:
        name = _SPECIAL_DISPLAY.get(key) or "-".join(p[:1].upper() + p[1:] for p in key.split("-"))
        if len(DISPLAY_NAMES) < 1024:  # keys come from the wire: bound the cache
            DISPLAY_NAMES[key] = name
    return name


# One piece of a comma-separated value: a run of ordinary characters, a
# quoted string, a <...> URI, or a comma. Commas inside the last two do not
# separate values (RFC 3261 §7.3.1, §20).
_COMMA_PIECE = re.compile(rf'[^"<,]+|{_QUOTED}|<[^>]*>|,')


def split_commas(value: str) -> list[str]:
    """Split a header value at commas that are outside quotes and <...>.
    Empty elements are dropped (RFC 3261 §7.3.1 allows ", ," nowhere, but
    dropping them is harmless and common)."""
    if "," not in value:
        return [value]
    if '"' not in value and "<" not in value:
        return [p for p in (s.strip() for s in value.split(",")) if p]
    parts: list[str] = []
    start = pos = 0
    n = len(value)
    match = _COMMA_PIECE.match
    while pos < n:
        m = match(value, pos)
        if m is None:
            raise BadMessage(f"unbalanced quotes or brackets in {value[:80]!r}")
        if value[pos] == ",":
            part = value[start:pos].strip()
            if part:
                parts.append(part)
            start = pos + 1
        pos = m.end()
    part = value[start:].strip()
    if part:
        parts.append(part)
    return parts


# generic-param = token [ EQUAL gen-value ]; gen-value = token / host /
# quoted-string (RFC 3261 §25.1). Colons and brackets are admitted in values
# for IPv6 hosts (Via received=2001:db8::1, maddr=[::1]).
_GEN_VALUE_CHARS = rf"[{_TOKEN_CHARS}:\[\]]+"
_PARAM = re.compile(
    rf'[ \t]*;[ \t]*(?:({_TOKEN})(?:[ \t]*=[ \t]*({_QUOTED}|{_GEN_VALUE_CHARS}))?)?[ \t]*'
)
# The same grammar for a whole parameter list without quoted strings, the
# common case: one match checks it all, str.split does the rest.
_PLAIN_PARAMS = re.compile(
    rf"(?:[ \t]*;[ \t]*(?:{_TOKEN}(?:[ \t]*=[ \t]*{_GEN_VALUE_CHARS})?)?)*[ \t]*"
)

# The form nearly everyone sends: no whitespace, no quotes, no empty
# elements, so str.split alone takes it apart once this has matched.
_SIMPLE_PARAMS = re.compile(rf"(?:;{_TOKEN}(?:={_GEN_VALUE_CHARS})?)+")


def parse_params(text: str) -> dict[str, str | None]:
    """';a=b;c' (leading ';' optional) -> {'a': 'b', 'c': None}; names
    lower-case, quoted values kept quoted, empty elements skipped."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    if text[:1] != ";" and text.lstrip(" \t")[:1] != ";":
        text = ";" + text
    if _SIMPLE_PARAMS.fullmatch(text) is not None:
        return split_simple_params(text)
    if '"' not in text:
        if _PLAIN_PARAMS.fullmatch(text) is None:
            raise BadMessage(f"malformed parameters {text[:80]!r}")
        for item in text.split(";"):
            name, eq, value = item.partition("=")
            name = name.strip(" \t")
            if name:
                params[name.lower()] = value.strip(" \t") if eq else None
        return params
    pos, n, match = 0, len(text), _PARAM.match
    while pos < n:
        m = match(text, pos)
        if m is None or m.end() == pos:
            raise BadMessage(f"malformed parameters {text[:80]!r}")
        name = m.group(1)
        if name is not None:
            params[name.lower()] = m.group(2)
        pos = m.end()
    return params


def split_simple_params(text: str) -> dict[str, str | None]:
    """Parameters already known to match _SIMPLE_PARAMS (';a=b;c')."""
    params: dict[str, str | None] = {}
    for item in text[1:].split(";"):
        name, eq, value = item.partition("=")
        params[name.lower()] = value if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(";" + k if v is None else f";{k}={v}" for k, v in params.items())


_ESCAPE = re.compile(r"\\(.)", re.S)


def unquote_string(text: str) -> str:
    """'"a \\"b\\""' -> 'a "b"'; a text without surrounding quotes is returned as is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return _ESCAPE.sub(r"\1", text[1:-1])
    return text


class Via:
    """One Via header value: 'SIP/2.0/UDP host:port;branch=...' (RFC 3261 §20.42)."""

    __slots__ = ("transport", "host", "port", "params")

    def __init__(self, transport: str, host: str, port: int | None, params: dict):
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{format_params(self.params)}"


# via-parm = sent-protocol LWS sent-by *( SEMI via-params ) with LWS allowed
# around the slashes and the colon (RFC 3261 §25.1 SLASH, COLON). The first
# expression is the form everyone sends; the second the whole grammar.
_VIA_COMPACT = re.compile(
    rf"SIP/2\.0/({_TOKEN}) (\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)(?::([0-9]{{1,5}}))?(;.*)?", re.S
)
_VIA = re.compile(
    rf"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*({_TOKEN})[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*(;.*)?",
    re.I | re.S,
)


_TRANSPORTS = frozenset({"UDP", "TCP", "TLS", "SCTP", "WS", "WSS"})


def parse_via(value: str) -> Via:
    if value[:8] == "SIP/2.0/":
        via = _parse_via_fast(value)
        if via is not None:
            return via
    m = _VIA_COMPACT.fullmatch(value)
    if m is None:
        m = _VIA.fullmatch(value.strip(" \t"))
    if m is None:
        raise BadMessage(f"malformed Via {value[:80]!r}")
    transport, host, port, ptext = m.groups()
    if not valid_host(host):
        raise BadMessage(f"bad host in Via {value[:80]!r}")
    if port is not None:
        port = int(port)
        if not 0 < port < 65536:
            raise BadMessage(f"bad port in Via {value[:80]!r}")
    return Via(transport.upper(), host, port, parse_params(ptext) if ptext else {})


def _parse_via_fast(value: str) -> Via | None:
    """'SIP/2.0/UDP host[:port][;params]' with an upper-case well-known
    transport and a plain host, cut with str methods; None lets the
    expressions decide. Every piece is checked as strictly as _VIA_COMPACT
    does, so a Via taken here parses the same there."""
    sp = value.find(" ", 8)
    if sp < 0:
        return None
    transport = value[8:sp]
    if transport not in _TRANSPORTS:
        return None
    semi = value.find(";", sp)
    hostport = value[sp + 1:semi] if semi >= 0 else value[sp + 1:]
    parsed = simple_hostport(hostport)
    if parsed is None:
        return None
    return Via(transport, parsed[0], parsed[1], parse_params(value[semi:]) if semi >= 0 else {})


class NameAddr:
    """A name-addr or addr-spec with header parameters: From, To, Contact, Route,
    Record-Route (RFC 3261 §20.10, §25.1). `display` is kept as written
    (quotes included); `unquote_string` gives the plain text."""

    __slots__ = ("display", "uri", "params", "bracketed")

    def __init__(self, display: str | None, uri: str, params: dict, bracketed: bool = True):
        self.display = display
        self.uri = uri
        self.params = params
        self.bracketed = bracketed

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        head = f"{self.display} " if self.display else ""
        return f"{head}<{self.uri}>{format_params(self.params)}"


_QUOTED_AT_START = re.compile(_QUOTED)
# display-name = *(token LWS) / quoted-string
_TOKEN_DISPLAY = re.compile(rf"{_TOKEN}(?:[ \t]+{_TOKEN})*")


def parse_name_addr(value: str) -> NameAddr:
    value = value.strip(" \t")
    if value == "*":
        return NameAddr(None, "*", {}, False)
    if value[:1] == '"':
        m = _QUOTED_AT_START.match(value)
        if m is None:
            raise BadMessage(f"bad display name in {value[:80]!r}")
        display = m.group(0)
        lt = value.find("<", m.end())
        if lt < 0 or value[m.end():lt].strip(" \t"):
            raise BadMessage(f"display name without <URI> in {value[:80]!r}")
        return _bracketed(value, display, lt)
    lt = value.find("<")
    quote = value.find('"')
    if lt >= 0 and not 0 <= quote < lt:
        display = value[:lt].rstrip(" \t") or None
        if display is not None and _TOKEN_DISPLAY.fullmatch(display) is None:
            raise BadMessage(f"bad display name in {value[:80]!r}")
        return _bracketed(value, display, lt)
    # addr-spec form: parameters after the URI belong to the header, and the
    # URI itself can hold no ';', '?' or ',' (RFC 3261 §20.10).
    uri, _, ptext = value.partition(";")
    uri = uri.rstrip(" \t")
    check_absolute_uri(uri)
    if "?" in uri or "," in uri:
        raise BadMessage(f"addr-spec with '?' or ',' must be in <> {value[:80]!r}")
    return NameAddr(None, uri, parse_params(ptext) if ptext else {}, False)


def _bracketed(value: str, display: str | None, lt: int) -> NameAddr:
    gt = value.find(">", lt)
    if gt < 0:
        raise BadMessage(f"unterminated <...> in {value[:80]!r}")
    uri = value[lt + 1:gt].strip(" \t")
    check_absolute_uri(uri)
    rest = value[gt + 1:].lstrip(" \t")
    if rest and rest[0] != ";":
        raise BadMessage(f"junk after <...> in {value[:80]!r}")
    return NameAddr(display, uri, parse_params(rest) if rest else {})


# A call's From and To values are read many times over its life (each
# message's event for the route, the dialog, the transaction keys): these
# pure functions remember what they answered for the values of the calls in
# progress, in bounded caches (a flood of distinct values must not grow them).
_MEMO_MAX = 8192


def uri_of(value: str | None) -> str:
    """The URI of a name-addr header value (From, To, Contact); '' for one
    that is absent or does not parse."""
    return _uri_of(value) if value else ""


@functools.lru_cache(maxsize=_MEMO_MAX)
def _uri_of(value: str) -> str:
    try:
        return parse_name_addr(value).uri
    except BadMessage:
        return ""


def tag_of(value: str | None) -> str | None:
    """The tag parameter of a From/To value, without a full parse on the hot
    path. Never raises: a value it cannot read has no tag."""
    return _read_tag(value) if value else None


@functools.lru_cache(maxsize=_MEMO_MAX)
def _read_tag(value: str) -> str | None:
    gt = value.rfind(">")
    tail = value[gt + 1:] if gt >= 0 else value
    low = tail.lower()
    i = low.find(";tag=")
    if i >= 0:
        tag = tail[i + 5:]
        semi = tag.find(";")
        return (tag[:semi] if semi >= 0 else tag).strip(" \t") or None
    if "tag" not in low:
        return None
    # Rare spellings such as '; tag = x': take the slow, exact way.
    semi = tail.find(";")
    if semi < 0:
        return None
    try:
        tag = parse_params(tail[semi:]).get("tag")
    except BadMessage:
        return None
    return tag or None
