"""Digest authentication as the `authenticate` verb asks for it (RFC 7616,
RFC 8760): check the request's credentials, or say which challenge to send.

The digest arithmetic and the stateless nonces are host/sip/digest.py; what
this adds is the state that cannot be stateless — the nonce-count high-water
mark of each nonce, kept in the store so a replayed request is refused by
every core — and the credentials files beside the routes.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from host.sip import digest
from host.sip.decision import Decision
from host.sip.message import Request
from host.sip.headers import uri_of
from host.sip.uri import parse_uri
from host.sip.errors import BadMessage
from host.storage import Store

log = logging.getLogger("babelsip.auth")

DEFAULT_ALGORITHMS = ("MD5",)   # deployed clients break on anything else (issue 9)
NONCE_LIFETIME = 300.0          # seconds a nonce is accepted; then stale=true


@dataclass
class AuthStats:
    challenges: int = 0
    accepted: int = 0
    wrong: int = 0          # a digest that does not match the password
    stale: int = 0
    replayed: int = 0       # a nonce-count not above the last one seen
    forbidden: int = 0      # good credentials, but for another user


class Authenticator:
    def __init__(self, store: Store, secret: bytes, *, routes_dir: str | None = None,
                 lifetime: float = NONCE_LIFETIME, algorithms=DEFAULT_ALGORITHMS):
        self.store = store
        self.mint = digest.NonceMint(secret, lifetime, clock=time.time,
                                     random_bytes=secrets.token_bytes)
        self.lifetime = lifetime
        self.algorithms = tuple(algorithms)
        self.files = CredentialsFiles(routes_dir)
        self.stats = AuthStats()

    async def check(self, req: Request, opts: dict) -> Decision | None:
        """None when the request carries valid credentials for opts' realm;
        otherwise the answer to send instead of the route's decision."""
        realm = opts["realm"]
        algorithms = [a for a in digest.ALGORITHMS if a in (opts.get("algorithms") or self.algorithms)]
        register = req.method == "REGISTER"
        creds = digest.find_credentials(
            req.header_values("authorization" if register else "proxy-authorization"), realm)
        if creds is None or _base(creds.algorithm) not in algorithms:
            return self._challenge(req, realm, algorithms)
        nonce_state = self.mint.check(creds.nonce)
        if nonce_state == digest.INVALID:
            return self._challenge(req, realm, algorithms)
        ha1 = self._ha1(creds, realm, opts)
        if ha1 is None or not _same_uri(creds.uri, req.uri) or not digest.verify(creds, req.method, ha1):
            self.stats.wrong += 1
            return self._challenge(req, realm, algorithms)
        if nonce_state == digest.STALE:
            # The password was right: only the nonce is old (RFC 7616 §3.3).
            self.stats.stale += 1
            return self._challenge(req, realm, algorithms, stale=True)
        if creds.qop is None:
            return self._challenge(req, realm, algorithms)  # we always offer qop=auth
        fresh = await self.store.advance(creds.nonce, int(creds.nc, 16),
                                         self.lifetime + 60.0)
        if not fresh:
            self.stats.replayed += 1
            return self._challenge(req, realm, algorithms)
        if opts.get("identity", True) and creds.username != _identity_user(req):
            self.stats.forbidden += 1
            return Decision(verb="reply", code=403, reason="Forbidden: credentials of another user")
        self.stats.accepted += 1
        return None

    def _ha1(self, creds, realm: str, opts: dict) -> str | None:
        algorithm = _base(creds.algorithm)
        password, ha1 = opts.get("password"), opts.get("ha1")
        if opts.get("credentials") is not None:
            entry = self.files.lookup(opts["credentials"], creds.username, realm)
            if entry is None:
                return None
            password, ha1 = entry
        if password is not None:
            return digest.ha1(creds.algorithm, creds.username, realm, password)
        if isinstance(ha1, str):
            return ha1.lower() if algorithm == "MD5" else None
        if isinstance(ha1, dict):
            value = ha1.get(algorithm)
            return value.lower() if value else None
        return None

    def _challenge(self, req: Request, realm: str, algorithms, stale: bool = False) -> Decision:
        self.stats.challenges += 1
        register = req.method == "REGISTER"
        name = "WWW-Authenticate" if register else "Proxy-Authenticate"
        values = digest.challenge(realm, self.mint.mint(), algorithms, stale=stale)
        return Decision(verb="reply", code=401 if register else 407,
                        headers=[(name, v) for v in values])


def _base(algorithm: str) -> str:
    """SHA-256-sess -> SHA-256: the -sess variants are offered with their base."""
    upper = algorithm.upper()
    return upper[:-5] if upper.endswith("-SESS") else upper


def _identity_user(req: Request) -> str | None:
    # Who the request claims to be: the AoR being registered, or the caller.
    uri = uri_of(req.header("to" if req.method == "REGISTER" else "from"))
    try:
        return parse_uri(uri).user_unescaped if uri else None
    except BadMessage:
        return None


def _same_uri(digest_uri: str, request_uri: str) -> bool:
    """RFC 7616 §3.4.6: the credentials are for this request's URI. Compared
    as URIs (a UA may write the same one differently), leniently on params."""
    if digest_uri == request_uri:
        return True
    try:
        a, b = parse_uri(digest_uri), parse_uri(request_uri)
    except BadMessage:
        return False
    return (a.scheme, a.user, a.host.lower(), a.port) == (b.scheme, b.user, b.host.lower(), b.port)


class CredentialsFiles:
    """Credentials files beside the routes, re-read when they change.

    One entry per line: `user:password`, or htdigest's `user:realm:ha1` (MD5
    HA1, hex); `#` starts a comment. A bad line is logged with file and line
    and skipped; a missing file authenticates nobody."""

    def __init__(self, routes_dir: str | None):
        self.dir = Path(routes_dir) if routes_dir else None
        self._cache: dict[str, tuple[float, dict]] = {}

    def lookup(self, name: str, user: str, realm: str):
        """(password, ha1) for user in realm, either one None; None if unknown."""
        entries = self._load(name)
        entry = entries.get((user, realm)) or entries.get((user, None))
        return entry

    def _load(self, name: str) -> dict:
        if self.dir is None:
            return {}
        path = self.dir / name
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            if name not in self._cache or self._cache[name][0] != -1:
                log.warning("credentials file %s: cannot be read", path)
                self._cache[name] = (-1, {})
            return {}
        cached = self._cache.get(name)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        entries = parse_credentials_file(path)
        self._cache[name] = (mtime, entries)
        return entries


def parse_credentials_file(path: Path) -> dict:
    entries: dict = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("credentials file %s: %s", path, exc)
        return entries
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) == 3 and parts[0] and len(parts[2]) == 32 and _hex(parts[2]):
            entries[(parts[0], parts[1])] = (None, parts[2].lower())
        elif len(parts) >= 2 and parts[0] and line.partition(":")[2]:
            entries[(parts[0], None)] = (line.partition(":")[2], None)  # a password may hold ':'
        else:
            log.warning("%s:%d: not 'user:password' or 'user:realm:md5-ha1'; line skipped",
                        path, number)
    return entries


def _hex(text: str) -> bool:
    try:
        int(text, 16)
        return True
    except ValueError:
        return False
