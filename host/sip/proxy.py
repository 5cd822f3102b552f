"""The transaction-stateful proxy core (RFC 3261 §16), sans-IO.

Bytes and timer expiries go in; `Transmit`, `Arm` and `Consult` actions come
out. The core owns every SIP rule: validation, Max-Forwards, loop detection,
Via/Record-Route/Route handling, 100 Trying, CANCEL, hop-by-hop ACK, forking
and response aggregation. Routing *decisions* come from outside: for each
initial request the core emits `Consult(token, hook, request, ...)` and the
shell later calls `decided(token, decision, route, hooks)`. In static mode
(`relay_to`) the decision is made here, with no round trip.

This module is longer than most: the request side (§16.3-16.6) and the
response side (§16.7-16.10) of one proxy share the transaction tables and
response contexts, and read best as one class. The messages the proxy writes
itself live in answers.py, the actions it returns in actions.py.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from . import answers
from . import proxy_rules as rules
from . import transaction as tx
from .actions import Arm, Consult, CoreStats, Disarm, Transmit
from .context import Branch, ResponseContext, choose_best
from .decision import ON_FAILURE, ON_REPLY, ON_REQUEST, Decision
from .errors import BadMessage
from .message import Request, Response, make_response, reason_for
from .parser import parse_message
from .proxy_rules import Local
from .timers import DEFAULT_TIMERS, TimerConfig
from .uri import URI, parse_uri
from .validate import check_request

MAX_BRANCHES = 32            # targets per decision; more is a script bug
MAX_FAILURE_ROUNDS = 8       # on_failure -> relay -> on_failure ... per call
# Server transactions kept at most; beyond, new requests get a stateless 503.
# An answered call over UDP holds two for 64*T1 = 32 s after its answer (the
# INVITE's in Accepted until Timer L, the BYE's in Completed until Timer J):
# 64 transaction-seconds per call. The most one core process carries is
# ~1,500 calls/s (--relay-to, README), i.e. ~96,000 transactions in steady
# state, so the cap refuses nothing a process can serve. Each costs ~7 KB
# with its context, branch and messages (tracemalloc, a ringing call), so
# it also bounds what a flood of unanswered INVITEs can take to ~0.7 GB.
MAX_SERVER_TRANSACTIONS = 100_000
# The Retry-After of that 503: by then every transaction that had its final
# answer when the 503 was sent has left the table (Timers H, J, L: 64*T1).
OVERLOAD_RETRY_AFTER = 32
# A reply to a request we refuse is never larger than that request plus this:
# room for our status line, To tag and Content-Length, not for amplification.
REPLY_MARGIN = 256
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE"


class ProxyCore:
    def __init__(self, listen: list[tuple[str, str, int]], *, relay_to: str | None = None,
                 timers: TimerConfig = DEFAULT_TIMERS, new_id: Callable[[], str],
                 names: tuple[str, ...] = (), max_server_transactions: int = MAX_SERVER_TRANSACTIONS):
        self.local = Local(listen, names)
        self.listen = {t: (h, p) for t, h, p in listen}   # first listener per transport
        self.timers = timers
        self.new_id = new_id
        self.relay_to = parse_uri(relay_to) if relay_to else None
        self.server_txns: dict = {}
        self.client_txns: dict = {}
        self.max_server_transactions = max_server_transactions
        self._forget_gen = 0
        self._consults: dict[int, tuple] = {}
        self._token = 0
        self.stats = CoreStats()
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
            self._reject_unparsed(data, exc, transport, src, out)
            return out
        source = (transport, src[0], src[1])
        if isinstance(msg, Response):
            self._on_response(msg, out)
            return out
        try:
            if msg.via is None:
                raise BadMessage("no Via", None)
            # First: whatever answers this request must go to its real source.
            rules.fix_received(msg, src[0], src[1])
            check_request(msg)
        except BadMessage as exc:
            self._reject(msg, exc, source, out)
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
            self._reject(msg, exc, source, out)
        return out

    def unanswered(self) -> int:
        """Server transactions still waiting for their final response."""
        return sum(1 for txn in self.server_txns.values()
                   if txn.context is not None and not txn.context.final_sent
                   and txn.state in ("Trying", "Proceeding"))

    def timer(self, key) -> list:
        """A timer armed with `key` fired. Keys name things by id only, so a
        pending timer never keeps a call alive; each is resolved through the
        transaction tables here, and one whose call is gone, or that was
        restarted since (generation), does nothing:
          ("ct" | "st", transaction key, timer name, generation) — a timer of
              a client / server transaction's own machine;
          ("branch", client transaction key, generation) — the one timer of
              a branch: Timer C, the route's timeout, or the CANCEL give-up;
          ("forget", server transaction key, generation) — a dropped request.
        """
        out: list = []
        kind = key[0]
        if kind == "ct" or kind == "st":
            _, txn_key, name, gen = key
            txn = (self.client_txns if kind == "ct" else self.server_txns).get(txn_key)
            if txn is not None:
                actions = txn.on_timer(name, gen)
                if actions:
                    self._run(txn, actions, out)
        elif kind == "branch":
            _, txn_key, gen = key
            txn = self.client_txns.get(txn_key)
            branch = txn.context if txn is not None else None
            if branch is not None and branch.timer_gen == gen and branch.timer_armed:
                branch.timer_armed = False
                self._branch_timer(txn, branch, out)
        elif kind == "forget":
            _, txn_key, gen = key
            txn = self.server_txns.get(txn_key)
            ctx = txn.context if txn is not None else None
            if ctx is not None and ctx.timer_gen == gen and not ctx.final_sent:
                del self.server_txns[txn_key]
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
        kind, obj = entry
        if kind == "request":
            ctx: ResponseContext = obj
            ctx.consulting = False
            ctx.route, ctx.hooks = route, hooks
            self._apply_request_decision(ctx, decision, out)
        elif kind == "failure":
            obj.consulting = False
            self._apply_failure_decision(obj, decision, out)
        elif kind == "reply":
            self._apply_reply_decision(obj, decision, out)
        elif kind == "ack":
            req, source = obj
            self._apply_ack_decision(req, decision, out)
        return out

    # ------------------------------------------------------- bad input (§16.3)
    def _reject_unparsed(self, data, exc: BadMessage, transport, src, out) -> None:
        """Answer a request we could not parse, if we can find where to send it."""
        salvaged = None
        if exc.status is not None and data[:4] != b"SIP/":
            salvaged = answers.salvage_reply(data, exc.status, _reason(exc))
        if salvaged is None:
            self.stats.bad_dropped += 1
            return
        reply, _ = salvaged
        if len(reply) > len(data) + REPLY_MARGIN:
            self.stats.bad_dropped += 1  # answering would amplify the request
            return
        # A request we refuse is answered where it came from, on the
        # transport it came on: its Via may name anybody.
        out.append(Transmit(reply, transport, src[0], src[1]))
        self.stats.bad_replied += 1

    def _reject(self, req: Request, exc: BadMessage, source, out) -> None:
        if exc.status is None or req.method == "ACK" or req.via is None:
            self.stats.bad_dropped += 1
            return
        resp = make_response(req, exc.status, _reason(exc), to_tag=self._tag(req),
                             extra=getattr(exc, "headers", None))
        self._send_response(resp, source, out, to_source=True)
        self.stats.bad_replied += 1

    # ---------------------------------------------------- requests (§16.3-16.6)
    def _server_key(self, req: Request, method: str):
        via = req.via
        branch = via.branch
        if tx.is_rfc3261_branch(branch):
            return tx.server_key(branch, via.sent_by, method)
        return tx.legacy_server_key(req.uri, "" if method == "INVITE" else (req.to_tag or ""),
                                    req.from_tag or "", req.call_id, req.cseq,
                                    "INVITE" if method == "ACK" else method, req.header("via"))

    def _on_request(self, req: Request, source, out) -> None:
        key = self._server_key(req, req.method)
        txn = self.server_txns.get(key)
        if txn is not None:  # a retransmission: the transaction answers it
            self._run(txn, txn.on_request(req), out)
            return
        if len(self.server_txns) >= self.max_server_transactions:
            self._overloaded(req, source, out)
            return
        mf = rules.max_forwards(req)
        uri = req.parsed_uri
        to_us = self.local.is_mine(uri) and uri.user is None and not req.has_header("route")
        if mf == 0 and not (to_us and req.method == "OPTIONS"):
            self._stateless_reply(req, 483, source, out)
            return
        if rules.detect_loop(req, self.local):
            self._stateless_reply(req, 482, source, out)
            return
        txn = tx.ServerTransaction(req, invite=req.method == "INVITE",
                                   reliable=source[0] != "udp", config=self.timers, key=key)
        self.server_txns[key] = txn
        self.stats.server_txns += 1
        in_dialog = req.to_tag is not None
        ctx = ResponseContext(txn, req, source, in_dialog)
        txn.context = ctx
        self._run(txn, txn.start(), out)
        if self.draining and not in_dialog:
            # Through the transaction, so the ACK of the 503 is absorbed.
            self._final(ctx, 503, None, out, extra=[("retry-after", "5")])
            return
        if ctx.is_invite:
            # §16.2: a stateful proxy answers 100 Trying to an INVITE at once,
            # so the UAC stops retransmitting while the route decides.
            self._respond(ctx, make_response(req, 100), out)
        if to_us and req.method == "OPTIONS":
            self._respond(ctx, make_response(req, 200, to_tag=self._tag(req), extra=[
                ("allow", ALLOW), ("accept", "application/sdp"), ("supported", "path, outbound")]), out)
            return
        try:
            followed_route = rules.process_route(req, self.local)
        except BadMessage as exc:
            self._respond(ctx, make_response(req, exc.status or 400, _reason(exc), to_tag=self._tag(req)), out)
            return
        if in_dialog and (followed_route or req.has_header("route")):
            # §16.12: an in-dialog request follows its route set; no logic asked.
            self._relay(ctx, [], out)
            return
        if self.relay_to is not None:
            ctx.next_hop = self.relay_to
            ctx.record_route = not in_dialog
            self._relay(ctx, [], out)
            return
        self._consult(("request", ctx), ON_REQUEST, req, None, source, in_dialog, None, None, out)
        ctx.consulting = True

    def _consult(self, entry, hook, request, reply, source, in_dialog, vars, route, out) -> None:
        self._token += 1
        self._consults[self._token] = entry
        self.stats.consults += 1
        out.append(Consult(self._token, hook, request, reply, source, in_dialog, vars, route))

    def _apply_request_decision(self, ctx: ResponseContext, d: Decision, out) -> None:
        if ctx.cancelled or ctx.final_sent or ctx.txn.terminated:
            return  # CANCEL won the race: 487 was already sent
        if d.vars is not None:
            ctx.vars = d.vars
        try:
            record = self._apply_edits(ctx.request, d.edits)
        except BadMessage as exc:
            self.stats.script_decision_errors += 1
            self._final(ctx, 500, f"Bad route decision: {exc.reason}"[:100], out)
            return
        ctx.record_route = record and not ctx.in_dialog
        self._apply_verb(ctx, d, out)

    def _apply_verb(self, ctx: ResponseContext, d: Decision, out) -> None:
        verb = d.verb
        if verb is None or verb == "relay":
            ctx.parallel, ctx.timeout = d.parallel, d.timeout
            self._relay(ctx, d.targets, out)
        elif verb == "reply":
            self._final(ctx, d.code, d.reason or None, out, extra=d.headers)
        elif verb == "redirect":
            extra = [("contact", f"<{c}>" if "<" not in c else c) for c in d.contacts]
            self._final(ctx, 302, None, out, extra=extra)
        elif verb == "drop":
            # Keep the transaction a while so retransmissions are absorbed
            # instead of reaching the route again, then forget it.
            self._forget_gen += 1
            ctx.timer_gen = self._forget_gen
            out.append(Arm(64 * self.timers.t1, ("forget", ctx.txn.key, ctx.timer_gen)))
        else:
            self._final(ctx, 500, "Unknown route decision", out)

    def _apply_edits(self, req: Request, edits) -> bool:
        record = False
        for edit in edits:
            verb = edit[0]
            if verb == "set_ruri":
                parse_uri(edit[1])
                req.uri = edit[1]
            elif verb == "set_header":
                req.set_header(edit[1], edit[2])
            elif verb == "add_header":
                req.add_header(edit[1], edit[2])
            elif verb == "remove_header":
                req.remove_header(edit[1])
            elif verb == "record_route":
                record = True
        return record

    # ----------------------------------------------------------- relaying
    def _relay(self, ctx: ResponseContext, targets: list[str], out) -> None:
        if not targets:
            targets = [ctx.request.uri]
        if len(targets) > MAX_BRANCHES:
            targets = targets[:MAX_BRANCHES]
        if ctx.parallel:
            ctx.serial = []
            for target in targets:
                self._start_branch(ctx, target, out)
        else:
            ctx.serial = list(targets[1:])
            self._start_branch(ctx, targets[0], out)
        self._check_complete(ctx, out)

    def _start_branch(self, ctx: ResponseContext, target: str, out) -> None:
        """§16.6: copy the request, retarget it, and send it on a new client transaction."""
        req = ctx.request.copy()
        try:
            req.uri = target
            hop = ctx.next_hop if ctx.next_hop is not None else rules.next_hop(req)
            transport = hop.transport
            if transport not in self.listen:
                raise BadMessage(f"no {transport} transport to reach {hop}", 503)
            dest = (transport, hop.host.strip("[]"), hop.port or 5060)
        except BadMessage as exc:
            branch = Branch(ctx, target, req, ("", "", 0))
            ctx.branches.append(branch)
            branch.final = self._synthetic(ctx, exc.status if exc.status in (416, 503) else 400, _reason(exc))
            ctx.responses.append(branch.final)
            return
        rules.decrement_max_forwards(req)
        in_transport = ctx.source[0]
        if ctx.record_route:
            # RFC 5658: when the transport changes, record both sides.
            if in_transport != transport and in_transport in self.listen:
                host, port = self.listen[in_transport]
                req.push_front("record-route", rules.record_route_value(in_transport, host, port))
            host, port = self.listen[transport]
            req.push_front("record-route", rules.record_route_value(transport, host, port))
        host, port = self.listen[transport]
        branch_id = f"{rules.MAGIC_COOKIE}{rules.loop_hash(req, ctx.request.header('via'))}.{self.new_id()}"
        req.push_front("via", rules.via_value(transport, host, port, branch_id))
        branch = Branch(ctx, target, req, dest)
        ctx.branches.append(branch)
        txn = tx.ClientTransaction(req, invite=ctx.is_invite, reliable=transport != "udp",
                                   config=self.timers, key=tx.client_key(branch_id, req.method),
                                   context=branch)
        branch.txn = txn
        branch.key = txn.key
        branch.data = req.serialize()
        self.client_txns[txn.key] = txn
        self.stats.client_txns += 1
        ctx.live += 1
        self._run(txn, txn.start(), out)
        timeout = ctx.timeout or (self.timers.c if ctx.is_invite else None)
        if timeout:
            self._arm_branch(branch, timeout, out)

    def _arm_branch(self, branch: Branch, delay: float, out) -> None:
        """(Re)start the branch's timer; the one it replaces is cancelled."""
        self._disarm_branch(branch, out)
        branch.timer_armed = True
        out.append(Arm(delay, ("branch", branch.key, branch.timer_gen)))

    def _disarm_branch(self, branch: Branch, out) -> None:
        """The branch's pending timer, if any, means nothing any more."""
        if branch.timer_armed:
            branch.timer_armed = False
            out.append(Disarm(("branch", branch.key, branch.timer_gen)))
        branch.timer_gen += 1

    def _branch_timer(self, txn, branch: Branch, out) -> None:
        if branch.cancelled:
            # §9.1: no final response 64*T1 after our CANCEL: the INVITE is
            # considered cancelled and its client transaction destroyed (in
            # Proceeding it has no timer of its own and would stay forever).
            if branch.final is None:
                branch.cancel_wanted = True
                self._branch_final(branch, self._synthetic(branch.ctx, 408), out)
            if self.client_txns.get(txn.key) is txn:
                del self.client_txns[txn.key]
                self._release(txn, out)
        elif branch.final is None:
            self._branch_timed_out(branch, out)

    def _branch_timed_out(self, branch: Branch, out) -> None:
        """A per-branch timeout (the route's, or Timer C, §16.8) expired."""
        ctx = branch.ctx
        if ctx.is_invite and branch.provisional and not branch.cancelled:
            # CANCEL it; its 487 finishes the branch, or the CANCEL's own
            # give-up timer does.
            self._cancel_branch(branch, out)
            return
        branch.cancel_wanted = True  # if a 1xx shows up later, CANCEL it then
        self._branch_final(branch, self._synthetic(ctx, 408), out)

    def _cancel_branch(self, branch: Branch, out) -> None:
        """§9.1: CANCEL a pending INVITE branch once it has had a provisional."""
        if branch.cancelled or not branch.ctx.is_invite:
            return
        if not branch.provisional:
            branch.cancel_wanted = True
            return
        branch.cancelled = True
        inv = branch.request
        cancel = answers.cancel_for(inv)
        transport = branch.dest[0]
        txn = tx.ClientTransaction(cancel, invite=False, reliable=transport != "udp",
                                   config=self.timers,
                                   key=tx.client_key(inv.via.branch, "CANCEL"), context=None)
        self.client_txns[txn.key] = txn
        self._run(txn, txn.start(), out)
        # The branch's timer becomes the wait for the INVITE's final answer
        # after the CANCEL (§9.1: 64*T1); see _branch_timer.
        self._arm_branch(branch, 64 * self.timers.t1, out)

    # ------------------------------------------------------ responses (§16.7)
    def _on_response(self, resp: Response, out) -> None:
        via = resp.via
        if via is None:
            self.stats.bad_dropped += 1
            return
        txn = self.client_txns.get((via.branch, resp.cseq_method))
        if txn is None:
            self._stray_response(resp, out)
            return
        self._run(txn, txn.on_response(resp.status, resp), out)

    def _stray_response(self, resp: Response, out) -> None:
        """§16.7 step 3 / §16.11: no transaction (e.g. a 2xx retransmission
        after the client transaction ended) — forward 2xx statelessly if the
        top Via is ours, drop the rest."""
        self.stats.stray_responses += 1
        via = resp.via
        if not (200 <= resp.status < 300 and self.local.is_my_via(via.host, via.port)):
            return
        resp.pop_first("via")
        if resp.via is not None:
            self._send_response(resp, None, out)

    def _on_branch_response(self, branch: Branch, resp: Response, status: int, out) -> None:
        ctx = branch.ctx
        if status < 200:
            branch.provisional = True
            if branch.cancel_wanted or ctx.cancelled or (ctx.final_sent and ctx.is_invite):
                self._cancel_branch(branch, out)
            if status == 100 or ctx.final_sent or branch.final is not None:
                return  # §16.7 step 5: 100 is never forwarded
            if ctx.timeout is None and ctx.is_invite and not branch.cancelled:
                self._arm_branch(branch, self.timers.c, out)  # §16.8: a provisional resets Timer C
            self._forward(ctx, resp, out)
            return
        if status < 300:
            # §16.7 step 5: every 2xx goes upstream at once, even late ones.
            if branch.final is None:
                branch.final = resp
                self._disarm_branch(branch, out)
            first = not ctx.final_sent
            self._forward(ctx, resp, out)
            if first and ctx.is_invite:
                for other in ctx.pending():
                    self._cancel_branch(other, out)
                ctx.serial = []
            return
        if branch.final is not None:
            # e.g. the 487 after we gave up on a timed-out branch: the
            # CANCEL's give-up timer is no longer needed.
            self._disarm_branch(branch, out)
            return
        self._branch_final(branch, resp, out)

    def _branch_final(self, branch: Branch, resp: Response, out) -> None:
        ctx = branch.ctx
        branch.final = resp
        self._disarm_branch(branch, out)
        ctx.responses.append(resp)
        if resp.status >= 600 and ctx.is_invite:
            # §16.7 step 5: a 6xx ends the search.
            for other in ctx.pending():
                self._cancel_branch(other, out)
            ctx.serial = []
        self._check_complete(ctx, out)

    def _check_complete(self, ctx: ResponseContext, out) -> None:
        if ctx.final_sent or ctx.consulting or ctx.pending():
            return
        if ctx.serial and not ctx.cancelled:
            self._start_branch(ctx, ctx.serial.pop(0), out)
            self._check_complete(ctx, out)
            return
        if not ctx.responses:
            return
        best = choose_best(ctx.responses)
        if (ON_FAILURE in ctx.hooks and not ctx.cancelled
                and ctx.failures_asked < MAX_FAILURE_ROUNDS and best.status < 600):
            ctx.failures_asked += 1
            ctx.consulting = True
            self._consult(("failure", ctx), ON_FAILURE, ctx.request, best, ctx.source,
                          ctx.in_dialog, ctx.vars, ctx.route, out)
            return
        self._forward_best(ctx, best, out)

    def _forward_best(self, ctx: ResponseContext, best: Response, out) -> None:
        if best.status == 503:
            # §16.7 step 6: a 503 from downstream becomes 500 upstream, or
            # the UAC would think *we* are overloaded.
            best = best.copy()
            best.status, best.reason = 500, "Server Internal Error"
        self._forward(ctx, best, out)

    def _apply_failure_decision(self, ctx: ResponseContext, d: Decision, out) -> None:
        if ctx.final_sent or ctx.txn.terminated:
            return
        if d.vars is not None:
            ctx.vars = d.vars
        try:
            self._apply_edits(ctx.request, d.edits)
        except BadMessage:
            self.stats.script_decision_errors += 1
        if d.verb is None:
            self._forward_best(ctx, choose_best(ctx.responses), out)
        elif d.verb == "relay":
            ctx.responses = []
            ctx.parallel, ctx.timeout = d.parallel, d.timeout
            self._relay(ctx, d.targets, out)
        else:
            self._apply_verb(ctx, d, out)

    def _forward(self, ctx: ResponseContext, resp: Response, out) -> None:
        """Send a response from downstream upstream, through on_reply if the route has it."""
        if ON_REPLY in ctx.hooks and resp.via is not None and not resp.local:
            ctx.reply_queue.append(resp)
            if len(ctx.reply_queue) == 1:
                self._consult_reply(ctx, out)
            return
        self._forward_now(ctx, resp, out)

    def _consult_reply(self, ctx, out) -> None:
        resp = ctx.reply_queue[0]
        self._consult(("reply", ctx), ON_REPLY, ctx.request, resp, ctx.source,
                      ctx.in_dialog, ctx.vars, ctx.route, out)

    def _apply_reply_decision(self, ctx: ResponseContext, d: Decision, out) -> None:
        resp = ctx.reply_queue.pop(0)
        if d.vars is not None:
            ctx.vars = d.vars
        if not (d.verb == "drop" and resp.status < 200):
            try:
                self._apply_edits(resp, [e for e in d.edits if e[0] != "set_ruri"])
            except BadMessage:
                self.stats.script_decision_errors += 1
            self._forward_now(ctx, resp, out)
        if ctx.reply_queue:
            self._consult_reply(ctx, out)

    def _forward_now(self, ctx: ResponseContext, resp: Response, out) -> None:
        if not resp.local:
            resp.pop_first("via")  # §16.7 step 9: remove our Via
        status = resp.status
        txn = ctx.txn
        if status >= 200:
            if ctx.final_sent and status >= 300:
                return
            ctx.final_sent = True
        if txn.terminated or (status >= 300 and txn.state not in ("Proceeding", "Trying")):
            if 200 <= status < 300:
                self._send_response(resp, ctx.source, out)  # §16.7 step 10
            return
        try:
            self._run(txn, txn.respond(status, resp), out)
        except tx.TransactionError:
            if 200 <= status < 300:
                self._send_response(resp, ctx.source, out)

    # ----------------------------------------------------------- CANCEL, ACK
    def _on_cancel(self, req: Request, source, out) -> None:
        """§16.10: answer the CANCEL, then cancel every pending branch."""
        key = self._server_key(req, "CANCEL")
        txn = self.server_txns.get(key)
        if txn is not None:
            self._run(txn, txn.on_request(req), out)
            return
        invite = self.server_txns.get(self._server_key(req, "INVITE"))
        if invite is None or invite.context is None:
            self._stateless_reply(req, 481, source, out)
            return
        cancel_txn = tx.ServerTransaction(req, invite=False, reliable=source[0] != "udp",
                                          config=self.timers, key=key)
        cancel_txn.context = ResponseContext(cancel_txn, req, source, False)
        self.server_txns[key] = cancel_txn
        self._run(cancel_txn, cancel_txn.start(), out)
        self._run(cancel_txn, cancel_txn.respond(200, make_response(req, 200, to_tag=self._tag(req))), out)
        ctx: ResponseContext = invite.context
        if ctx.final_sent:
            return
        ctx.cancelled = True
        ctx.serial = []
        if ctx.consulting or not ctx.branches:
            self._final(ctx, 487, None, out)
            return
        for branch in ctx.pending():
            self._cancel_branch(branch, out)

    def _on_ack(self, req: Request, source, out) -> None:
        txn = self.server_txns.get(self._server_key(req, "ACK"))
        if txn is not None and txn.state != "Accepted":
            self._run(txn, txn.on_request(req, is_ack=True), out)  # hop-by-hop, absorbed
            return
        if txn is None and req.to_tag is not None and req.to_tag == self._tag(req):
            # The ACK of an answer we made without a transaction (the 503 of
            # a full table, 482, 483): it ends here. Relaying it, or asking
            # the route about it, would double the work a 503 is there to shed.
            return
        self._route_ack(req, source, out)

    def _route_ack(self, req: Request, source, out) -> None:
        """An ACK for a 2xx is its own transaction, relayed end to end (§16.6)."""
        if rules.max_forwards(req) == 0:
            return
        followed = rules.process_route(req, self.local)
        if followed or req.has_header("route"):
            self._relay_stateless(req, None, out)
        elif self.relay_to is not None:
            self._relay_stateless(req, self.relay_to, out)
        else:
            self._consult(("ack", (req, source)), ON_REQUEST, req, None, source,
                          req.to_tag is not None, None, None, out)

    def _apply_ack_decision(self, req: Request, d: Decision, out) -> None:
        if d.verb not in (None, "relay"):
            return  # an ACK cannot be answered: anything but relay drops it
        try:
            self._apply_edits(req, [e for e in d.edits if e[0] != "record_route"])
            if d.targets:
                req.uri = d.targets[0]
            self._relay_stateless(req, None, out)
        except BadMessage:
            self.stats.script_decision_errors += 1

    def _relay_stateless(self, req: Request, next_hop: URI | None, out) -> None:
        hop = next_hop if next_hop is not None else rules.next_hop(req)
        transport = hop.transport
        if transport not in self.listen:
            return
        rules.decrement_max_forwards(req)
        host, port = self.listen[transport]
        # §16.11: a stateless branch must be the same for retransmissions.
        seed = (req.via.branch or req.header("via")).encode("utf-8", "surrogateescape")
        branch = rules.MAGIC_COOKIE + "sl" + hashlib.blake2s(seed, digest_size=8).hexdigest()
        req.push_front("via", rules.via_value(transport, host, port, branch))
        out.append(Transmit(req.serialize(), transport, hop.host.strip("[]"), hop.port or 5060))

    # --------------------------------------------------------------- answers
    def _final(self, ctx: ResponseContext, status: int, reason, out, extra=None) -> None:
        """The proxy itself answers the request (a route's reply, a 487 …)."""
        if ctx.final_sent and status >= 200:
            return
        resp = make_response(ctx.request, status, reason, to_tag=self._tag(ctx.request), extra=extra)
        if status >= 200:
            ctx.final_sent = True
        self._respond(ctx, resp, out)

    def _respond(self, ctx: ResponseContext, resp: Response, out) -> None:
        txn = ctx.txn
        if txn.terminated:
            return
        try:
            self._run(txn, txn.respond(resp.status, resp), out)
        except tx.TransactionError:
            pass  # the transaction already has its final answer

    def _synthetic(self, ctx: ResponseContext, status: int, reason=None) -> Response:
        if ctx.cancelled and status == 408:
            status, reason = 487, None
        resp = make_response(ctx.request, status, reason, to_tag=self._tag(ctx.request))
        resp.local = True
        return resp

    def _stateless_reply(self, req: Request, status: int, source, out) -> None:
        resp = make_response(req, status, to_tag=self._tag(req))
        self._send_response(resp, source, out, to_source=True)

    def _send_response(self, resp: Response, source, out, *, to_source: bool = False,
                       via=None) -> None:
        """§18.2.2: on a stream the response goes back on the connection the
        request came on (else a new one to its source address and sent-by
        port); over a datagram to the source address, at the port RFC 3581
        names (`to_source`: the source port, for requests we refuse). Always
        on the transport the request arrived on and to the address it came
        from, whatever the Via says: a Via naming a third party, a forged
        `received`, or a downstream hop rewriting our caller's Via cannot
        turn the proxy into a reflector. `via` is the request's own top Via
        (as we stamped it) when the response is a relayed one."""
        via = via or resp.via
        if source is None:
            # A 2xx retransmission past its transaction (§16.7 step 10): no
            # state says where the caller is, only the Via we stamped. An IP
            # literal only, so a stray response cannot make us query DNS.
            dest = rules.stateless_destination(via)
            if dest is not None:
                out.append(Transmit(resp.serialize(), *dest))
            return
        transport, host, port = source
        if transport != "udp":
            # The connection gone, §18.2.2 opens one to the sent-by port.
            alt = (host, (via.port if via is not None else None) or rules.DEFAULT_PORTS.get(transport, 5060))
            out.append(Transmit(resp.serialize(), transport, host, port, alt=alt))
            return
        out.append(Transmit(resp.serialize(), transport, host,
                            rules.reply_port(via, transport, port, to_source=to_source)))

    def _tag(self, req: Request) -> str:
        """A To tag for our own answers, the same for retransmissions."""
        seed = f"{req.call_id}\0{req.from_tag}\0{req.via.branch if req.via else ''}"
        return hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()

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
                    transport, host, port = branch.dest if branch is not None else self._cancel_dest(txn)
                    out.append(Transmit(data, transport, host, port, txn))
                else:
                    ctx = txn.context
                    if ctx is None:
                        self._send_response(msg, None, out)
                    else:
                        self._send_response(msg, ctx.source, out, via=ctx.request.via)
            elif cls is tx.StartTimer:
                kind = "ct" if isinstance(txn, tx.ClientTransaction) else "st"
                out.append(Arm(action.delay, (kind, txn.key, action.name, action.generation)))
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
                out.append(Transmit(ack.serialize(), *branch.dest))
            elif cls is tx.Timeout:
                if isinstance(txn, tx.ClientTransaction) and txn.context is not None:
                    branch = txn.context
                    if branch.final is None:
                        self._branch_final(branch, self._synthetic(branch.ctx, 408), out)
            elif cls is tx.TransportError:
                if isinstance(txn, tx.ClientTransaction) and txn.context is not None:
                    branch = txn.context
                    if branch.final is None:
                        # §16.9: a transport error counts as a 503 from that branch.
                        self._branch_final(branch, self._synthetic(branch.ctx, 503), out)
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
            kind = "ct" if client else "st"
            for name, gen in timers.items():
                out.append(Disarm((kind, txn.key, name, gen)))
        context = txn.context
        if context is None:
            return  # a CANCEL we sent
        if client:
            context.txn = None
            ctx = context.ctx
        else:
            txn.context = None
            ctx = context
        ctx.live -= 1
        if ctx.live == 0:
            ctx.branches = []

    def _overloaded(self, req: Request, source, out) -> None:
        """The server transaction table is full: a stateless 503 (§21.5.4)."""
        self.stats.overloaded += 1
        resp = make_response(req, 503, to_tag=self._tag(req),
                             extra=[("retry-after", str(OVERLOAD_RETRY_AFTER))])
        self._send_response(resp, source, out, to_source=True)  # as _stateless_reply

    def _cancel_dest(self, txn):
        inv = self.client_txns.get(tx.client_key(txn.request.via.branch, "INVITE"))
        if inv is not None and inv.context is not None:
            return inv.context.dest
        hop = rules.next_hop(txn.request.copy())
        return hop.transport, hop.host.strip("[]"), hop.port or 5060


def _reason(exc: BadMessage) -> str:
    return reason_for(exc.status or 400)
