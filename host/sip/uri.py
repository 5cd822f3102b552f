"""SIP, SIPS and tel URIs (RFC 3261 §19.1, §25.1; RFC 3966).

Parsed into parts for routing decisions and rebuilt on output. Parameters
keep their order and the original case of their values; names are compared
lower-case. The grammar is checked with a handful of compiled regular
expressions, never a Python loop per character. The usual shape,
`sip:user@host:port;params`, takes a fast path that cuts at '@', ':' and
';' and checks each piece with a small expression; anything it is unsure of
goes to the full expression, which decides.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

from .errors import BadMessage

__all__ = [
    "URI", "parse_uri", "parse_hostport", "check_absolute_uri", "valid_host",
    "SUPPORTED_SCHEMES", "DEFAULT_PORTS",
]

SUPPORTED_SCHEMES = frozenset({"sip", "sips", "tel"})
DEFAULT_PORTS = {"sip": 5060, "sips": 5061}

# Character classes of RFC 3261 §25.1. "%" is admitted wherever `escaped`
# is, and escapes are checked once afterwards (_BAD_ESCAPE): an alternation
# per character would make every URI several times slower to match.
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_USER = rf"[{_UNRESERVED}&=+$,;?/%]+"
_PASSWORD = rf"[{_UNRESERVED}&=+$,%]*"
_PARAMCHAR = rf"[{_UNRESERVED}\[\]/:&+$%]"
_PARAMS = rf"(?:;{_PARAMCHAR}+(?:={_PARAMCHAR}+)?)*"
_HNVCHAR = rf"[{_UNRESERVED}\[\]/?:+$%]"
_HEADERS = rf"{_HNVCHAR}+={_HNVCHAR}*(?:&{_HNVCHAR}+={_HNVCHAR}*)*"
# Hosts are matched loosely here and checked label by label in valid_host:
# a strict hostname regex backtracks badly on long hostile input.
_HOST = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+"

_SIP_REST = re.compile(
    rf"(?:(?P<user>{_USER})(?::(?P<password>{_PASSWORD}))?@)?"
    rf"(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?"
    rf"(?P<params>{_PARAMS})(?:\?(?P<headers>{_HEADERS}))?"
)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# RFC 3966 §3: global numbers start with "+", local ones may hold hex digits,
# "*" and "#"; visual separators are "-", "." and parentheses.
_TEL_REST = re.compile(rf"(?P<number>[0-9A-Fa-f*#+\-.()]+)(?P<params>{_PARAMS})")
# RFC 3261 §25.1 absoluteURI, checked loosely: a scheme, a colon and no
# whitespace, controls, or the delimiters a header value uses around a URI
# (printable ASCII minus SP " < > \\).
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[!#-;=?-\[\]-~]+")
_PORT = re.compile(r"[0-9]{1,5}")


class URI:
    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers")

    def __init__(self, scheme="sip", user=None, password=None, host="", port=None,
                 params=None, headers=None):
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = params if params is not None else {}
        self.headers = headers  # raw "a=b&c=d" part without "?", or None

    @property
    def transport(self) -> str:
        """Transport asked for by the URI. sips is never sent in the clear
        (RFC 3261 §26.2.2, RFC 5630 §3.1.3): TLS whatever else it names
        (";transport=tcp" is TLS over TCP), or secure WebSocket. RFC 7118
        §5.2 names both WebSocket transports "ws" in URIs, the scheme tells
        them apart; "wss" is accepted too."""
        t = self.params.get("transport")
        secure = self.scheme == "sips"
        if t:
            t = t.lower()
            if t in ("ws", "wss"):
                return "wss" if secure or t == "wss" else "ws"
            return "tls" if secure else t
        return "tls" if secure else "udp"

    @property
    def user_unescaped(self) -> str | None:
        return unquote(self.user) if self.user is not None else None

    def host_port(self) -> tuple[str, int | None]:
        return self.host, self.port

    def copy(self) -> URI:
        return URI(self.scheme, self.user, self.password, self.host, self.port,
                   dict(self.params), self.headers)

    def __str__(self) -> str:
        if self.scheme == "tel":
            out = "tel:" + (self.user or "")
        else:
            out = self.scheme + ":"
            if self.user is not None:
                out += self.user
                if self.password is not None:
                    out += ":" + self.password
                out += "@"
            out += self.host
            if self.port is not None:
                out += ":" + str(self.port)
        for name, value in self.params.items():
            out += ";" + name if value is None else f";{name}={value}"
        if self.headers:
            out += "?" + self.headers
        return out

    def __repr__(self) -> str:
        return f"URI({str(self)!r})"

    def __eq__(self, other) -> bool:
        # A pragmatic subset of RFC 3261 §19.1.4: scheme, user (escapes
        # decoded), host (case-insensitive), port and transport.
        if not isinstance(other, URI):
            return NotImplemented
        return (self.scheme == other.scheme and self.user_unescaped == other.user_unescaped
                and self.host.lower() == other.host.lower() and self.port == other.port
                and (self.params.get("transport") or "").lower()
                == (other.params.get("transport") or "").lower())

    __hash__ = None


def parse_uri(text: str) -> URI:
    """Parse a sip, sips or tel URI.

    Raises BadMessage(416) for a well-formed absolute URI of another scheme
    (RFC 3261 §16.3 step 2 answers that with 416 Unsupported URI Scheme) and
    BadMessage(400) for anything malformed.
    """
    scheme, colon, rest = text.partition(":")
    scheme_l = scheme.lower()
    if "%" in rest and _BAD_ESCAPE.search(rest) is not None:
        check_absolute_uri(text)
        raise BadMessage(f"bad %-escape in URI {text[:80]!r}")
    if scheme_l not in SUPPORTED_SCHEMES:
        check_absolute_uri(text)
        raise BadMessage(f"unsupported URI scheme {scheme[:20]!r}", 416)
    if scheme_l == "tel":
        m = _TEL_REST.fullmatch(rest)
        if m is None or not any(c.isdigit() for c in m["number"]):
            raise BadMessage(f"malformed tel URI {text[:80]!r}")
        return URI("tel", m["number"], None, "", None, _split_params(m["params"]), None)
    fast = _parse_sip_fast(rest)
    if fast is not None:
        user, password, host, port, params = fast
        return URI(scheme_l, user, password, host, port, params, None)
    m = _SIP_REST.fullmatch(rest)
    if m is None:
        raise BadMessage(f"malformed URI {text[:80]!r}")
    host = m["host"]
    if not valid_host(host):
        raise BadMessage(f"bad host in URI {text[:80]!r}")
    port = m["port"]
    if port is not None:
        port = int(port)
        if not 0 < port < 65536:
            raise BadMessage(f"bad port in URI {text[:80]!r}")
    return URI(scheme_l, m["user"], m["password"], host, port,
               _split_params(m["params"]), m["headers"])


_USER_RE = re.compile(_USER)
_PASSWORD_RE = re.compile(_PASSWORD)
_PARAMS_RE = re.compile(_PARAMS)


def _parse_sip_fast(rest: str):
    """`[user[:password]@]host[:port][;params]` without '?' or an IPv6
    reference, or None to let the full expression decide. No part of the
    grammar but the user admits '@', so the cut at '@' is the only one the
    full expression could make, and each piece is checked with the same
    character classes."""
    if "?" in rest or "[" in rest:
        return None
    at = rest.find("@")
    user = password = None
    if at >= 0:
        user = rest[:at]
        colon = user.find(":")
        if colon >= 0:
            user, password = user[:colon], user[colon + 1:]
            if _PASSWORD_RE.fullmatch(password) is None:
                return None
        if _USER_RE.fullmatch(user) is None:
            return None
        rest = rest[at + 1:]
    semi = rest.find(";")
    if semi >= 0:
        ptext = rest[semi:]
        rest = rest[:semi]
        if _PARAMS_RE.fullmatch(ptext) is None:
            return None
        params = _split_params(ptext)
    else:
        params = {}
    hostport = simple_hostport(rest)
    if hostport is None:
        return None
    return user, password, hostport[0], hostport[1], params


def check_absolute_uri(text: str) -> None:
    """Raise BadMessage(400) unless `text` looks like an absolute URI of any
    scheme (From/To/Contact may carry schemes a proxy need not understand)."""
    if _ABSOLUTE.fullmatch(text) is None:
        raise BadMessage(f"malformed URI {text[:80]!r}")


def simple_port(text: str) -> int:
    """A port written as 1-5 ASCII digits in 1..65535, or 0 when it is not one."""
    if 0 < len(text) <= 5 and text.isascii() and text.isdigit():
        port = int(text)
        if port < 65536:
            return port
    return 0


def simple_hostport(text: str) -> tuple[str, int | None] | None:
    """The common `host[:port]` (no IPv6 reference), or None to leave the
    text to the full parser."""
    host, colon, port = text.partition(":")
    if not host or host[0] == "[" or not valid_host(host):
        return None
    if not colon:
        return host, None
    port = simple_port(port)
    return (host, port) if port else None


def parse_hostport(text: str) -> tuple[str, int | None]:
    """host[:port] with IPv6 references in brackets (RFC 3261 §25.1)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadMessage(f"unterminated IPv6 reference {text[:60]!r}")
        host, tail = text[: end + 1], text[end + 1:]
        if tail and not tail.startswith(":"):
            raise BadMessage(f"bad host {text[:60]!r}")
        port_text = tail[1:] if tail else None
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            port_text = None
    if not host or not valid_host(host):
        raise BadMessage(f"bad host {text[:60]!r}")
    if port_text is None:
        return host, None
    if _PORT.fullmatch(port_text) is None or not 0 < int(port_text) < 65536:
        raise BadMessage(f"bad port {port_text[:20]!r}")
    return host, int(port_text)


# hostname = *( domainlabel "." ) toplabel [ "." ] (§25.1); labels of at
# most 63 characters that neither start nor end with "-" (RFC 1035). The
# rule that a toplabel starts with a letter is not enforced, so IPv4
# addresses match too. Underscores are tolerated: real deployments use them.
_HOSTNAME = re.compile(r"(?:(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\.)*(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\.?")


# Verdicts of valid_host by host text. Hosts recur (peers, domains, our own
# addresses), and a dict hit is several times cheaper than the expression.
# Bounded, because hosts come from the wire.
_HOST_VERDICTS: dict[str, bool] = {}
_HOST_VERDICTS_MAX = 4096


def valid_host(host: str) -> bool:
    """hostname / IPv4address / IPv6reference (RFC 3261 §25.1)."""
    verdict = _HOST_VERDICTS.get(host)
    if verdict is None:
        verdict = _judge_host(host)
        if len(_HOST_VERDICTS) >= _HOST_VERDICTS_MAX:
            _HOST_VERDICTS.clear()
        _HOST_VERDICTS[host] = verdict
    return verdict


def _judge_host(host: str) -> bool:
    if host[:1] == "[":
        if host[-1] != "]" or "%" in host:
            return False
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return _HOSTNAME.fullmatch(host) is not None


def _split_params(text: str) -> dict[str, str | None]:
    """Parameters already checked by the URI regex: ';a=b;c' -> {'a': 'b', 'c': None}."""
    params: dict[str, str | None] = {}
    if text:
        for item in text[1:].split(";"):
            name, eq, value = item.partition("=")
            params[name.lower()] = value if eq else None
    return params
