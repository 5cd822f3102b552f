"""Digest authentication for SIP (RFC 7616 as RFC 8760 applies it; RFC 2617 MD5).

Pure functions over header values and secrets: parse the credentials a UA
sends, compute H(A1) and the expected response, write the challenges, and
mint and check stateless nonces. Nonce counts (replay) live in the store and
are the caller's business; so are the password or H(A1) lookup and matching
the credentials' uri against the Request-URI.

Algorithm names are canonical as RFC 7616 §6.1 registers them: the upper-case
base name from ALGORITHMS, with "-sess" appended in lower case for the
session variants ("MD5-sess", "SHA-256-sess"). Strings are hashed as UTF-8,
the charset RFC 7616 §4 defines (and SIP messages are UTF-8 anyway).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import unquote_to_bytes

from .headers import unquote_string

__all__ = [
    "ALGORITHMS", "DigestError", "Credentials", "parse_credentials", "find_credentials",
    "canonical_algorithm", "ha1", "userhash", "response", "verify", "challenge",
    "NonceMint", "VALID", "STALE", "INVALID",
]

ALGORITHMS = ("SHA-512-256", "SHA-256", "MD5")  # strongest first

# SHA-512-256 is FIPS 180-4 SHA-512/256 (its own initial values), not a
# truncated SHA-512: RFC 7616 §3.2 says so, and the two digests differ.
_HASHLIB_NAMES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}
_HEX_LENGTHS = {"MD5": 32, "SHA-256": 64, "SHA-512-256": 64}
_SESS = "-sess"

VALID, STALE, INVALID = "valid", "stale", "invalid"


class DigestError(ValueError):
    """Malformed or unsupported credentials; str() is a short reason."""


@dataclass(frozen=True)
class Credentials:
    """One parsed Authorization / Proxy-Authorization value.

    nonce, uri, nc and cnonce are kept exactly as sent, because the client
    hashed them as sent. `username` is the decoded username* when that was
    used, and the hex userhash when `userhash` is true."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str  # lower-case hex
    algorithm: str = "MD5"
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None
    userhash: bool = False


def canonical_algorithm(name: str) -> str:
    """'sha-256-SESS' -> 'SHA-256-sess'; DigestError for an unknown name."""
    upper = name.strip().upper()
    sess = upper.endswith("-SESS")
    base = upper[:-len(_SESS)] if sess else upper
    if base not in _HASHLIB_NAMES:
        raise DigestError(f"unsupported algorithm {name[:40]!r}")
    return base + _SESS if sess else base


def _base(algorithm: str) -> tuple[str, bool]:
    canonical = canonical_algorithm(algorithm)
    if canonical.endswith(_SESS):
        return canonical[:-len(_SESS)], True
    return canonical, False


def _h(base: str, text: str) -> str:
    return hashlib.new(_HASHLIB_NAMES[base], text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ parsing

# auth-scheme, then auth-params (RFC 7235 §2.1). Unquoted values are read
# up to the next comma or blank rather than as strict tokens: deployed UAs
# send uri=sip:... unquoted, and nothing is lost by taking it.
_SCHEME = re.compile(r"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:[ \t]+|\Z)")
_QUOTED = r'"(?:[^"\\\r\n]|\\[^\r\n])*"'
_PARAM = re.compile(
    rf'([!#$%&\'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*({_QUOTED}|[^\s,"]+)[ \t]*(?:,|\Z)'
)
_SEPARATORS = re.compile(r"[ \t,]*")
_NC = re.compile(r"[0-9A-Fa-f]{8}")
_HEX = re.compile(r"[0-9A-Fa-f]+")
# RFC 5987 §3.2.1 ext-value: charset'[language]'value-chars.
_EXT_VALUE = re.compile(r"([A-Za-z0-9!#$%&+^_`{}~-]+)'[A-Za-z0-9-]*'((?:%[0-9A-Fa-f]{2}|[A-Za-z0-9!#$&+.^_`|~-])*)")
_REQUIRED = ("realm", "nonce", "uri", "response")


def _params(text: str) -> dict[str, str]:
    """'a="x, y", b=z' -> {'a': 'x, y', 'b': 'z'}; names lower-case."""
    params: dict[str, str] = {}
    pos, n = 0, len(text)
    while True:
        pos = _SEPARATORS.match(text, pos).end()  # empty list elements are legal
        if pos >= n:
            return params
        m = _PARAM.match(text, pos)
        if m is None:
            raise DigestError(f"malformed parameter at {text[pos:pos + 40]!r}")
        name = m.group(1).lower()
        if name in params:
            # Two values for one name: either reading could be the attacker's.
            raise DigestError(f"duplicate parameter {name!r}")
        params[name] = unquote_string(m.group(2))
        pos = m.end()


def _decode_ext_value(value: str) -> str:
    m = _EXT_VALUE.fullmatch(value)
    if m is None:
        raise DigestError("malformed username*")
    charset = m.group(1).lower()
    if charset not in ("utf-8", "iso-8859-1"):
        raise DigestError(f"unsupported username* charset {charset[:20]!r}")
    try:
        return unquote_to_bytes(m.group(2)).decode(charset)
    except UnicodeDecodeError:
        raise DigestError("username* is not valid in its charset") from None


def parse_credentials(value: str) -> Credentials:
    """One 'Digest username="alice", realm=..., ...' header value -> Credentials."""
    m = _SCHEME.match(value)
    if m is None:
        raise DigestError("no authentication scheme")
    if m.group(1).lower() != "digest":
        raise DigestError(f"scheme {m.group(1)[:20]!r} is not Digest")
    params = _params(value[m.end():])

    if "username" in params and "username*" in params:
        raise DigestError("both username and username*")  # RFC 7616 §3.4.4
    if "username*" in params:
        username = _decode_ext_value(params["username*"])
    elif "username" in params:
        username = params["username"]
    else:
        raise DigestError("missing username")
    for name in _REQUIRED:
        if name not in params:
            raise DigestError(f"missing {name}")

    algorithm = canonical_algorithm(params.get("algorithm", "MD5"))
    base, sess = _base(algorithm)
    digest = params["response"]
    if _HEX.fullmatch(digest) is None or len(digest) != _HEX_LENGTHS[base]:
        raise DigestError(f"response is not a {base} digest")

    qop, nc, cnonce = params.get("qop"), params.get("nc"), params.get("cnonce")
    if qop is not None:
        if qop.lower() != "auth":
            raise DigestError(f"unsupported qop {qop[:20]!r}")  # auth-int needs the body
        qop = "auth"
        if cnonce is None or nc is None:
            raise DigestError("qop without cnonce and nc")
        if _NC.fullmatch(nc) is None:
            raise DigestError("nc is not 8 hex digits")
    else:
        # Without qop only the RFC 2617 MD5 forms exist; RFC 7616 §3.4
        # makes qop mandatory for everything it added.
        if base != "MD5":
            raise DigestError(f"{base} requires qop")
        if nc is not None:
            raise DigestError("nc without qop")
        if sess and cnonce is None:
            raise DigestError("-sess without cnonce")

    flag = params.get("userhash", "false").lower()
    if flag not in ("true", "false"):
        raise DigestError("userhash is neither true nor false")

    return Credentials(
        username=username, realm=params["realm"], nonce=params["nonce"], uri=params["uri"],
        response=digest.lower(), algorithm=algorithm, cnonce=cnonce, nc=nc, qop=qop,
        opaque=params.get("opaque"), userhash=flag == "true",
    )


def find_credentials(values: list[str], realm: str) -> Credentials | None:
    """The first well-formed Digest credentials for `realm` (compared
    exactly) among header values; a UA may send one per realm or scheme, and
    one malformed value must not hide a good one."""
    for value in values:
        try:
            creds = parse_credentials(value)
        except DigestError:
            continue
        if creds.realm == realm:
            return creds
    return None


# ------------------------------------------------------------------ hashing

def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password) in hex (RFC 7616 §3.4.2). For a -sess
    algorithm this is the base the session H(A1) is built on per request,
    so a stored H(A1) serves both variants."""
    base, _ = _base(algorithm)
    return _h(base, f"{username}:{realm}:{password}")


def userhash(algorithm: str, username: str, realm: str) -> str:
    """H(username:realm), what a UA sends as username with userhash=true (RFC 7616 §3.4.4)."""
    base, _ = _base(algorithm)
    return _h(base, f"{username}:{realm}")


def response(algorithm: str, ha1_hex: str, *, nonce: str, nc: str | None, cnonce: str | None,
             qop: str | None, method: str, uri: str) -> str:
    """The request-digest (RFC 7616 §3.4.1 with qop=auth; RFC 2617 §3.2.2.1
    without qop, H(HA1:nonce:HA2))."""
    base, sess = _base(algorithm)
    if sess:
        ha1_hex = _h(base, f"{ha1_hex}:{nonce}:{cnonce or ''}")  # RFC 7616 §3.4.2
    ha2 = _h(base, f"{method}:{uri}")
    if qop:
        return _h(base, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(base, f"{ha1_hex}:{nonce}:{ha2}")


def verify(creds: Credentials, method: str, ha1_hex: str) -> bool:
    """Whether creds.response is right for `method` and the H(A1) the caller
    looked up (of creds.algorithm's base hash). Checks the digest only: the
    nonce, its count and the uri are the caller's to check."""
    expected = response(creds.algorithm, ha1_hex.lower(), nonce=creds.nonce, nc=creds.nc,
                        cnonce=creds.cnonce, qop=creds.qop, method=method, uri=creds.uri)
    return hmac.compare_digest(expected, creds.response.lower())


# ---------------------------------------------------------------- challenge

def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(realm: str, nonce: str, algorithms: Sequence[str], *, stale: bool = False,
              opaque: str | None = None) -> list[str]:
    """WWW-Authenticate / Proxy-Authenticate values, one per algorithm in the
    order given (RFC 8760 §2.3: one per algorithm, most preferred first; the
    UA takes the first it supports, so the caller passes the strongest first)."""
    if not algorithms:
        raise ValueError("challenge needs at least one algorithm")
    head = f"Digest realm={_quote(realm)}, nonce={_quote(nonce)}"
    if opaque is not None:
        head += f", opaque={_quote(opaque)}"
    tail = ', qop="auth"' + (", stale=true" if stale else "")
    values = []
    for name in algorithms:
        try:
            algorithm = canonical_algorithm(name)
        except DigestError as exc:
            raise ValueError(str(exc)) from None  # a configuration error, not the wire's
        values.append(f"{head}, algorithm={algorithm}{tail}")
    return values


# ------------------------------------------------------------------- nonces

_NONCE_LABEL = b"babelsip digest nonce v1\x00"  # keeps these tags apart from other uses of the secret
_STAMP_BYTES, _RANDOM_BYTES, _TAG_BYTES = 8, 8, 16
_NONCE_BYTES = _STAMP_BYTES + _RANDOM_BYTES + _TAG_BYTES
_NONCE_TEXT = re.compile(r"[A-Za-z0-9_-]{%d}" % -(-_NONCE_BYTES * 4 // 3))


class NonceMint:
    """Stateless nonces: base64url(issued_at ms (8 bytes) + 8 random bytes +
    HMAC-SHA256(secret, those 16 bytes) truncated to 16), without padding,
    so it is legal in a quoted string and any core holding the secret can
    check it without per-nonce state. The clock (seconds) and the random
    source are injected: host/sip reads neither itself."""

    def __init__(self, secret: bytes, lifetime: float = 300.0, *, clock: Callable[[], float],
                 random_bytes: Callable[[int], bytes], skew: float = 5.0):
        if len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        self._secret = bytes(secret)
        self.lifetime = lifetime
        self.skew = skew  # how far ahead another core's clock may be
        self._clock = clock
        self._random_bytes = random_bytes

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _NONCE_LABEL + payload, hashlib.sha256).digest()[:_TAG_BYTES]

    def mint(self) -> str:
        stamp = int(self._clock() * 1000).to_bytes(_STAMP_BYTES, "big")
        salt = self._random_bytes(_RANDOM_BYTES)
        if len(salt) != _RANDOM_BYTES:
            raise ValueError("random_bytes returned the wrong length")
        payload = stamp + salt
        return base64.urlsafe_b64encode(payload + self._tag(payload)).rstrip(b"=").decode("ascii")

    def check(self, nonce: str) -> str:
        """VALID, STALE (ours but older than the lifetime) or INVALID."""
        if _NONCE_TEXT.fullmatch(nonce) is None:
            return INVALID
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        # One nonce, one spelling: the trailing bits must be zero too.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != nonce:
            return INVALID
        payload, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(payload)):
            return INVALID
        age = self._clock() - int.from_bytes(payload[:_STAMP_BYTES], "big") / 1000
        if age < -self.skew:
            return INVALID
        return STALE if age > self.lifetime else VALID
