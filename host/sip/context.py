"""The response context of a proxied request (RFC 3261 §16.7): its branches,
the responses they returned, and the choice of the best one."""

from __future__ import annotations

from .message import Request, Response

# §16.7 step 6: among 4xx, these carry information the UAC can act on.
_PREFERRED_4XX = (401, 407, 415, 420, 484)


def choose_best(responses: list[Response]) -> Response | None:
    """§16.7 step 6: any 6xx wins; otherwise the lowest class, preferring
    401/407/415/420/484 among 4xx; otherwise the first of the class."""
    if not responses:
        return None
    six = [r for r in responses if r.status >= 600]
    if six:
        return six[0]
    lowest = min(r.status // 100 for r in responses)
    candidates = [r for r in responses if r.status // 100 == lowest]
    if lowest == 4:
        for r in candidates:
            if r.status in _PREFERRED_4XX:
                return r
        # A synthesized 408 is the least informative 4xx: prefer any real one.
        real = [r for r in candidates if r.status != 408]
        if real:
            return real[0]
    return candidates[0]


class Branch:
    """One client transaction of a response context (§16.6).

    `ctx` <-> `ctx.branches` and `txn` <-> `txn.context` are reference
    cycles while the call runs; the proxy breaks them as the transactions
    end (`ResponseContext.live`), so a finished call is freed by reference
    counting instead of waiting for the cycle collector."""

    __slots__ = ("ctx", "uri", "request", "dest", "txn", "provisional", "final",
                 "cancel_wanted", "cancelled", "timer_gen", "timer_armed", "key", "data",
                 "flow", "targets", "unstamped", "deadline", "name", "__weakref__")

    def __init__(self, ctx, uri: str, request: Request, dest: tuple[str, str, int]):
        self.ctx = ctx
        self.uri = uri
        self.request = request
        self.dest = dest            # (transport, host, port)
        self.txn = None
        self.provisional = False    # a 1xx came back: CANCEL is now allowed (§9.1)
        self.final: Response | None = None
        self.cancel_wanted = False
        self.cancelled = False      # CANCEL sent
        self.timer_gen = 0          # generation of the branch timer (Timer C, timeout, CANCEL)
        self.timer_armed = False    # ... and whether it is pending
        self.key = None             # the key of its client transaction
        self.data = b""             # the request as sent, serialized once
        self.flow = False           # sent to where a binding registered from (NAT, connection)
        # RFC 3263 §4.3 (proxy_locate.py): the targets left to fail over
        # to, the request before it was stamped for one, and when the
        # branch's time (Timer C or the route's timeout) runs out.
        self.targets = ()
        self.unstamped = None
        self.deadline = None
        # The SIP domain a TLS next hop must prove (RFC 5922 §4) when `dest`
        # came from DNS; None when `dest` is what the URI named.
        self.name = None

    @property
    def done(self) -> bool:
        return self.final is not None


class ResponseContext:
    """Everything the proxy keeps about one server transaction it is relaying."""

    __slots__ = ("txn", "request", "source", "is_invite", "branches", "serial", "responses",
                 "final_sent", "cancelled", "route", "hooks", "vars", "in_dialog",
                 "failures_asked", "next_hop", "record_route", "consulting", "reply_queue",
                 "timeout", "parallel", "live", "timer_gen", "dialog", "received_uri",
                 "__weakref__")

    def __init__(self, txn, request: Request, source: tuple[str, str, int], in_dialog: bool):
        self.txn = txn
        self.request = request
        self.source = source
        self.is_invite = request.method == "INVITE"
        self.branches: list[Branch] = []
        self.serial: list[list] = []       # groups of targets still to try, in order
        self.responses: list[Response] = []  # final responses from finished branches
        self.final_sent = False
        self.cancelled = False
        self.route = None                  # the pinned route generation, opaque here
        self.hooks: frozenset = frozenset()
        self.vars: dict | None = None
        self.in_dialog = in_dialog
        self.failures_asked = 0
        self.next_hop = None               # a URI forced as next hop (static relay mode)
        self.record_route = False
        self.consulting = False            # a route event is outstanding
        self.reply_queue: list = []        # replies waiting for on_reply, in order
        self.timeout: float | None = None
        self.parallel = True
        # Transactions of this call not yet ended: the server transaction and
        # each branch's client transaction. At 0 the call is over and the
        # proxy unlinks its branches (see Branch).
        self.live = 1
        self.timer_gen = 0                 # of the ForgetTimer of a dropped request
        self.dialog = None                 # the dialog (dialogs.py) it creates or belongs to
        self.received_uri = request.uri    # before any retargeting: the loop hash's (§16.6 step 8)

    def pending(self) -> list[Branch]:
        return [b for b in self.branches if b.final is None]
