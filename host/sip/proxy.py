"""The transaction-stateful proxy core (RFC 3261 §16), sans-IO.

Bytes and timer expiries go in; `Transmit`, `Arm`, `Disarm` and `Consult`
actions come out. The core owns every SIP rule: validation, Max-Forwards,
loop detection, Via/Record-Route/Route handling, 100 Trying, CANCEL,
hop-by-hop ACK, forking and response aggregation. Routing *decisions* come
from outside: for each initial request the core emits `Consult(token, hook,
request, ...)` and the shell later calls `decided(token, decision, route,
hooks)`. In static mode (`relay_to`) the decision is made here, with no
round trip.

One proxy, one set of tables, read in four files along the RFC's seams:
  proxy.py            the entry points, the transaction tables, and the
                      execution of what a transaction asks for (§17);
  proxy_requests.py   the request side: §16.3-16.6, CANCEL (§16.10), ACK;
  proxy_responses.py  the response context: §16.7 aggregation and forwarding,
                      and every way a response leaves the proxy;
  proxy_decisions.py  consulting the route and applying its decision.
(proxy_dialogs.py tracks dialogs; proxy_locate.py takes RFC 3263 targets
from the shell and fails over between them.)
Each of those is a mixin of `ProxyCore` over the state set up in
`ProxyCore.__init__`. The messages the proxy writes itself live in answers.py,
the actions it returns in actions.py, timer keys and consult records in
records.py.
"""

from __future__ import annotations

import hashlib
from typing import Callable, NamedTuple

from . import answers
from . import proxy_rules as rules
from . import transaction as tx
from .actions import Arm, Consult, CoreStats, Disarm, Transmit
from .decision import Decision
from .dialogs import DialogTable
from .proxy_decisions import DecisionSide
from .proxy_dialogs import DialogSide
from .proxy_locate import LocateSide
from .proxy_requests import REPLY_MARGIN, RequestSide
from .proxy_responses import ResponseSide
from .proxy_rules import Local
from .records import (AckConsult, BranchTimer, ClientTimer, DialogTimer, FailureConsult,
                      ForgetTimer, ReplyConsult, RequestConsult, ServerTimer, new_key)
from .message import Request, Response
from .parser import parse_message
from .errors import BadMessage
from .timers import DEFAULT_TIMERS, TimerConfig
from .uri import parse_uri
from .validate import check_request

__all__ = ["ProxyCore", "Arm", "Consult", "Disarm", "Transmit", "MAX_SERVER_TRANSACTIONS",
           "REPLY_MARGIN"]

# Server transactions kept at most; beyond, new requests get a stateless 503.
# An answered call over UDP holds two for 64*T1 = 32 s after its answer (the
# INVITE's in Accepted until Timer L, the BYE's in Completed until Timer J):
# 64 transaction-seconds per call. The most one core process carries is
# ~1,500 calls/s (--relay-to, README), i.e. ~96,000 transactions in steady
# state, so the cap refuses nothing a process can serve. Each costs ~7 KB
# with its context, branch and messages (tracemalloc, a ringing call), so
# it also bounds what a flood of unanswered INVITEs can take to ~0.7 GB.
MAX_SERVER_TRANSACTIONS = 100_000


class SentAnswer(NamedTuple):
    """The final answer of a completed non-INVITE server transaction, as
    `Transmit`'s arguments (see ProxyCore._keep_only_the_answer)."""
    data: bytes
    transport: str
    host: str
    port: int
    error_key: object
    alt: tuple | None


class ProxyCore(RequestSide, ResponseSide, DecisionSide, DialogSide, LocateSide):
    """One proxy: its entry points (`receive`, `timer`, `transport_error`,
    `decided`) return the actions for the shell to run."""

    def __init__(self, listen: list[tuple[str, str, int]], *, relay_to: str | None = None,
                 timers: TimerConfig = DEFAULT_TIMERS, new_id: Callable[[], str],
                 names: tuple[str, ...] = (), max_server_transactions: int = MAX_SERVER_TRANSACTIONS,
                 clock: Callable[[], float] = lambda: 0.0, flow_secret: bytes | None = None,
                 locating: bool = False):
        self.local = Local(listen, names)
        self.listen = {t: (h, p) for t, h, p in listen}   # first listener per transport
        self.timers = timers
        self.new_id = new_id
        self.relay_to = parse_uri(relay_to) if relay_to else None
        self.server_txns: dict = {}
        self.client_txns: dict = {}
        self.max_server_transactions = max_server_transactions
        self._forget_gen = 0
        self._consults: dict[int, tuple] = {}   # token -> the consult record (records.py)
        self._token = 0
        self.stats = CoreStats()
        # Dialog durations and limits need a clock; the shell gives one.
        self.dialogs = DialogTable(clock)
        self.clock = clock
        # Next hops that are names go to the shell to resolve (RFC 3263,
        # proxy_locate.py); False: the shell resolves them at send time.
        self.locating = locating
        self.supported = frozenset(self.listen)
        self._locating: dict[int, object] = {}   # token -> the branch waiting for its targets
        self._locating_stateless: dict[int, tuple] = {}   # token -> (request, name) relayed statelessly
        self._locate_token = 0
        # Every Record-Route value we may write: how a tracked dialog finds us in its route set.
        self.our_record_routes = tuple(rules.record_route_value(t, h, p, sips)
                                       for t, (h, p) in self.listen.items()
                                       for sips in ((False, True) if t == "tls" else (False,)))
        self._own_dests: dict = {}   # client txn key -> where a request we originate goes
        # The cluster's secret for flow tokens (flows.py); None: no other core.
        self.flow_secret = flow_secret
        # Set while shutting down: new calls get 503, calls in progress finish.
        self.draining = False

    # ------------------------------------------------------------------ input
    def receive(self, data: bytes, transport: str, src: tuple[str, int]) -> list:
        """A datagram or a framed stream message arrived from `src`."""
        out: list = []
        self.stats.received += 1
        stream = transport != "udp"
        try:
            msg = parse_message(data, stream=stream)
        except BadMessage as exc:
            self._reject_unparsed_to_source(data, exc, transport, src, out)
            return out
        source = (transport, src[0], src[1])
        if isinstance(msg, Response):
            msg.source = source
            self.stats.replies[min(msg.status // 100, 6)] += 1
            self._on_response(msg, out)
            return out
        requests = self.stats.requests
        method = msg.method
        if method in requests:
            requests[method] += 1
        elif len(requests) < 64:   # a flood of invented methods must not grow it
            requests[method] = 1
        try:
            if msg.via is None:
                raise BadMessage("no Via", None)
            # First: whatever answers this request must go to its real source.
            rules.fix_received(msg, src[0], src[1])
            check_request(msg)
        except BadMessage as exc:
            self._reject_stateless_to_source(msg, exc, source, out)
            return out
        try:
            if msg.method == "ACK":
                self._on_ack(msg, source, out)
            elif msg.method == "CANCEL":
                self._on_cancel(msg, source, out)
            else:
                self._on_request(msg, source, out)
        except BadMessage as exc:
            # A header only the proxy steps read (Route, Max-Forwards) was
            # bad. Once a transaction exists the steps answer through it.
            self._reject_stateless_to_source(msg, exc, source, out)
        return out

    def unanswered(self) -> int:
        """Server transactions still waiting for their final response."""
        return sum(1 for txn in self.server_txns.values()
                   if txn.context is not None and not txn.context.final_sent
                   and txn.state in (tx.TRYING, tx.PROCEEDING))

    def timer(self, key) -> list:
        """A timer armed with `key` (records.py) fired. Keys name things by
        id only, so a pending timer never keeps a call alive; each is
        resolved through the transaction tables here, and one whose call is
        gone, or that was restarted since (generation), does nothing."""
        out: list = []
        kind = type(key)
        if kind is ClientTimer or kind is ServerTimer:
            txn = (self.client_txns if kind is ClientTimer else self.server_txns).get(key.txn_key)
            if txn is not None:
                actions = txn.on_timer(key.name, key.generation)
                if actions:
                    self._run(txn, actions, out)
        elif kind is BranchTimer:
            txn = self.client_txns.get(key.txn_key)
            branch = txn.context if txn is not None else None
            if branch is not None and branch.timer_gen == key.generation and branch.timer_armed:
                branch.timer_armed = False
                self._branch_timer(txn, branch, out)
        elif kind is DialogTimer:
            self._dialog_timer(key, out)
        elif kind is ForgetTimer:
            txn = self.server_txns.get(key.txn_key)
            ctx = txn.context if txn is not None else None
            if ctx is not None and ctx.timer_gen == key.generation and not ctx.final_sent:
                del self.server_txns[key.txn_key]
                self._release(txn, out)
        return out

    def transport_error(self, key) -> list:
        """Sending for transaction `key` failed (unreachable, connection refused)."""
        out: list = []
        if isinstance(key, (tx.ClientTransaction, tx.ServerTransaction)) and not key.terminated:
            self._run(key, key.on_transport_error(), out)
        return out

    def decided(self, token: int, decision: Decision, route=None, hooks=frozenset()) -> list:
        """The route answered the event `token`."""
        out: list = []
        entry = self._consults.pop(token, None)
        if entry is None:
            return out
        kind = type(entry)
        if kind is RequestConsult:
            ctx = entry.ctx
            ctx.consulting = False
            ctx.route, ctx.hooks = route, hooks
            self._apply_request_decision(ctx, decision, out)
        elif kind is FailureConsult:
            entry.ctx.consulting = False
            self._apply_failure_decision(entry.ctx, decision, out)
        elif kind is ReplyConsult:
            self._apply_reply_decision(entry.ctx, decision, out)
        elif kind is AckConsult:
            self._apply_ack_decision(entry.request, entry.source, decision, out)
        return out

    # ------------------------------------------------------ transaction actions
    def _run(self, txn, actions, out) -> None:
        """Execute what a transaction asked for."""
        for action in actions:
            cls = type(action)
            if cls is tx.Send:
                msg = action.message
                if isinstance(txn, tx.ClientTransaction):
                    branch = txn.context
                    data = branch.data if branch is not None and msg is branch.request else msg.serialize()
                    if branch is not None:
                        (transport, host, port), name = branch.dest, branch.name
                    else:
                        transport, host, port, name = self._cancel_dest(txn)
                    out.append(Transmit(data, transport, host, port, txn, name=name))
                else:
                    ctx = txn.context
                    if type(msg) is SentAnswer:
                        out.append(Transmit(*msg))   # a retransmission from Completed
                    elif ctx is None:
                        self._transmit_response(msg, None, out)
                    else:
                        self._transmit_response(msg, ctx.source, out, via=ctx.request.via)
                        if msg.status >= 200 and txn.machine is tx.NIST and type(out[-1]) is Transmit:
                            self._keep_only_the_answer(txn, ctx, out[-1])
            elif cls is tx.StartTimer:
                kind = ClientTimer if isinstance(txn, tx.ClientTransaction) else ServerTimer
                out.append(Arm(action.delay, new_key(kind, (txn.key, action.name, action.generation))))
            elif cls is tx.PassUp:
                if isinstance(txn, tx.ClientTransaction):
                    if txn.context is not None:  # CANCEL responses stop here
                        self._on_branch_response(txn.context, action.message, action.status, out)
                elif action.message is not txn.request and action.message.method == "ACK":
                    # RFC 6026: an ACK matching an Accepted INVITE transaction
                    # is the ACK for a 2xx that reused the branch.
                    self._route_ack(action.message, txn.context.source, out)
            elif cls is tx.SendAck:
                ack = answers.ack_for(txn.request, action.response)
                branch = txn.context
                out.append(Transmit(ack.serialize(), *branch.dest, name=branch.name))
            elif cls is tx.Timeout:
                if isinstance(txn, tx.ClientTransaction) and txn.context is not None:
                    branch = txn.context
                    if branch.final is None:
                        self._branch_final(branch, self._synthetic_response(branch.ctx, 408), out)
            elif cls is tx.TransportError:
                if isinstance(txn, tx.ClientTransaction) and txn.context is not None:
                    branch = txn.context
                    if branch.final is None:
                        # §16.9: a transport error counts as a 503 from that branch.
                        self._branch_final(branch, self._synthetic_response(branch.ctx, 503), out)
            elif cls is tx.Terminated:
                table = self.client_txns if isinstance(txn, tx.ClientTransaction) else self.server_txns
                if table.get(txn.key) is txn:
                    del table[txn.key]
                    self._release(txn, out)

    def _release(self, txn, out) -> None:
        """`txn` has left its table for good: cancel its timers and unlink it
        from its call, so that the call's objects are freed by reference
        counting once its last transaction is gone (no cycle is left for the
        collector: see context.Branch)."""
        client = isinstance(txn, tx.ClientTransaction)
        timers = txn.pending_timers
        if timers:
            kind = ClientTimer if client else ServerTimer
            for name, gen in timers.items():
                out.append(Disarm(new_key(kind, (txn.key, name, gen))))
        context = txn.context
        if context is None:
            self._own_dests.pop(txn.key, None)
            return  # a CANCEL or a BYE we sent
        if client:
            context.txn = None
            ctx = context.ctx
        else:
            txn.context = None
            ctx = context
        ctx.live -= 1
        if ctx.live == 0:
            ctx.branches = []

    def _keep_only_the_answer(self, txn, ctx, sent: Transmit) -> None:
        """A non-INVITE server transaction has its final answer and now
        waits only to absorb retransmissions (Completed, Timer J: 32 s over
        UDP). It keeps the bytes it sent and where, not the request, its
        context and the response objects: 5.4 KB down to the answer's size,
        for every REGISTER of a registration burst."""
        txn.last_response = SentAnswer(sent.data, sent.transport, sent.host, sent.port, None, sent.alt)
        txn.request = None
        txn.context = None
        ctx.live -= 1
        if ctx.live == 0:
            ctx.branches = []

    def _cancel_dest(self, txn):
        """(transport, host, port, name) of a CANCEL or of a request we
        originate: where its INVITE went (the same TLS name, RFC 5922)."""
        own = self._own_dests.get(txn.key)
        if own is not None:
            return (*own, None)
        inv = self.client_txns.get(tx.client_key(txn.request.via.branch, "INVITE"))
        if inv is not None and inv.context is not None:
            return (*inv.context.dest, inv.context.name)
        hop = rules.next_hop(txn.request.copy())
        return hop.transport, hop.host.strip("[]"), rules.hop_port(hop, hop.transport), None

    def _tag(self, req: Request) -> str:
        """A To tag for our own answers, the same for retransmissions."""
        seed = f"{req.call_id}\0{req.from_tag}\0{req.via.branch if req.via else ''}"
        return hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()
