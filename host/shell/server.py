"""The trio shell around the sans-IO proxy core.

Wires transports, the timer service and (optionally) the route registry to
one `ProxyCore`, and executes the actions the core returns. Everything runs
on one trio task tree; the core is only ever entered from one task at a
time, so it needs no locks.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
from dataclasses import dataclass, field

import trio

from host.routes.event import script_event
from host.services.auth import DEFAULT_ALGORITHMS
from host.services.desk import Services, cluster_secret, flow_secret, needs_services
from host.services.dialogs import DialogMirror
from host.services.keepalive import KeepaliveService
from host.sip.actions import DialogChange, KeepaliveAnswer, Locate
from host.services.location import set_local_domain
from host.sip.decision import Decision
from host.sip.locate import is_ip
from host.sip.proxy import Arm, Consult, Disarm, ProxyCore, Transmit
from host.sip.registrar import Settings
from host.storage import shared_store

from host.fleet.handoff import Handoff
from host.fleet.ownership import keepalive_salt, owner_of

from .collector import settle_for_serving
from .limits import raise_nofile_limit
from .resolver import Resolver
from .timers import TimerService
from .transports import make_transport, tls_layers

log = logging.getLogger("babelsip")

CONNECTING_REMEMBERED = 30.0   # > the TCP connect timeout (host/shell/tcp.py)


@dataclass
class ServerConfig:
    listen: list[tuple[str, str, int]]          # (transport, host, port)
    relay_to: str | None = None
    routes_dir: str | None = None
    names: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    registrar: Settings = field(default_factory=Settings)
    auth_algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    # How the other cores reach this one (host:port), kept in the bindings
    # whose flows it owns; default: its first UDP listener.
    core_id: str | None = None
    # The management API's listeners (host/management/service.py); None: none.
    management: object | None = None
    # One worker of --workers N: what it inherited (host/fleet/spec.py).
    fleet: "WorkerSpec | None" = None
    # Called once every socket is bound, with the management socket's path:
    # --user (host/privileges/handover.py drop).
    drop_privileges: object | None = None


def _id_source():
    # Branch ids must be unique across restarts of the process: prefix a
    # per-process random part to a counter.
    prefix = os.urandom(4).hex()
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):x}"


class RouteCall:
    """One consult of the core on its way through a route: the core's
    `Consult` turned into the event a script sees (built here, at the routes
    boundary; lazy in its headers and body), and the route once picked."""
    __slots__ = ("token", "hook", "event", "route", "call_id", "request", "source")

    def __init__(self, consult: Consult):
        self.token, self.hook, self.route = consult.token, consult.hook, consult.route
        self.request, self.source = consult.request, consult.source
        self.call_id = consult.request.call_id
        self.event = script_event(consult)


class Server:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.transports: dict[str, object] = {}
        self.core: ProxyCore | None = None
        self.timers = TimerService(self._on_timer)
        self.registry = None
        self._nursery: trio.Nursery | None = None
        self.resolver: Resolver | None = None   # RFC 3263 next hops (resolver.py)
        self.flood = config.extra.get("flood")   # per-source limits (flood.py), or None
        self._families = ("A",)
        self._consulting: dict[str, collections.deque] = {}  # call-id -> events waiting
        self._connecting: dict[tuple, list] = {}    # (transport, host, port) -> error keys of sends opening it
        self._connecting_since: collections.deque = collections.deque()
        self.internal_errors = 0
        self.store = shared_store()
        self.core_id = config.core_id          # set from the first listener at start
        self.secret = cluster_secret()
        self.services: Services | None = None
        self.dialogs = DialogMirror(self.store)
        self.keepalive: KeepaliveService | None = None
        self.handoff: Handoff | None = None
        self.management: dict | None = None   # where the management API listens, once started

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        bound = []
        raise_nofile_limit()  # one descriptor per TCP connection: take all we may
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if hasattr(self.store, "run"):   # a networked store holds its client open here
                await nursery.start(self.store.run)
            fleet = cfg.fleet
            layers = tls_layers(cfg.listen, cfg.extra.get("tls"))
            for transport, host, port in cfg.listen:
                t = make_transport(transport, host, port,
                                   on_message=self._guarded(self._input_for(transport), transport),
                                   on_error=self._connect_failed(transport), extra=cfg.extra, layers=layers,
                                   inherited=fleet.socket_for(transport, host, port) if fleet is not None else None,
                                   on_connection=self._holding(transport) if fleet is not None else None)
                if transport != "udp":
                    await t.bind()
                self.transports.setdefault(transport, t)
                bound.append((transport, host, t.port))
            udp = next((b for b in bound if b[0] == "udp"), None)
            if self.core_id is None:
                # How the other cores of the cluster reach this one (flows.py).
                _, host, port = udp or bound[0]
                self.core_id = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            # The advertised host is ours too: the other cores' Routes name it.
            advertised = self.core_id.rpartition(":")[0].strip("[]")
            names = cfg.names + ((advertised,) if advertised not in cfg.names else ())
            self.resolver = Resolver(cfg.extra.get("dns_servers"))
            self._families = _families(bound)
            self.core = ProxyCore(bound, relay_to=cfg.relay_to, new_id=_id_source(), names=names,
                                  clock=trio.current_time, flow_secret=flow_secret(self.secret),
                                  locating=True)
            set_local_domain(self.core.local.domain_of)
            if fleet is not None:
                self.handoff = Handoff(fleet.index, fleet.peer_sockets(),
                                       on_message=self._receive, on_send=self._send_held,
                                       held=self._held)
                await nursery.start(self.handoff.run)
            interval = cfg.extra.get("keepalive", 0)
            if interval and udp is not None:
                self.keepalive = KeepaliveService(
                    interval, self.store, self._send_udp, core=self.core_id, local=udp,
                    salt=keepalive_salt(fleet.index) if fleet is not None else "")
                await nursery.start(self.keepalive.run)
            self.services = Services(self.store, core=self.core_id, routes_dir=cfg.routes_dir,
                                     secret=self.secret,
                                     registrar=cfg.registrar, algorithms=cfg.auth_algorithms,
                                     on_bindings_change=self.keepalive.bindings_changed
                                     if self.keepalive is not None else None)
            # The management listeners are sockets too: bound before the drop.
            if cfg.management is not None:
                from host.management.local import LocalAdapter
                from host.management.service import run_management
                self.management = await nursery.start(run_management, LocalAdapter(self), cfg.management)
            if cfg.drop_privileges is not None:
                cfg.drop_privileges((self.management or {}).get("ctl_socket"))
            if cfg.routes_dir is not None:
                from host.routes.registry import RouteRegistry
                from host.routes.runtimes_table import default_runtime_factory
                self.registry = RouteRegistry(cfg.routes_dir, runtime_factory=default_runtime_factory)
                await nursery.start(self.registry.run)
            await nursery.start(self.timers.run)
            await nursery.start(self.dialogs.run)
            for t in self.transports.values():
                await nursery.start(t.serve)
            # What exists now lives as long as the server, and calls need no
            # collector: no full collection while serving (collector.py).
            settle_for_serving()
            if fleet is None:
                for transport, host, port in bound:
                    log.info("listening on %s:%s:%d", transport, host, port)
            else:   # the parent says where, once every worker serves
                log.info("worker %d of %d serving (pid %d)", fleet.index, fleet.count, os.getpid())
            task_status.started(bound)

    # ------------------------------------------------------------- input
    def _receive(self, data: bytes, transport: str, src) -> None:
        try:
            self._execute(self.core.receive(data, transport, src))
        except Exception:
            self._internal_error(f"{transport} message", src, data)

    def _guarded(self, on_message, transport: str):
        """`on_message` behind the per-source flood limits, if configured."""
        if self.flood is None:
            return on_message
        return self.flood.wrap(on_message, lambda data, host, port: self.transports[transport].send(data, host, port))

    def _input_for(self, transport: str):
        """What a transport calls with each message it receives. One worker
        of several hands a message whose Call-ID another worker owns to it
        (host/fleet/ownership.py); a connection's messages are handed over
        like datagrams, and the connection stays here (its holder)."""
        receive = self._receive
        fleet = self.config.fleet
        if fleet is None:
            return lambda data, src: receive(data, transport, src)
        count, me = fleet.count, fleet.index

        def owned(data: bytes, src) -> None:
            owner = owner_of(data, count)
            if owner is not None and owner != me:
                self.handoff.hand(owner, data, transport, src)   # a TCP connection stays here
            else:
                receive(data, transport, src)
        return owned

    def _send_held(self, data: bytes, transport: str, host: str, port: int) -> None:
        """Another worker's message for a connection this worker holds."""
        stream = self.transports.get(transport)
        if stream is not None and transport != "udp":
            stream.send(data, host, port)

    def _holding(self, transport: str):
        """What a stream transport calls when a connection opens or ends:
        the other workers learn who holds it (host/fleet/handoff.py)."""
        def holding(remote, held: bool) -> None:
            if self.handoff is not None:
                self.handoff.holding(transport, remote, held)
        return holding

    def _held(self) -> list[tuple[str, str, int]]:
        return [(name, *remote) for name, t in self.transports.items() if name != "udp"
                for remote in t.connections()]

    def _internal_error(self, what, src, data=b"") -> None:
        # The last line of defence: a bug met by one message costs that
        # message (logged with its traceback and counted), not the server.
        self.internal_errors += 1
        log.exception("internal error on %s from %s; first line %r", what, src,
                      data.split(b"\r\n", 1)[0][:120])

    def _note_connecting(self, remote, error_key) -> None:
        """A send that opens a connection: if connecting fails, its
        transaction hears of it at once (§17.1.4: a 503), not at Timer B."""
        now = trio.current_time()
        waiting = self._connecting.get(remote)
        if waiting is None:
            waiting = self._connecting[remote] = []
            self._connecting_since.append((now, remote))
        if len(waiting) < 256:
            waiting.append(error_key)
        # Connections that opened are never reported: forget them once any
        # connect attempt would have failed.
        since = self._connecting_since
        while since and since[0][0] < now - CONNECTING_REMEMBERED:
            self._connecting.pop(since.popleft()[1], None)

    def _connect_failed(self, transport: str):
        """What a stream transport calls when a connection ended with sends
        still queued (it never opened, or a handshake or upgrade failed):
        the sends that opened it fail (their branches fail over, or get 503)."""
        def failed(remote) -> None:
            log.debug("%s connection to %s:%s failed", transport, *remote)
            for key in self._connecting.pop((transport, *remote), ()):
                try:
                    self._execute(self.core.transport_error(key))
                except Exception:
                    self._internal_error(f"{transport} error", remote)
        return failed

    def _on_timer(self, key) -> None:
        try:
            self._execute(self.core.timer(key))
        except Exception:
            self._internal_error("timer", key[:2])

    # ----------------------------------------------------------- actions
    def _execute(self, actions) -> None:
        for action in actions:
            cls = type(action)
            if cls is Transmit:
                self._transmit(action)
            elif cls is Arm:
                self.timers.start(action.delay, action.key)
            elif cls is Disarm:
                self.timers.cancel(action.key)
            elif cls is Consult:
                self._queue_consult(RouteCall(action))
            elif cls is DialogChange:
                self.dialogs.submit(action)
            elif cls is KeepaliveAnswer:
                if self.keepalive is not None:
                    self.keepalive.answered(action.branch)
            elif cls is Locate:
                self._locate(action)

    def _transmit(self, action: Transmit) -> None:
        transport = self.transports.get(action.transport)
        if transport is None:
            self._report_error(action)
            return
        host = action.host
        if action.alt is not None and not self._connected(action.transport, transport, host, action.port):
            action.host, action.port = action.alt
            action.alt = None
            host = action.host
        name = action.name   # what a TLS peer's certificate must name (RFC 5922)
        if not _is_address(host):
            # A name the core did not locate (a response's Via, a request we
            # originate): its address records only (RFC 3263 §4.2, §5), at
            # the port we have; a TLS peer is checked against that name.
            found = self.resolver.locate_nowait("sip", host, action.port, action.transport,
                                                frozenset((action.transport,)), self._families)
            if found is None:
                self._nursery.start_soon(self._resolve_and_send, action, transport)
                return
            if not found:
                self._report_error(action)
                return
            name = name or host
            host, action.port = found[0].ip, found[0].port
        if action.transport == "udp":
            transport.send(action.data, host, action.port)
            return
        connected = transport.has_connection(host, action.port)
        if not connected and self.handoff is not None:
            holder = self.handoff.holder(action.transport, host, action.port)
            if holder is not None:   # another worker holds the connection: send through it
                self.handoff.send_via(holder, action.data, action.transport, host, action.port)
                return
        if not transport.send(action.data, host, action.port, name):
            self._report_error(action)
        elif not connected and action.error_key is not None:
            self._note_connecting((action.transport, host, action.port), action.error_key)

    def _connected(self, name: str, transport, host: str, port: int) -> bool:
        return transport.has_connection(host, port) or (
            self.handoff is not None and self.handoff.holder(name, host, port) is not None)

    def _send_udp(self, data: bytes, transport: str, host: str, port: int) -> None:
        self._transmit(Transmit(data, transport, host, port))

    async def _resolve_and_send(self, action: Transmit, transport) -> None:
        found = await self.resolver.locate("sip", action.host, action.port, action.transport,
                                           frozenset((action.transport,)), self._families)
        if not found:
            self._report_error(action)
            return
        if action.transport == "udp":
            transport.send(action.data, found[0].ip, found[0].port)
        elif not transport.send(action.data, found[0].ip, found[0].port, action.name or action.host):
            self._report_error(action)

    def _locate(self, action: Locate) -> None:
        """RFC 3263 for a branch: from the cache at once, else in a task."""
        found = self.resolver.locate_nowait(action.scheme, action.host, action.port, action.transport,
                                            action.supported, self._families)
        if found is None:
            self._nursery.start_soon(self._locate_then_send, action)
            return
        self._located(action, found)

    async def _locate_then_send(self, action: Locate) -> None:
        found = await self.resolver.locate(action.scheme, action.host, action.port, action.transport,
                                           action.supported, self._families)
        self._located(action, found)

    def _located(self, action: Locate, found) -> None:
        try:
            self._execute(self.core.located(action.token, found))
        except Exception:
            self._internal_error("located next hop", (action.host, action.port))

    def _report_error(self, action: Transmit) -> None:
        if action.error_key is not None:
            self._execute(self.core.transport_error(action.error_key))

    def _queue_consult(self, action: RouteCall) -> None:
        """Route events of one call run one after another, in the order the
        core asked: trio does not run new tasks in spawn order, and an ACK
        must not overtake its BYE on the way through a route. While one is
        being decided (submitted to a runtime's thread, or in a task), the
        call's later events wait in _consulting[call_id]."""
        call_id = action.call_id
        waiting = self._consulting.get(call_id)
        if waiting is None:
            self._consulting[call_id] = collections.deque()
            if not self._submit(call_id, action):
                self._nursery.start_soon(self._consult_in_order, call_id, action)
        else:
            waiting.append(action)

    async def _consult_in_order(self, call_id: str, action: RouteCall) -> None:
        waiting = self._consulting[call_id]
        try:
            while True:
                await self._consult(action)
                if not waiting:
                    return
                action = waiting.popleft()
        finally:
            del self._consulting[call_id]

    def _submit(self, call_id: str, action: RouteCall) -> bool:
        """Hand the event to a runtime that answers without a task (Lua, line-JSON):
        no task, no cancel scope; `_submitted` delivers the decision on this
        thread and starts the call's next waiting event. False when the
        event needs the async path (the caller then starts it)."""
        registry = self.registry
        if registry is None:
            return False
        route = action.route
        if route is None:
            route = action.route = registry.select(action.event)

        def done(decision: Decision) -> None:
            self._submitted(call_id, action, route, decision)

        return route.submit(action.hook, action.event, done)

    def _submitted(self, call_id: str, action: RouteCall, route, decision: Decision) -> None:
        if needs_services(decision):
            # The store answers asynchronously: the call's next event waits
            # until this one is resolved and delivered.
            self._nursery.start_soon(self._resolve_then_submitted, call_id, action, route, decision)
            return
        try:
            self._deliver(action, decision, route)
        finally:
            # The call's next event, in order; a bug above must not leave
            # the call's later events waiting forever.
            waiting = self._consulting[call_id]
            if not waiting:
                del self._consulting[call_id]
            else:
                following = waiting.popleft()
                if not self._submit(call_id, following):
                    self._nursery.start_soon(self._consult_in_order, call_id, following)

    async def _resolve_then_submitted(self, call_id, action: RouteCall, route, decision) -> None:
        decision = await self.services.resolve(action.request, action.source, decision)
        self._submitted(call_id, action, route, decision)

    async def _consult(self, action: RouteCall) -> None:
        route = action.route
        registry = self.registry
        if registry is None:
            self._deliver(action, Decision(), None)
            return
        if route is None:
            route = registry.select(action.event)
        # The async path may end in a line-JSON runtime, which writes the
        # whole event: build every field.
        decision = await route.handle(action.hook, action.event.plain())
        if needs_services(decision):
            decision = await self.services.resolve(action.request, action.source, decision)
        self._deliver(action, decision, route)

    def _deliver(self, action: RouteCall, decision: Decision, route) -> None:
        gen = route.generation if route is not None else None
        hooks = gen.runtime.hooks if gen is not None else frozenset()
        try:
            self._execute(self.core.decided(action.token, decision, route, hooks))
        except Exception:
            self._internal_error("route decision", action.call_id)

    async def drain(self, timeout: float) -> int:
        """Stop taking new calls (503) and wait, at most `timeout` seconds,
        until every request in progress has its final answer. Returns how
        many were still unanswered."""
        self.core.draining = True
        with trio.move_on_after(timeout):
            while self.core.unanswered():
                await trio.sleep(0.05)
        return self.core.unanswered()

    def status(self) -> dict:
        """Everything an operator asks first: counters, and every route's state."""
        out = self.statistics()
        if self.registry is not None:
            out["routes"] = self.registry.status()
        return out

    def statistics(self) -> dict:
        out = {"core": self.core.stats.as_dict() if self.core else {},
               "server_transactions": len(self.core.server_txns) if self.core else 0,
               "client_transactions": len(self.core.client_txns) if self.core else 0,
               "timers": len(self.timers), "internal_errors": self.internal_errors,
               "transports": {name: t.statistics() for name, t in self.transports.items()}}
        if self.services is not None:
            out["services"] = self.services.statistics()
        if self.keepalive is not None:
            out["keepalive"] = self.keepalive.statistics()
        if self.handoff is not None:
            out["fleet"] = {"worker": self.handoff.index, "workers": self.config.fleet.count,
                            **self.handoff.statistics()}
        if hasattr(self.store, "statistics"):
            out["store"] = self.store.statistics()
        if self.resolver is not None:
            out["dns"] = self.resolver.statistics()
        if self.flood is not None:
            out["flood"] = self.flood.statistics()
        if self.core is not None:
            out["dialogs"] = {"active": len(self.core.dialogs), **self.dialogs.statistics()}
        return out


def _families(bound) -> tuple[str, ...]:
    """The address records worth asking: the families we can send from."""
    v6 = any(":" in host for _, host, _ in bound)
    v4 = any(":" not in host for _, host, _ in bound)
    return ("A",) * v4 + ("AAAA",) * v6 or ("A",)


def _is_address(host: str) -> bool:
    """An IP literal a socket takes as it is; unlike a URI's host
    (locate.is_ip), a bracketed one is not."""
    return host[:1] != "[" and host[-1:] != "]" and is_ip(host)
