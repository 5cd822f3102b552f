"""Where the shell turns a decision that asks for a service into one the
proxy core applies: `authenticate` into the challenge or nothing, `save`
into the REGISTER's answer, `lookup` into branches to the bindings.

The core is synchronous and knows no store; the services wait on the store.
So the shell resolves such a decision here, between the route's answer and
`ProxyCore.decided`, and the core only ever sees reply and relay.
"""

from __future__ import annotations

import hashlib
import logging
import os

from host.sip.decision import Decision
from host.sip.message import Request
from host.sip.registrar import Settings
from host.storage import Store, StoreUnavailable

from .auth import DEFAULT_ALGORITHMS, Authenticator
from .location import LocationService

log = logging.getLogger("babelsip.services")

SERVICE_VERBS = ("save", "lookup")
STORE_RETRY_AFTER = 10   # seconds a UA waits before retrying while the store is down


def needs_services(d: Decision) -> bool:
    return d.auth is not None or d.verb in SERVICE_VERBS


class Services:
    def __init__(self, store: Store, *, core: str, routes_dir: str | None = None,
                 registrar: Settings | None = None, secret: bytes | None = None,
                 algorithms=DEFAULT_ALGORITHMS, on_bindings_change=None):
        secret = secret or cluster_secret()
        self.auth = Authenticator(store, hashlib.sha256(b"nonces\x00" + secret).digest(),
                                  routes_dir=routes_dir, algorithms=algorithms)
        self.location = LocationService(store, registrar or Settings(), core=core,
                                        on_change=on_bindings_change,
                                        flow_secret=flow_secret(secret))
        self.errors = 0

    async def resolve(self, request: Request, source, d: Decision) -> Decision:
        """The decision with its services done (see the module doc)."""
        try:
            return await self._resolve(request, source, d)
        except StoreUnavailable as exc:
            # The store is down (Redis restarting): the UA tries again later;
            # nothing it registered before is lost (the store keeps it).
            self.errors += 1
            log.warning("%s %s: %s", request.method, request.call_id, exc)
            return Decision(verb="reply", code=503, reason="Store Unavailable", vars=d.vars,
                            headers=[("Retry-After", str(STORE_RETRY_AFTER))])
        except Exception:
            # A store that fails must cost this request an answer, not the call's order.
            self.errors += 1
            log.exception("service for %s %s failed", request.method, request.call_id)
            return Decision(verb="reply", code=500, reason="Service Failure", vars=d.vars,
                            headers=[("Retry-After", "5")])

    async def _resolve(self, request: Request, source, d: Decision) -> Decision:
        if d.auth is not None:
            opts, d.auth = d.auth, None
            if request.method not in ("ACK", "CANCEL"):   # never challenged (RFC 3261 §22.1)
                answer = await self.auth.check(request, opts)
                if answer is not None:
                    answer.vars = d.vars
                    return answer
        if d.verb == "save":
            answer = await self.location.save(request, source, d.options)
        elif d.verb == "lookup":
            answer = await self.location.lookup(request, d.options, _edited_ruri(d))
            answer.edits, answer.dialog = d.edits, d.dialog
        else:
            return d
        answer.vars = d.vars
        return answer

    def statistics(self) -> dict:
        return {"auth": vars(self.auth.stats), "registrations": self.location.registrations,
                "registrations_refused": self.location.refused, "errors": self.errors}


def cluster_secret() -> bytes:
    """The secret the cores of one cluster share (BABELSIP_AUTH_SECRET), as a
    full-size key: digest nonces validate on every core that holds it, and
    cores accept each other's flow tokens. Without it each process draws its
    own: nonces validate only there (until it restarts), and no other core
    can relay through it."""
    secret = os.environ.get("BABELSIP_AUTH_SECRET", "").encode()
    if secret and len(secret) < 16:
        log.warning("BABELSIP_AUTH_SECRET is shorter than 16 bytes: nonces are easier to forge")
    return hashlib.sha256(secret).digest() if secret else os.urandom(32)


def flow_secret(secret: bytes) -> bytes:
    """The key for flow tokens (host/sip/flows.py), apart from the nonces' one."""
    return hashlib.sha256(b"flows\x00" + secret).digest()


def _edited_ruri(d: Decision) -> str | None:
    uri = None
    for edit in d.edits:
        if edit[0] == "set_ruri":
            uri = edit[1]
    return uri
