"""INVITE dialogs as a record-routing proxy sees them (RFC 3261 §12, §16.12).

The proxy core tells the table what it relays: the initial INVITE, each
response of it that goes upstream, each in-dialog request and its final
answer. The table keeps, per dialog, what the proxy needs to end a call on
its own (the two route sets split around our Record-Route entry, both remote
targets, both CSeq counters, where the caller really sent from) and hands
back the two BYE requests when a maximum duration runs out.

One Dialog per Call-ID and From tag: with forking, early dialogs of several
To tags may exist, but the first To tag a 2xx confirms is the one kept.
A dialog leaves the table the moment its end is reported (the method that
ends it returns "ended"), so the table holds live dialogs only; the caller
stores or logs the ended Dialog it still holds. Clocks are injected.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Callable, Iterable

from .errors import BadMessage
from .headers import uri_of
from .message import Request, Response
from .proxy_rules import DEFAULT_MAX_FORWARDS, MAGIC_COOKIE, TRANSPORT_PORTS, via_value
from .uri import URI, parse_uri

__all__ = ["TRYING", "EARLY", "CONFIRMED", "ENDED", "MAX_DIALOGS", "Dialog", "DialogTable", "DialogTableFull"]

# TRYING: INVITE relayed, no tagged provisional yet (there is no dialog in
# §12 terms until one comes, and a management view should not say "early").
TRYING, EARLY, CONFIRMED, ENDED = "trying", "early", "confirmed", "ended"
MAX_DIALOGS = 200_000

Address = tuple[str, str, int]  # (transport, host, port)


class DialogTableFull(Exception):
    """invite_relayed found MAX_DIALOGS live dialogs. The core answers the
    INVITE 503 (or relays it untracked, if its policy says so): a call it
    cannot track is a call whose duration limit it cannot enforce."""


def dialog_id(call_id: str, from_tag: str) -> str:
    """A short stable key for stores and the management API."""
    key = f"{call_id};{from_tag}".encode("utf-8", "surrogateescape")
    return hashlib.blake2s(key, digest_size=10).hexdigest()


class Dialog:
    __slots__ = (
        "id", "call_id", "from_tag", "to_tag", "caller_uri", "callee_uri",
        "from_value", "to_value", "state", "created_at", "confirmed_at", "ended_at",
        "end_reason", "max_duration", "profiles", "caller_contact", "callee_contact",
        "caller_route", "callee_route", "caller_cseq", "callee_cseq", "caller_source",
        "our_route", "callee_source",
    )

    def __init__(self, call_id: str, from_tag: str, from_value: str, to_value: str,
                 caller_uri: str, callee_uri: str, now: float):
        self.id = dialog_id(call_id, from_tag)
        self.call_id = call_id
        self.from_tag = from_tag
        self.to_tag: str | None = None
        self.caller_uri = caller_uri
        self.callee_uri = callee_uri
        self.from_value = from_value        # the caller's From, tag included
        self.to_value = to_value            # the callee's To; tagged once confirmed
        self.state = TRYING
        self.created_at = now
        self.confirmed_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self.max_duration: float | None = None
        self.profiles: dict[str, str] = {}
        self.caller_contact: str | None = None
        self.callee_contact: str | None = None
        self.caller_route: list[str] = []   # URIs beyond us toward the caller, nearest first
        self.callee_route: list[str] = []   # URIs beyond us toward the callee, nearest first
        self.caller_cseq = 0
        self.callee_cseq = 0
        self.caller_source: Address | None = None
        self.our_route: list[str] = []      # our own Record-Route URI(s)
        self.callee_source: Address | None = None   # where its 2xx came from, with no proxy beyond us

    def duration(self, now: float) -> float:
        """Talk time: from the 2xx to the end (or `now`); 0 for a call never answered."""
        if self.confirmed_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.confirmed_at)

    def as_record(self, now: float | None = None) -> dict:
        """JSON-able summary; `now` gives a live dialog's duration so far."""
        at = self.ended_at if self.ended_at is not None else now
        return {
            "id": self.id, "call_id": self.call_id, "from_tag": self.from_tag,
            "to_tag": self.to_tag, "from": self.caller_uri, "to": self.callee_uri,
            "state": self.state, "created_at": self.created_at,
            "confirmed_at": self.confirmed_at, "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "duration": self.duration(at) if at is not None else None,
            "max_duration": self.max_duration, "profiles": dict(self.profiles),
        }

    def __repr__(self) -> str:
        return f"<Dialog {self.id} {self.state} call-id={self.call_id!r}>"


class DialogTable:
    def __init__(self, clock: Callable[[], float], *, max_dialogs: int = MAX_DIALOGS):
        # No default clock: host/sip imports no `time` (tests/sip/test_sansio.py).
        self._clock = clock
        self._max = max_dialogs
        self._dialogs: dict[tuple[str, str], Dialog] = {}
        self._deadlines: list[tuple[float, int, Dialog]] = []  # heap; stale entries skipped
        self._ours: dict[tuple, list[str]] = {}   # our Record-Route values -> their URIs
        self._seq = 0

    def now(self) -> float:
        return self._clock()

    # --- the initial INVITE and its responses ------------------------------
    def invite_relayed(self, invite: Request, source: Address, our_record_route: str | Iterable[str], *,
                       max_duration: float | None = None, profiles: dict[str, str] | None = None) -> Dialog:
        """Track an initial INVITE we relay and record-route. `invite` is as
        received (before our Via and Record-Route); `our_record_route` is the
        value we added (or both, when we double record-route, RFC 5658).
        A retransmission or a spiral back through us returns the same Dialog.
        Raises DialogTableFull beyond the bound, BadMessage on a From with no tag."""
        from_value = invite.header("from") or ""
        from_tag = invite.from_tag
        if not from_tag:
            # §8.1.1.3 makes the tag mandatory; without one there is no dialog id.
            raise BadMessage("INVITE From without a tag")
        key = (invite.call_id, from_tag)
        dialog = self._dialogs.get(key)
        if dialog is not None:
            return dialog
        if len(self._dialogs) >= self._max:
            raise DialogTableFull(f"{len(self._dialogs)} dialogs")
        to_value = invite.header("to") or ""
        dialog = Dialog(invite.call_id, from_tag, from_value, to_value,
                        uri_of(from_value), uri_of(to_value), self._clock())
        dialog.max_duration = max_duration
        dialog.profiles = dict(profiles or {})
        dialog.caller_contact = _contact_of(invite)
        dialog.caller_cseq = invite.cseq
        dialog.caller_source = tuple(source)
        # Until a 2xx says otherwise, the route toward the caller is the
        # Record-Route the INVITE brought (nearest proxy on top).
        dialog.caller_route = [uri_of(v) for v in invite.header_values("record-route")]
        ours = (our_record_route,) if isinstance(our_record_route, str) else tuple(our_record_route)
        parsed = self._ours.get(ours)
        if parsed is None:   # the core passes the same values for every call: parse them once
            parsed = self._ours[ours] = [uri_of(v) for v in ours]
        dialog.our_route = parsed
        self._dialogs[key] = dialog
        return dialog

    def response_forwarded(self, dialog: Dialog, resp: Response) -> str | None:
        """A response of the initial INVITE goes upstream. Returns the state
        entered ("early", "confirmed", "ended") on a transition, else None."""
        if dialog.state == ENDED or resp.cseq_method != "INVITE":
            return None
        status = resp.status
        if status < 200:
            if status > 100 and dialog.state == TRYING and resp.to_tag:
                # The first early To tag; a 2xx of another fork may replace it.
                dialog.state = EARLY
                dialog.to_tag = resp.to_tag
                return EARLY
            return None
        if status < 300:
            if dialog.state == CONFIRMED or not resp.to_tag:
                return None  # a retransmission, or the 2xx of a losing fork
            now = self._clock()
            dialog.state = CONFIRMED
            dialog.confirmed_at = now
            dialog.to_tag = resp.to_tag
            dialog.to_value = resp.header("to") or dialog.to_value
            dialog.callee_contact = _contact_of(resp)
            self._split_route_set(dialog, [uri_of(v) for v in resp.header_values("record-route")])
            if dialog.max_duration is not None:
                self._seq += 1
                heapq.heappush(self._deadlines, (now + dialog.max_duration, self._seq, dialog))
            return CONFIRMED
        if dialog.state == CONFIRMED:
            return None  # a forked branch's failure cannot undo a confirmed call
        # 487 is what a CANCEL brings back: operators count it apart from refusals.
        return self._end(dialog, "cancelled" if status == 487 else "rejected")

    def _split_route_set(self, dialog: Dialog, rr: list[str]) -> None:
        """§12.1.2 / §16.12: the 2xx's Record-Route lists the proxies callee
        first. Those above our entry lie toward the callee and are reversed so
        the nearest comes first; those below lie toward the caller, nearest
        first already."""
        # Our entries come back as we wrote them: compare the text first,
        # and parse (URI equivalence) only when a hop rewrote them.
        mine = [i for i, u in enumerate(rr) if u in dialog.our_route]
        if not mine:
            ours = [u for u in map(_parse, dialog.our_route) if u is not None]
            mine = [i for i, u in enumerate(map(_parse, rr)) if u is not None and u in ours]
        if not mine:
            # The callee dropped our entry: in-dialog requests will bypass us;
            # keep what the INVITE told us about the caller's side.
            dialog.callee_route = []
            return
        dialog.callee_route = rr[:mine[0]][::-1]
        dialog.caller_route = rr[mine[-1] + 1:]

    # --- in-dialog requests ------------------------------------------------
    def find(self, req: Request) -> tuple[Dialog, str] | None:
        """The dialog of an in-dialog request and who sent it ("caller" or
        "callee"), matched by Call-ID and tags (§12.2.2). Before a 2xx the To
        tag of an early dialog is not checked: any fork's early dialog
        (PRACK, UPDATE) belongs to the one Dialog of this Call-ID and From tag."""
        from_tag, to_tag = req.from_tag, req.to_tag
        if not from_tag or not to_tag:
            return None
        dialog = self._dialogs.get((req.call_id, from_tag))
        if dialog is not None and (dialog.state != CONFIRMED or dialog.to_tag == to_tag):
            return dialog, "caller"
        dialog = self._dialogs.get((req.call_id, to_tag))
        if dialog is not None and (dialog.state != CONFIRMED or dialog.to_tag == from_tag):
            return dialog, "callee"
        return None

    def in_dialog_request(self, req: Request) -> Dialog | None:
        """An in-dialog request we relay: note its CSeq for its direction and,
        for a target refresh (re-INVITE, UPDATE), the sender's new Contact."""
        found = self.find(req)
        if found is None:
            return None
        dialog, side = found
        # The Contact a UA puts in a refresh is where it is reachable now, even
        # if the refresh itself fails; waiting for a 2xx we may never see
        # (in_dialog_final gets no response) would keep a stale target.
        contact = _contact_of(req) if req.method in _TARGET_REFRESH else None
        if side == "caller":
            dialog.caller_cseq = max(dialog.caller_cseq, req.cseq)
            if contact:
                dialog.caller_contact = contact
        else:
            dialog.callee_cseq = max(dialog.callee_cseq, req.cseq)
            if contact:
                dialog.callee_contact = contact
        return dialog

    def in_dialog_final(self, req: Request, status: int) -> str | None:
        """The final response to an in-dialog request we relayed. Returns
        "ended" when it ends the dialog."""
        found = self.find(req)
        if found is None:
            return None
        dialog, _ = found
        if dialog.state != CONFIRMED:
            return None  # early-dialog requests end nothing; the INVITE's final does
        if req.method == "BYE":
            if status in (401, 407):
                # Challenged: the UA sends the BYE again with credentials, and
                # that answer ends the dialog (ending now would lose its record).
                return None
            return self._end(dialog, "bye")
        if status == 481:
            # §12.2.1.2: the peer has no such dialog (RFC 5057: for any request).
            return self._end(dialog, "481")
        if status == 408 and req.method in _TARGET_REFRESH:
            # §12.2.1.2 / §14.1; limited to INVITE usages: a 408 to an INFO or
            # NOTIFY is mostly a slow application, not a lost peer.
            return self._end(dialog, "408")
        return None

    # --- maximum duration ----------------------------------------------------
    def deadline(self, dialog: Dialog) -> float | None:
        """When a confirmed dialog's maximum duration runs out (clock value),
        for a core that arms one timer per dialog instead of polling."""
        if dialog.state != CONFIRMED or dialog.max_duration is None or dialog.confirmed_at is None:
            return None
        return dialog.confirmed_at + dialog.max_duration

    def expire_due(self, now: float) -> list[Dialog]:
        """Live confirmed dialogs whose deadline is at or before `now`, each
        returned once, earliest first. They stay in the table until
        end_requests (or remove) ends them."""
        heap, due = self._deadlines, []
        while heap and heap[0][0] <= now:
            at, _, dialog = heapq.heappop(heap)
            if dialog.state == CONFIRMED and self.deadline(dialog) == at \
                    and self._dialogs.get((dialog.call_id, dialog.from_tag)) is dialog:
                due.append(dialog)
        # Entries of dialogs ended early wait for their deadline to be popped;
        # rebuild when they outnumber the live ones so the heap stays bounded.
        if len(heap) > 2 * len(self._dialogs) + 64:
            live = self._dialogs
            self._deadlines = [e for e in heap if live.get((e[2].call_id, e[2].from_tag)) is e[2]]
            heapq.heapify(self._deadlines)
        return due

    def end_requests(self, dialog: Dialog, local: Address,
                     new_branch: Callable[[], str], reason: str = "timeout") -> list[tuple[Request, Address]]:
        """The two BYEs the proxy sends itself to end a confirmed call (max
        duration, management hang-up), each with its destination; the dialog
        ends with `reason`. An early or ended dialog gets none (an
        early call ends with its INVITE transaction: the core CANCELs it)."""
        if dialog.state != CONFIRMED:
            return []
        transport, host, port = local
        # Toward the callee, in the caller's name (§12.2.1.1): CSeq one above
        # the caller's last, which the callee must accept (§12.2.2).
        dialog.caller_cseq += 1
        # With no Contact in the 2xx (a broken UA) the To URI is the best target left.
        # Each BYE on its own: a side we cannot address must not spare the other.
        out = [bye for bye in (
            _bye_toward(dialog.callee_contact or dialog.callee_uri, dialog.callee_route,
                        dialog.callee_source, dialog.from_value, dialog.to_value,
                        dialog.call_id, dialog.caller_cseq),
            # Toward the caller, in the callee's name. With no request from the
            # callee yet the caller's remote CSeq is empty and any value is
            # accepted (§12.2.2); 1 is the smallest valid one.
            _bye_toward(dialog.caller_contact or dialog.caller_uri, dialog.caller_route,
                        dialog.caller_source, dialog.to_value, dialog.from_value,
                        dialog.call_id, dialog.callee_cseq + 1),
        ) if bye is not None]
        dialog.callee_cseq += 1
        for req, _ in out:
            branch = new_branch()
            if not branch.startswith(MAGIC_COOKIE):
                branch = MAGIC_COOKIE + branch
            req.push_front("via", via_value(transport, host, port, branch))
        self._end(dialog, reason)
        return out

    # --- the table -----------------------------------------------------------
    def _end(self, dialog: Dialog, reason: str) -> str:
        dialog.state = ENDED
        dialog.ended_at = self._clock()
        dialog.end_reason = reason
        self.remove(dialog)
        return ENDED

    def get(self, call_id: str, from_tag: str) -> Dialog | None:
        return self._dialogs.get((call_id, from_tag))

    def by_id(self, ident: str) -> Dialog | None:
        """The live dialog whose `dialog_id` is `ident` (management: a scan,
        not a hot-path lookup)."""
        return next((d for d in self._dialogs.values() if d.id == ident), None)

    def forget(self, dialog: Dialog) -> str:
        """Stop tracking a call whose end we never saw (a BYE that did not
        come through us): ENDED with reason "lost"."""
        return self._end(dialog, "lost")

    def remove(self, dialog: Dialog) -> None:
        key = (dialog.call_id, dialog.from_tag)
        if self._dialogs.get(key) is dialog:
            del self._dialogs[key]

    def __len__(self) -> int:
        return len(self._dialogs)

    def active(self) -> list[Dialog]:
        return list(self._dialogs.values())


_TARGET_REFRESH = frozenset({"INVITE", "UPDATE"})


def _contact_of(msg) -> str | None:
    return uri_of(msg.header("contact")) or None


def _parse(uri: str) -> URI | None:
    try:
        return parse_uri(uri)
    except BadMessage:
        return None


def _bye(target: str, route: list[str], from_value: str, to_value: str, call_id: str,
         cseq: int) -> tuple[Request, str]:
    """A BYE and the URI of its next hop: the first Route (loose routing,
    §8.1.2), else the Request-URI (a strict router, or no route at all)."""
    route = list(route)
    if route and "lr" not in (_parse(route[0]) or URI()).params:
        # §12.2.1.1: a strict router first takes the Request-URI, and the
        # remote target goes last in the Route set.
        uri, route = route[0], route[1:] + [target]
        hop = uri
    else:
        uri = target
        hop = route[0] if route else uri
    headers = [("max-forwards", str(DEFAULT_MAX_FORWARDS))]
    headers += [("route", f"<{u}>") for u in route]
    headers += [("from", from_value), ("to", to_value), ("call-id", call_id),
                ("cseq", f"{cseq} BYE")]  # serialize() writes Content-Length: 0
    req = Request("BYE", uri, headers)
    req.call_id, req.cseq, req.cseq_method = call_id, cseq, "BYE"
    return req, hop


def _bye_toward(target: str, route: list[str], source: Address | None, from_value: str,
                to_value: str, call_id: str, cseq: int) -> tuple[Request, Address] | None:
    """A BYE to one side and where it goes, None when it cannot be addressed.
    With no proxy between us and that side, it goes to `source` (where the
    side's INVITE or 2xx came from): its Contact may be a private address
    behind a NAT."""
    try:
        req, hop = _bye(target, route, from_value, to_value, call_id, cseq)
        dest = _destination(hop) if route or source is None else source
    except BadMessage:
        return None
    return req, dest


def _destination(hop: str) -> Address:
    """(transport, host, port) of a next-hop URI; a name is left for the
    core to resolve (RFC 3263)."""
    uri = _parse(hop)
    if uri is None:
        raise BadMessage(f"no usable next hop {hop[:80]!r} for a BYE")
    transport = uri.transport
    return transport, uri.host.strip("[]"), uri.port or TRANSPORT_PORTS.get(transport, 5060)
