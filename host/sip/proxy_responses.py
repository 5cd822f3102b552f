"""The response side of the proxy core: the §16.7 response context, and
every path by which a response leaves the proxy.

A mixin of `ProxyCore` (proxy.py). Responses from branches are matched to
their client transaction, provisional ones forwarded, finals collected until
the context is complete, then the best is chosen (context.choose_best) or the
route's on_failure asked. The helpers that send say their path in their name:
  *_via_on_reply       through the route's on_reply first, when it has one;
  *_through_txn        through the server transaction (absorbs retransmissions
                       of the request, retransmits a final answer, §17.2);
  *_stateless(_to_source)  no transaction: to the address the request came
                       from, or for a stray 2xx to the Via we stamped;
  _transmit_response   the wire addressing all of them end in (§18.2.2).
"""

from __future__ import annotations

from . import transaction as tx
from .actions import KeepaliveAnswer, Transmit
from .keepalive import KEEPALIVE_BRANCH_PREFIX
from .nat import fix_contacts
from .context import Branch, ResponseContext, choose_best
from .decision import ON_FAILURE, ON_REPLY
from .message import Request, Response, make_response
from .records import FailureConsult
from . import proxy_rules as rules

MAX_FAILURE_ROUNDS = 8       # on_failure -> relay -> on_failure ... per call


class ResponseSide:
    """§16.7 and the response paths for `ProxyCore` (see the module doc)."""

    def _on_response(self, resp: Response, out) -> None:
        via = resp.via
        if via is None:
            self.stats.bad_dropped += 1
            return
        txn = self.client_txns.get((via.branch, resp.cseq_method))
        if txn is None:
            branch = via.branch
            if branch is not None and branch.startswith(KEEPALIVE_BRANCH_PREFIX):
                out.append(KeepaliveAnswer(branch, resp.status))  # a NATed flow is alive
                return
            self._forward_stray_stateless(resp, out)
            return
        self._run(txn, txn.on_response(resp.status, resp), out)

    def _forward_stray_stateless(self, resp: Response, out) -> None:
        """§16.7 step 3 / §16.11: no transaction (e.g. a 2xx retransmission
        after the client transaction ended) — forward 2xx statelessly if the
        top Via is ours, drop the rest."""
        self.stats.stray_responses += 1
        via = resp.via
        if not (200 <= resp.status < 300 and self.local.is_my_via(via.host, via.port)):
            return
        resp.pop_first("via")
        if resp.via is not None:
            self._transmit_response(resp, None, out)

    def _on_branch_response(self, branch: Branch, resp: Response, status: int, out) -> None:
        ctx = branch.ctx
        if branch.flow and status < 300 and resp.source is not None and resp.has_header("contact"):
            # The callee is reached through its flow: so must its dialog be.
            fix_contacts(resp, resp.source[1], resp.source[2])
        if status < 200:
            branch.provisional = True
            if branch.cancel_wanted or ctx.cancelled or (ctx.final_sent and ctx.is_invite):
                self._cancel_branch(branch, out)
            if status == 100 or ctx.final_sent or branch.final is not None:
                return  # §16.7 step 5: 100 is never forwarded
            if ctx.timeout is None and ctx.is_invite and not branch.cancelled:
                self._arm_branch(branch, self.timers.c, out)  # §16.8: a provisional resets Timer C
            self._forward_via_on_reply(ctx, resp, out)
            return
        if status < 300:
            # §16.7 step 5: every 2xx goes upstream at once, even late ones.
            if branch.final is None:
                branch.final = resp
                self._disarm_branch(branch, out)
            first = not ctx.final_sent
            self._forward_via_on_reply(ctx, resp, out)
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
        if branch.targets and self._fail_over(branch, resp, out):
            return   # RFC 3263 §4.3: the next target is tried (proxy_locate.py)
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
            for target in ctx.serial.pop(0):
                self._start_branch(ctx, target, out)
            self._check_complete(ctx, out)
            return
        if not ctx.responses:
            return
        best = choose_best(ctx.responses)
        if (ON_FAILURE in ctx.hooks and not ctx.cancelled
                and ctx.failures_asked < MAX_FAILURE_ROUNDS and best.status < 600):
            ctx.failures_asked += 1
            ctx.consulting = True
            self._consult(FailureConsult(ctx), ON_FAILURE, ctx.request, best, ctx.source,
                          ctx.in_dialog, ctx.vars, ctx.route, out)
            return
        self._forward_best_via_on_reply(ctx, best, out)

    def _forward_best_via_on_reply(self, ctx: ResponseContext, best: Response, out) -> None:
        """The context is complete and nobody tries again: its best answer goes upstream."""
        if best.status == 503:
            # §16.7 step 6: a 503 from downstream becomes 500 upstream, or
            # the UAC would think *we* are overloaded.
            best = best.copy()
            best.status, best.reason = 500, "Server Internal Error"
        self._forward_via_on_reply(ctx, best, out)

    def _forward_via_on_reply(self, ctx: ResponseContext, resp: Response, out) -> None:
        """Send a response from downstream upstream, through on_reply first if
        the route has that hook (in order: one reply at a time is consulted)."""
        if ON_REPLY in ctx.hooks and resp.via is not None and not resp.local:
            ctx.reply_queue.append(resp)
            if len(ctx.reply_queue) == 1:
                self._consult_reply(ctx, out)
            return
        self._forward_through_txn(ctx, resp, out)

    def _forward_through_txn(self, ctx: ResponseContext, resp: Response, out) -> None:
        """Send a response from downstream upstream now, through the server
        transaction; a 2xx the transaction can no longer take (it already
        answered) goes statelessly to the source (§16.7 step 10)."""
        if not resp.local:
            resp.pop_first("via")  # §16.7 step 9: remove our Via
        if ctx.dialog is not None:
            self._dialog_response(ctx, resp, out)
        status = resp.status
        txn = ctx.txn
        if status >= 200:
            if ctx.final_sent and status >= 300:
                return
            ctx.final_sent = True
        self.stats.forwarded_replies[min(status // 100, 6)] += 1
        if txn.terminated or (status >= 300 and txn.state not in (tx.PROCEEDING, tx.TRYING)):
            if 200 <= status < 300:
                self._transmit_response(resp, ctx.source, out)  # §16.7 step 10
            return
        try:
            self._run(txn, txn.respond(status, resp), out)
        except tx.TransactionError:
            if 200 <= status < 300:
                self._transmit_response(resp, ctx.source, out)

    # --------------------------------------------------------------- answers
    def _answer_through_txn(self, ctx: ResponseContext, status: int, reason, out, extra=None) -> None:
        """The proxy itself answers the request (a route's reply, a 487 …),
        through the server transaction."""
        if ctx.final_sent and status >= 200:
            return
        resp = make_response(ctx.request, status, reason, to_tag=self._tag(ctx.request), extra=extra)
        if status >= 200:
            ctx.final_sent = True
        if ctx.dialog is not None:
            self._dialog_response(ctx, resp, out)
        self._send_through_txn(ctx, resp, out)

    def _send_through_txn(self, ctx: ResponseContext, resp: Response, out) -> None:
        """Give a response the proxy made to the server transaction (100
        Trying, the OPTIONS answer, a 400 once the transaction exists)."""
        txn = ctx.txn
        if txn.terminated:
            return
        try:
            self._run(txn, txn.respond(resp.status, resp), out)
        except tx.TransactionError:
            pass  # the transaction already has its final answer

    def _answer_stateless_to_source(self, req: Request, status: int, source, out) -> None:
        """Answer with no transaction (482, 483, 481), to where the request came from."""
        resp = make_response(req, status, to_tag=self._tag(req))
        self._transmit_response(resp, source, out, to_source=True)
        self._count_stateless(status)

    def _count_stateless(self, status) -> None:
        stateless = self.stats.stateless
        stateless[status] = stateless.get(status, 0) + 1

    def _transmit_response(self, resp: Response, source, out, *, to_source: bool = False,
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
            alt = (host, (via.port if via is not None else None) or rules.TRANSPORT_PORTS.get(transport, 5060))
            out.append(Transmit(resp.serialize(), transport, host, port, alt=alt))
            return
        out.append(Transmit(resp.serialize(), transport, host,
                            rules.reply_port(via, transport, port, to_source=to_source)))

    def _synthetic_response(self, ctx: ResponseContext, status: int, reason=None) -> Response:
        """A final response standing for a branch that gave none (408, 503
        after a transport error, 400/416 for a target we cannot reach); sent
        nowhere, it joins the context's responses."""
        if ctx.cancelled and status == 408:
            status, reason = 487, None
        resp = make_response(ctx.request, status, reason, to_tag=self._tag(ctx.request))
        resp.local = True
        return resp
