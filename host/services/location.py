"""Addresses-of-record as the route and the host calls name them.

A route says `sip:alice@127.0.0.1` or `sip:alice@example.com`; the store keys
bindings by the canonical AoR (host.sip.registrar.address_of_record), in
which every name of this server is one domain. The server installs its
local-domain test here at start, so the host calls (registrar.lookup) and the
registrar agree on the key without being handed the server.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

from host.sip.decision import Decision, Target
from host.sip.errors import BadMessage
from host.sip.flows import flow_token, owner_route
from host.sip.headers import parse_name_addr, split_commas
from host.sip.message import Request
from host.sip.nat import is_private
from host.sip.proxy_rules import sent_from_behind_nat
from host.sip.uri import parse_uri
from host.sip.registrar import (RegistrarError, Settings, address_of_record, apply_update,
                                branch_groups, live, ok_headers, parse_register)
from host.storage import Store, StoreUnavailable

# Lookups the location service may answer from its last reads while the store
# is down: how old, and how many AoRs (the most recently read).
FALLBACK_SECONDS = 60.0
FALLBACK_MAX = 10_000

_local_domain: Callable[[str, int | None], str | None] = lambda host, port: None


def set_local_domain(test: Callable[[str, int | None], str | None]) -> None:
    """`test(host, port)` returns the canonical domain when host:port is ours."""
    global _local_domain
    _local_domain = test


def local_domain(host: str, port: int | None) -> str | None:
    """This server's domain name when host[:port] names it, else None."""
    return _local_domain(host, port)


def canonical_aor(uri: str) -> str:
    return address_of_record(uri, _local_domain)


def binding_record(binding, now: float) -> dict:
    """A binding as routes see it (registrar.lookup): plain JSON."""
    transport, ip, port = binding.source
    return {"contact": binding.contact, "expires": binding.expires_in(now), "q": binding.q,
            "received": f"{ip}:{port}", "transport": transport, "path": list(binding.path),
            "user_agent": binding.user_agent, "instance": binding.instance,
            "reg_id": binding.reg_id}


async def binding_records(store: Store, aor: str) -> list[dict]:
    """The live bindings of `aor`, best q first, for the registrar.lookup host call."""
    now = time.time()
    found = live(await store.bindings(canonical_aor(aor)), now)
    found.sort(key=lambda b: -b.q)
    return [binding_record(b, now) for b in found]


class LocationService:
    """`save` and `lookup` for the shell: the registrar's rules (host/sip/
    registrar.py) run against the store, and bindings turned into branches."""

    def __init__(self, store: Store, settings: Settings, *, core: str,
                 on_change: Callable[[str, list, list], None] | None = None,
                 clock: Callable[[], float] = time.time, flow_secret: bytes | None = None):
        self.store = store
        self.settings = settings
        self.core = core
        self.on_change = on_change   # (aor, bindings before, after): keepalive follows NATed flows
        self.flow_secret = flow_secret   # to ask the core owning a flow to deliver over it
        self.clock = clock
        self.registrations = 0
        self.refused = 0
        self._recent: dict[str, tuple[float, list]] = {}   # aor -> (read at, bindings)
        self.fallbacks = 0

    async def save(self, req: Request, source: tuple[str, str, int], opts: dict) -> Decision:
        """The answer to a REGISTER (RFC 3261 §10.3): 200 with every binding,
        or the error the rules found; nothing stored unless all of it applies."""
        settings = self.settings
        overrides = {k: opts[k] for k in ("min_expires", "max_expires", "default_expires",
                                          "max_contacts") if k in opts}
        if overrides:
            settings = replace(settings, **overrides)
        try:
            if req.method != "REGISTER":
                raise RegistrarError(405, "Method Not Allowed: save() takes a REGISTER",
                                     [("Allow", "REGISTER")])
            aor = canonical_aor(opts.get("aor") or _to_uri(req))
            update = parse_register(req, settings, source=source, core=self.core, now=self.clock())
            update.nat = registered_behind_nat(req, source)

            def change(current):
                after = apply_update(current, update, settings)
                return after, (current, after)

            before, after = await self.store.update_bindings(aor, change)
        except RegistrarError as exc:
            self.refused += 1
            return Decision(verb="reply", code=exc.status, reason=exc.reason, headers=list(exc.headers))
        self.registrations += 1
        if self.store.networked:
            self._remember(aor, after)   # a lookup during an outage finds it too
        if self.on_change is not None and (before or after):
            self.on_change(aor, before, after)
        return Decision(verb="reply", code=200, headers=ok_headers(after, update))

    async def lookup(self, req: Request, opts: dict, uri: str | None = None) -> Decision:
        """Relay to the live bindings of the request URI's AoR, best q first
        (equal q forked in parallel), each reached where it registered from
        when it is behind a NAT or on a connection; else the route's answer."""
        try:
            aor = canonical_aor(opts.get("aor") or uri or req.uri)
        except RegistrarError as exc:
            return Decision(verb="reply", code=exc.status, reason=exc.reason)
        groups = branch_groups(await self._bindings(aor), self.clock())
        if not groups:
            return Decision(verb="reply", code=opts.get("code", 404), reason=opts.get("reason", ""))
        branches = [[self.target(b) for b in group] for group in groups]
        return Decision(verb="relay", branches=branches, timeout=opts.get("timeout"))


    async def _bindings(self, aor: str) -> list:
        """The store's bindings of `aor`. While the store is unreachable, the
        last ones read here in the past FALLBACK_SECONDS stand in (calls to
        phones that just registered keep working through a Redis restart);
        the store stays the source of truth: every read that succeeds
        replaces them, and they are never served older than that."""
        if not self.store.networked:
            return await self.store.bindings(aor)
        cache = self._recent
        try:
            found = await self.store.bindings(aor)
        except StoreUnavailable:
            kept = cache.get(aor)
            if kept is None or kept[0] < self.clock() - FALLBACK_SECONDS:
                raise
            self.fallbacks += 1
            return kept[1]
        self._remember(aor, found)
        return found

    def _remember(self, aor: str, bindings: list) -> None:
        cache = self._recent
        cache.pop(aor, None)
        cache[aor] = (self.clock(), bindings)
        while len(cache) > FALLBACK_MAX:
            del cache[next(iter(cache))]   # the oldest read first


    def target(self, binding) -> Target:
        """binding_target, and when the binding's flow lives on another core
        of the cluster, the branch goes through that core (flows.py)."""
        if (binding.core != self.core and self.flow_secret is not None and not binding.path
                and (binding.nat or binding.source[0] != "udp")):
            return Target(binding.contact,
                          (owner_route(binding.core, flow_token(self.flow_secret, binding.source)),))
        return binding_target(binding)


def binding_target(binding) -> Target:
    """Where a request for this binding goes: its Path first (RFC 3327); else,
    over a connection (the flow it registered on, RFC 5626) or from behind a
    NAT, the address its REGISTER came from; else the Contact itself."""
    if binding.path:
        return Target(binding.contact, tuple(binding.path))
    if binding.source[0] != "udp" or binding.nat:
        return Target(binding.contact, (), binding.source)
    return Target(binding.contact)


def registered_behind_nat(req: Request, source) -> bool:
    """RFC 3581's test: the UA's top Via names another address than the
    one its REGISTER came from (it cannot know its public address), or a
    Contact names a private address other than the source. A Contact at
    another public address is a third-party registration, not a NAT."""
    if sent_from_behind_nat(req, *source):
        return True
    ip = source[1]
    for value in req.header_values("contact"):
        for one in split_commas(value):
            try:
                host = parse_uri(parse_name_addr(one).uri).host.strip("[]")
            except BadMessage:
                continue
            if host != ip and is_private(host):
                return True
    return False


def _to_uri(req: Request) -> str:
    value = req.header("to")
    if value is None:
        raise RegistrarError(400, "Missing To")
    try:
        return parse_name_addr(value).uri
    except BadMessage:
        raise RegistrarError(400, "Bad To") from None
