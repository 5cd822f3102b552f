"""The dialogs the proxy tracks (dialogs.py), for the proxy core.

A mixin of `ProxyCore` (proxy.py). Every initial INVITE the proxy
record-routes is tracked from the decision that relays it, through the
responses that go upstream, to the in-dialog request whose answer ends it
(BYE, or a 481/408 where RFC 3261 says so). A route's `limit_duration` arms a
timer; when it fires the proxy ends the call itself, with a BYE each way.
Each state change goes to the shell as `DialogChange`, which keeps the
store's copy and the profile counts.
"""

from __future__ import annotations

from . import proxy_rules as rules
from . import transaction as tx
from .actions import Arm, DialogChange, Disarm
from .dialogs import CONFIRMED, ENDED, TRYING, DialogTableFull
from .errors import BadMessage
from .records import DialogTimer

# How long a confirmed call without a limit stays tracked if its end never
# passes us; the store's copy lives as long (host/services/dialogs.py).
FORGET_AFTER = 12 * 3600.0


class DialogSide:
    """Dialog tracking for `ProxyCore` (see the module doc)."""

    def _track_dialog(self, ctx, spec, out) -> bool:
        """Start tracking the INVITE of `ctx` (spec: the route's dialog
        options, or None). False when the route asked for a limit the proxy
        cannot keep (the table is full): the call is then refused."""
        spec = spec or {}
        try:
            dialog = self.dialogs.invite_relayed(ctx.request, ctx.source, self.our_record_routes,
                                                 max_duration=spec.get("max_duration"),
                                                 profiles=spec.get("profiles"))
        except (DialogTableFull, BadMessage):
            self.stats.dialogs_untracked += 1
            return not spec   # plain tracking is best effort; a limit is a promise
        ctx.dialog = dialog
        self.stats.dialogs += 1
        self._dialog_changed(dialog, TRYING, out)
        return True

    def _dialog_response(self, ctx, resp, out) -> None:
        """A response of `ctx` goes upstream: the dialog may change state."""
        dialog = ctx.dialog
        if ctx.in_dialog:
            if resp.status >= 200 and self.dialogs.in_dialog_final(ctx.request, resp.status) == ENDED:
                self._dialog_changed(dialog, ENDED, out)
            return
        state = self.dialogs.response_forwarded(dialog, resp)
        if state is None:
            return
        if state == CONFIRMED:
            if not dialog.callee_route and resp.source is not None:
                # A callee reached with no proxy beyond us (a registered
                # phone, maybe behind a NAT): our BYE goes where its 2xx came from.
                dialog.callee_source = resp.source
            # A limited call ends at its limit; any other is forgotten after
            # FORGET_AFTER, in case its BYE never comes through us.
            out.append(Arm(dialog.max_duration or FORGET_AFTER,
                           DialogTimer(dialog.call_id, dialog.from_tag)))
        self._dialog_changed(dialog, state, out)

    def _dialog_timer(self, key, out) -> None:
        """A maximum duration ran out: end every call now past its limit.
        Or an unlimited call reached FORGET_AFTER: stop tracking it."""
        dialog = self.dialogs.get(key.call_id, key.from_tag)
        if dialog is not None and dialog.max_duration is None and dialog.state == CONFIRMED:
            self.dialogs.forget(dialog)
            self._dialog_changed(dialog, ENDED, out)
        for dialog in self.dialogs.expire_due(self.dialogs.now()):
            self._send_byes(dialog, "timeout", out)
            self.stats.dialogs_timed_out += 1
            self._dialog_changed(dialog, ENDED, out)

    def end_dialog(self, ident: str) -> list | None:
        """An operator ends a call (management `dlg.end`): a confirmed
        dialog gets a BYE each way and ends with reason "operator"; returns
        the actions, or None when no confirmed dialog has id `ident` (an
        early one ends with its INVITE: the caller CANCELs it)."""
        dialog = self.dialogs.by_id(ident)
        if dialog is None or dialog.state != CONFIRMED:
            return None
        out: list = []
        self._send_byes(dialog, "operator", out)
        self.stats.dialogs_ended_by_operator += 1
        self._dialog_changed(dialog, ENDED, out)
        return out

    def _send_byes(self, dialog, reason: str, out) -> None:
        local = self.listen
        requests = self.dialogs.end_requests(dialog, ("udp", *local["udp"]) if "udp" in local
                                             else next((t, *hp) for t, hp in local.items()),
                                             self.new_id, reason)
        for bye, dest in requests:
            self._send_own_request(bye, dest, out)

    def _send_own_request(self, req, dest, out) -> None:
        """A request the proxy originates (a BYE ending a call): its own
        client transaction, its answer absorbed."""
        transport = dest[0]
        if transport not in self.listen:
            return
        host, port = self.listen[transport]
        if req.via is not None and req.via.transport.lower() != transport:
            req.pop_first("via")
            req.push_front("via", rules.via_value(transport, host, port,
                                                  rules.MAGIC_COOKIE + self.new_id()))
        txn = tx.ClientTransaction(req, invite=False, reliable=transport != "udp",
                                   config=self.timers, key=tx.client_key(req.via.branch, req.method),
                                   context=None)
        self.client_txns[txn.key] = txn
        self._own_dests[txn.key] = tuple(dest)
        self._run(txn, txn.start(), out)

    def _dialog_changed(self, dialog, state, out) -> None:
        if state == ENDED and dialog.confirmed_at is not None:
            # Its timer (limit or FORGET_AFTER) must not sit in the heap for hours.
            out.append(Disarm(DialogTimer(dialog.call_id, dialog.from_tag)))
        out.append(DialogChange(state, dialog, dialog.profiles, self.dialogs.now()))
