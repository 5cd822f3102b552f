"""The request side of the proxy core: RFC 3261 §16.3-16.6, CANCEL, ACK.

A mixin of `ProxyCore` (proxy.py), over its tables and settings: `local`,
`listen`, `timers`, `new_id`, `relay_to`, `server_txns`, `client_txns`,
`max_server_transactions`, `stats`, `draining`. A request is checked
(§16.3), refused statelessly when it must be, given its server transaction,
sent to the route or relayed, and forked into branches (§16.6), each a client
transaction with one branch timer (records.BranchTimer). CANCEL (§16.10) and
the ACK of a 2xx (a transaction of its own, relayed end to end) come here too.
"""

from __future__ import annotations

import hashlib

from . import answers
from . import proxy_rules as rules
from . import transaction as tx
from .actions import Arm, Disarm, Transmit
from .context import Branch, ResponseContext
from .decision import ON_REQUEST, Target
from .errors import BadMessage
from .locate import is_ip
from .message import Request, make_response, reason_for
from .records import AckConsult, BranchTimer, RequestConsult, new_key
from .nat import fix_contacts
from .uri import URI

MAX_BRANCHES = 32            # targets per decision; more is a script bug
# Requests whose Contact becomes a dialog's remote target (RFC 3261 §12.1,
# §12.2, RFC 6665, RFC 3311); a REGISTER's is the registrar's to keep as is.
CONTACT_FIXED = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
# The Retry-After of that 503: by then every transaction that had its final
# answer when the 503 was sent has left the table (Timers H, J, L: 64*T1).
OVERLOAD_RETRY_AFTER = 32
# A reply to a request we refuse is never larger than that request plus this:
# room for our status line, To tag and Content-Length, not for amplification.
REPLY_MARGIN = 256
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE"


def reason_of(exc: BadMessage) -> str:
    return reason_for(exc.status or 400)


class RequestSide:
    """§16.3-16.6, CANCEL and ACK for `ProxyCore` (see the module doc)."""

    # ------------------------------------------------------- bad input (§16.3)
    def _reject_unparsed_to_source(self, data, exc: BadMessage, transport, src, out) -> None:
        """Answer a request we could not parse, if we can find where to send it."""
        salvaged = None
        if exc.status is not None and data[:4] != b"SIP/":
            salvaged = answers.salvage_reply(data, exc.status, reason_of(exc))
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
        self._count_stateless(exc.status)

    def _reject_stateless_to_source(self, req: Request, exc: BadMessage, source, out) -> None:
        """Refuse a request that failed a check, with no transaction, to its source."""
        if exc.status is None or req.method == "ACK" or req.via is None:
            self.stats.bad_dropped += 1
            return
        resp = make_response(req, exc.status, reason_of(exc), to_tag=self._tag(req),
                             extra=getattr(exc, "headers", None))
        self._transmit_response(resp, source, out, to_source=True)
        self.stats.bad_replied += 1
        self._count_stateless(exc.status)

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
            self.stats.retransmissions += 1
            self._run(txn, txn.on_request(req), out)
            return
        if len(self.server_txns) >= self.max_server_transactions:
            self._answer_overloaded_stateless(req, source, out)
            return
        mf = rules.max_forwards(req)
        uri = req.parsed_uri
        to_us = self.local.is_mine(uri) and uri.user is None and not req.has_header("route")
        if mf == 0 and not (to_us and req.method == "OPTIONS"):
            self._answer_stateless_to_source(req, 483, source, out)
            return
        if rules.detect_loop(req, self.local):
            self._answer_stateless_to_source(req, 482, source, out)
            return
        txn = tx.ServerTransaction(req, invite=req.method == "INVITE",
                                   reliable=source[0] != "udp", config=self.timers, key=key)
        self.server_txns[key] = txn
        self.stats.server_txns += 1
        in_dialog = req.to_tag is not None
        ctx = ResponseContext(txn, req, source, in_dialog)
        txn.context = ctx
        if req.method in CONTACT_FIXED and rules.sent_from_behind_nat(req, *source):
            # Where a NATed UA can be reached is where its request came from:
            # the dialog's remote target must say so (nathelper's
            # fix_nated_contact, done by the core for every such UA).
            fix_contacts(req, source[1], source[2])
        if in_dialog and self.dialogs:
            ctx.dialog = self.dialogs.in_dialog_request(req)
        self._run(txn, txn.start(), out)
        if self.draining and not in_dialog:
            # Through the transaction, so the ACK of the 503 is absorbed.
            self._answer_through_txn(ctx, 503, None, out, extra=[("retry-after", "5")])
            return
        if ctx.is_invite:
            # §16.2: a stateful proxy answers 100 Trying to an INVITE at once,
            # so the UAC stops retransmitting while the route decides.
            self._send_through_txn(ctx, make_response(req, 100), out)
        if to_us and req.method == "OPTIONS":
            self._send_through_txn(ctx, make_response(req, 200, to_tag=self._tag(req), extra=[
                ("allow", ALLOW), ("accept", "application/sdp"), ("supported", "path, outbound")]), out)
            return
        flow = None
        if self.flow_secret is not None and not in_dialog and self.relay_to is None:
            flow = rules.flow_in_own_route(req, self.local, self.flow_secret)
        try:
            followed_route = rules.process_route(req, self.local)
        except BadMessage as exc:
            self._send_through_txn(ctx, make_response(req, exc.status or 400, reason_of(exc), to_tag=self._tag(req)), out)
            return
        if in_dialog and (followed_route or req.has_header("route")):
            # §16.12: an in-dialog request follows its route set; no logic asked.
            self._relay(ctx, [], out)
            return
        if flow is not None and flow[0] in self.listen:
            # Another core of the cluster relays a call to a binding whose flow
            # is ours (flows.py): deliver it there, and stay in the dialog's
            # path, since its later requests need the flow too. The route was
            # asked at the core the call entered.
            ctx.record_route = True
            self._relay(ctx, [Target(req.uri, (), flow)], out)
            return
        if self.relay_to is not None:
            ctx.next_hop = self.relay_to
            ctx.record_route = not in_dialog
            self._relay(ctx, [], out)
            return
        self._consult(RequestConsult(ctx), ON_REQUEST, req, None, source, in_dialog, None, None, out)
        ctx.consulting = True

    # ----------------------------------------------------------- relaying
    def _relay(self, ctx: ResponseContext, targets: list[str], out) -> None:
        if not targets:
            targets = [ctx.request.uri]
        if len(targets) > MAX_BRANCHES:
            targets = targets[:MAX_BRANCHES]
        if len(targets) == 1:
            # The common case (one next hop) needs no groups.
            ctx.serial = []
            self._start_branch(ctx, targets[0], out)
            self._check_complete(ctx, out)
            return
        groups = [targets] if ctx.parallel else [[t] for t in targets]
        self._relay_groups(ctx, groups, out)

    def _relay_groups(self, ctx: ResponseContext, groups: list[list], out) -> None:
        """Fork to the first group in parallel; the others wait their turn
        (§16.6 serial forking: lookup's q-value groups, a serial relay)."""
        kept, room = [], MAX_BRANCHES
        for group in groups:
            if group and room > 0:
                kept.append(group[:room])
                room -= len(kept[-1])
        if not kept:
            self._answer_through_txn(ctx, 480, None, out)
            return
        ctx.serial = kept[1:]
        for target in kept[0]:
            self._start_branch(ctx, target, out)
        self._check_complete(ctx, out)

    def _start_branch(self, ctx: ResponseContext, target, out) -> None:
        """§16.6: copy the request, retarget it, and send it on a new client
        transaction. `target` is a URI, or a `Target` (a registered binding:
        its Path becomes the first Route entries, its flow the next hop)."""
        req = ctx.request.copy()
        forced = None
        if type(target) is Target:
            for value in reversed(target.route):
                req.push_front("route", value)
            forced = target.dest if not target.route else None
            target = target.uri
        try:
            req.uri = target
            hop = ctx.next_hop if ctx.next_hop is not None else rules.next_hop(req)
            if forced is None and self.locating and not is_ip(hop.host):
                # RFC 3263: the shell finds the transport, address and port
                # (and the alternatives to fail over to); see proxy_locate.py.
                rules.decrement_max_forwards(req)
                self._locate_branch(ctx, target, req, hop, out)
                return
            sips = req.parsed_uri.scheme == "sips"
            transport = rules.hop_transport(hop, sips, forced[0] if forced is not None else None)
            if transport not in self.listen:
                raise BadMessage(f"no {transport} transport to reach {hop}", 503)
            dest = forced or (transport, hop.host.strip("[]"), rules.hop_port(hop, transport))
        except BadMessage as exc:
            branch = Branch(ctx, target, req, ("", "", 0))
            ctx.branches.append(branch)
            branch.final = self._synthetic_response(ctx, exc.status if exc.status in (416, 503) else 400, reason_of(exc))
            ctx.responses.append(branch.final)
            return
        rules.decrement_max_forwards(req)
        branch = Branch(ctx, target, req, dest)
        branch.flow = forced is not None
        ctx.branches.append(branch)
        self._send_branch(branch, req, out)

    def _send_branch(self, branch: Branch, req: Request, out, timeout: float | None = None) -> None:
        """Stamp the branch's copy of the request for its transport (Record-
        Route, our Via with a new branch id) and send it on a new client
        transaction. `timeout`: what is left of the branch's time (a failover
        attempt, proxy_locate.py); None: the whole of it."""
        ctx = branch.ctx
        transport = branch.dest[0]
        in_transport = ctx.source[0]
        sips = req.parsed_uri.scheme == "sips"
        if ctx.record_route:
            # RFC 5658: when the transport changes, record both sides.
            if in_transport != transport and in_transport in self.listen:
                host, port = self.listen[in_transport]
                req.push_front("record-route", rules.record_route_value(in_transport, host, port, sips))
            host, port = self.listen[transport]
            req.push_front("record-route", rules.record_route_value(transport, host, port, sips))
        host, port = self.listen[transport]
        branch_id = f"{rules.MAGIC_COOKIE}{rules.loop_hash(req, ctx.request.header('via'), ctx.received_uri)}.{self.new_id()}"
        req.push_front("via", rules.via_value(transport, host, port, branch_id))
        branch.request = req
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
        if timeout is None:
            timeout = ctx.timeout or (self.timers.c if ctx.is_invite else None)
        if timeout:
            self._arm_branch(branch, timeout, out)

    def _arm_branch(self, branch: Branch, delay: float, out) -> None:
        """(Re)start the branch's timer; the one it replaces is cancelled."""
        self._disarm_branch(branch, out)
        branch.timer_armed = True
        out.append(Arm(delay, new_key(BranchTimer, (branch.key, branch.timer_gen))))

    def _disarm_branch(self, branch: Branch, out) -> None:
        """The branch's pending timer, if any, means nothing any more."""
        if branch.timer_armed:
            branch.timer_armed = False
            out.append(Disarm(new_key(BranchTimer, (branch.key, branch.timer_gen))))
        branch.timer_gen += 1

    def _branch_timer(self, txn, branch: Branch, out) -> None:
        if branch.cancelled:
            # §9.1: no final response 64*T1 after our CANCEL: the INVITE is
            # considered cancelled and its client transaction destroyed (in
            # Proceeding it has no timer of its own and would stay forever).
            if branch.final is None:
                branch.cancel_wanted = True
                self._branch_final(branch, self._synthetic_response(branch.ctx, 408), out)
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
        self._branch_final(branch, self._synthetic_response(ctx, 408), out)

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
            self._answer_stateless_to_source(req, 481, source, out)
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
            self._answer_through_txn(ctx, 487, None, out)
            return
        for branch in ctx.pending():
            self._cancel_branch(branch, out)

    def _on_ack(self, req: Request, source, out) -> None:
        txn = self.server_txns.get(self._server_key(req, "ACK"))
        if txn is not None and txn.state != tx.ACCEPTED:
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
            self._consult(AckConsult(req, source), ON_REQUEST, req, None, source,
                          req.to_tag is not None, None, None, out)

    def _relay_stateless(self, req: Request, next_hop: URI | None, out) -> None:
        hop = next_hop if next_hop is not None else rules.next_hop(req)
        host = hop.host.strip("[]")
        if self.locating and not is_ip(host):
            # RFC 3263 as for a branch: NAPTR/SRV choose the transport, so the
            # Via is stamped once the shell answers (proxy_locate.py).
            rules.decrement_max_forwards(req)
            self._locate_stateless(req, hop, out)
            return
        try:
            transport = rules.hop_transport(hop, req.parsed_uri.scheme == "sips")
        except BadMessage:
            return
        if transport not in self.listen:
            return
        rules.decrement_max_forwards(req)
        out.append(Transmit(self._stamp_stateless(req, transport), transport, host,
                            rules.hop_port(hop, transport)))

    def _stamp_stateless(self, req: Request, transport: str) -> bytes:
        """`req` with our Via for `transport`, serialized."""
        host, port = self.listen[transport]
        # §16.11: a stateless branch must be the same for retransmissions.
        seed = (req.via.branch or req.header("via")).encode("utf-8", "surrogateescape")
        branch = rules.MAGIC_COOKIE + "sl" + hashlib.blake2s(seed, digest_size=8).hexdigest()
        req.push_front("via", rules.via_value(transport, host, port, branch))
        return req.serialize()

    def _answer_overloaded_stateless(self, req: Request, source, out) -> None:
        """The server transaction table is full: a stateless 503 (§21.5.4)."""
        self.stats.overloaded += 1
        resp = make_response(req, 503, to_tag=self._tag(req),
                             extra=[("retry-after", str(OVERLOAD_RETRY_AFTER))])
        self._transmit_response(resp, source, out, to_source=True)  # as _answer_stateless_to_source
        self._count_stateless(503)
