"""Consulting the route and applying its decision, for the proxy core.

A mixin of `ProxyCore` (proxy.py). `_consult` files a record (records.py)
under a fresh token and emits `Consult`; `ProxyCore.decided` finds the record
and calls the matching `_apply_*` here. What an empty decision means is the
route contract's (host/routes/verbs.py): relay on_request, forward the best
answer on_failure, forward the reply on_reply.
"""

from __future__ import annotations

from .actions import Arm, Consult
from .context import ResponseContext, choose_best
from .decision import ON_REPLY, Decision
from .errors import BadMessage
from .message import Request
from .nat import fix_contacts
from .records import ForgetTimer, ReplyConsult
from .uri import parse_uri


class DecisionSide:
    """Route consults and their decisions for `ProxyCore` (see the module doc)."""

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
            record = self._apply_edits(ctx.request, d.edits, ctx.source)
        except BadMessage as exc:
            self.stats.script_decision_errors += 1
            self._answer_through_txn(ctx, 500, f"Bad route decision: {exc.reason}"[:100], out)
            return
        ctx.record_route = (record or d.dialog is not None) and not ctx.in_dialog
        if (ctx.record_route and ctx.is_invite and ctx.dialog is None
                and d.verb in (None, "relay") and not self._track_dialog(ctx, d.dialog, out)):
            self._answer_through_txn(ctx, 503, "Too Many Dialogs", out, extra=[("retry-after", "30")])
            return
        self._apply_verb(ctx, d, out)

    def _apply_verb(self, ctx: ResponseContext, d: Decision, out) -> None:
        verb = d.verb
        if verb is None or verb == "relay":
            ctx.parallel, ctx.timeout = d.parallel, d.timeout
            if d.branches is not None:
                self._relay_groups(ctx, d.branches, out)
            else:
                self._relay(ctx, d.targets, out)
        elif verb == "reply":
            self._answer_through_txn(ctx, d.code, d.reason or None, out, extra=d.headers)
        elif verb == "redirect":
            extra = [("contact", f"<{c}>" if "<" not in c else c) for c in d.contacts]
            self._answer_through_txn(ctx, 302, None, out, extra=extra)
        elif verb == "drop":
            # Keep the transaction a while so retransmissions are absorbed
            # instead of reaching the route again, then forget it.
            self._forget_gen += 1
            ctx.timer_gen = self._forget_gen
            out.append(Arm(64 * self.timers.t1, ForgetTimer(ctx.txn.key, ctx.timer_gen)))
        else:
            self._answer_through_txn(ctx, 500, "Unknown route decision", out)

    def _apply_edits(self, message, edits, source) -> bool:
        """Apply a route's edits to the request (or, in on_reply, the reply)
        that came from `source`; True when it asked to record-route."""
        record = False
        for edit in edits:
            verb = edit[0]
            if verb == "fix_contact":
                # RFC 3581 territory: the UA's own idea of its address is
                # useless behind a NAT; where its message came from is not.
                fix_contacts(message, source[1], source[2])
            elif verb == "set_ruri":
                parse_uri(edit[1])
                message.uri = edit[1]
            elif verb == "set_header":
                message.set_header(edit[1], edit[2])
            elif verb == "add_header":
                message.add_header(edit[1], edit[2])
            elif verb == "remove_header":
                message.remove_header(edit[1])
            elif verb == "record_route":
                record = True
        return record

    def _apply_failure_decision(self, ctx: ResponseContext, d: Decision, out) -> None:
        if ctx.final_sent or ctx.txn.terminated:
            return
        if d.vars is not None:
            ctx.vars = d.vars
        try:
            self._apply_edits(ctx.request, d.edits, ctx.source)
        except BadMessage:
            self.stats.script_decision_errors += 1
        if d.verb is None:
            self._forward_best_via_on_reply(ctx, choose_best(ctx.responses), out)
        elif d.verb == "relay":
            ctx.responses = []
            self._apply_verb(ctx, d, out)
        else:
            self._apply_verb(ctx, d, out)

    def _consult_reply(self, ctx, out) -> None:
        resp = ctx.reply_queue[0]
        self._consult(ReplyConsult(ctx), ON_REPLY, ctx.request, resp, ctx.source,
                      ctx.in_dialog, ctx.vars, ctx.route, out)

    def _apply_reply_decision(self, ctx: ResponseContext, d: Decision, out) -> None:
        resp = ctx.reply_queue.pop(0)
        if d.vars is not None:
            ctx.vars = d.vars
        if not (d.verb == "drop" and resp.status < 200):
            try:
                self._apply_edits(resp, [e for e in d.edits if e[0] != "set_ruri"],
                                  resp.source or ctx.source)
            except BadMessage:
                self.stats.script_decision_errors += 1
            self._forward_through_txn(ctx, resp, out)
        if ctx.reply_queue:
            self._consult_reply(ctx, out)

    def _apply_ack_decision(self, req: Request, source, d: Decision, out) -> None:
        if d.verb not in (None, "relay"):
            return  # an ACK cannot be answered: anything but relay drops it
        try:
            self._apply_edits(req, [e for e in d.edits if e[0] != "record_route"], source)
            if d.targets:
                req.uri = d.targets[0]
            self._relay_stateless(req, None, out)
        except BadMessage:
            self.stats.script_decision_errors += 1
