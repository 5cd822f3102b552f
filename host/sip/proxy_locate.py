"""Next hops found through DNS, and failover between them (RFC 3263 §4).

A mixin of `ProxyCore` (proxy.py). When a branch's next hop is a name and
the shell resolves names (`ProxyCore.locating`), the branch waits, with no
client transaction yet, while the shell runs RFC 3263 (host/sip/locate.py
over host/shell/resolver.py) and hands back the ordered targets through
`located`. The branch is then stamped for the first target's transport and
sent; the other targets stay on the branch.

§4.3: when an attempt ends in a 503, a transport error or a transaction
timeout (no answer at all), the next target is tried for the same branch: a
new client transaction with a new branch id, within what is left of the
branch's time (Timer C or the route's timeout). The failed attempt's answer
is kept only if it was the last one.

The branch keeps the located name (`Branch.name`): a TLS next hop found
through DNS must prove, by its certificate, that it serves that SIP domain,
not the address DNS gave (RFC 5922 §4); the name goes with every send of the
branch to the connection (SNI and the check, host/shell/tls.py).

A request relayed without a transaction (the ACK for a 2xx, §16.11) is
located the same way (NAPTR, SRV, A/AAAA, from the shell's cache at once
when it has the answers), then stamped for the first target's transport and
sent there; with no transaction nothing fails over, and when the name does
not resolve the request is dropped (nobody waits for an answer to it).
"""

from __future__ import annotations

from .actions import Locate, Transmit
from .context import Branch, ResponseContext

# Stateless relays waiting for DNS at once: each holds its request; an ACK
# flood toward names the cache does not know must not hold them by the
# million (the resolver gives up on a name within seconds anyway).
MAX_STATELESS_LOCATING = 1024


def located_name(host: str) -> str:
    """The SIP domain of a located URI host, as certificates write it."""
    return host.strip("[]").rstrip(".").lower()


class LocateSide:
    """RFC 3263 targets and §4.3 failover for `ProxyCore` (see the module doc)."""

    def _locate_branch(self, ctx: ResponseContext, target, req, hop, out) -> None:
        branch = Branch(ctx, target, req, None)
        ctx.branches.append(branch)
        self._locate_token += 1
        token = self._locate_token
        self._locating[token] = branch
        timeout = ctx.timeout or (self.timers.c if ctx.is_invite else None)
        if timeout:
            branch.deadline = self.clock() + timeout
        branch.name = located_name(hop.host)
        out.append(self._locate_action(token, hop))

    def _locate_action(self, token: int, hop) -> Locate:
        params = hop.params
        transport = params.get("transport") if params else None
        return Locate(token, hop.scheme, hop.host, hop.port, transport, self.supported)

    def _locate_stateless(self, req, hop, out) -> None:
        """Locate the next hop of a request relayed without a transaction;
        `located` stamps and sends it (see the module doc)."""
        if len(self._locating_stateless) >= MAX_STATELESS_LOCATING:
            self.stats.stateless_unlocated += 1
            return
        self._locate_token += 1
        token = self._locate_token
        self._locating_stateless[token] = (req, located_name(hop.host))
        out.append(self._locate_action(token, hop))

    def located(self, token: int, targets: list) -> list:
        """The shell found where the branch `token` goes (RFC 3263): the
        ordered `locate.Target`s, empty when the name does not resolve."""
        out: list = []
        branch = self._locating.pop(token, None)
        if branch is None:
            waiting = self._locating_stateless.pop(token, None)
            if waiting is not None:
                self._located_stateless(*waiting, targets, out)
            return out
        ctx = branch.ctx
        if branch.final is not None:
            return out
        if ctx.cancelled or ctx.final_sent or branch.cancel_wanted or ctx.txn.terminated:
            # CANCELled, or answered by another branch, while we looked.
            self._branch_final(branch, self._synthetic_response(ctx, 487), out)
            return out
        targets = [t for t in targets if t.transport in self.listen]
        if not targets:
            self._branch_final(branch, self._synthetic_response(ctx, 503, "Unresolvable Destination"), out)
            return out
        first = targets[0]
        branch.dest = (first.transport, first.ip, first.port)
        branch.targets = tuple(targets[1:])
        req = branch.request
        if branch.targets:
            branch.unstamped = req.copy()
        self._send_branch(branch, req, out, self._time_left(branch))
        return out

    def _located_stateless(self, req, name: str, targets: list, out) -> None:
        first = next((t for t in targets if t.transport in self.listen), None)
        if first is None:
            self.stats.stateless_unlocated += 1
            return
        data = self._stamp_stateless(req, first.transport)
        out.append(Transmit(data, first.transport, first.ip, first.port, name=name))

    def _time_left(self, branch: Branch) -> float | None:
        if branch.deadline is None:
            return None
        return max(branch.deadline - self.clock(), 0.001)

    def _fail_over(self, branch: Branch, resp, out) -> bool:
        """§4.3: `branch`'s attempt ended in `resp`; if that asks for the next
        target and one is left, send there instead (True). A 408 counts only
        when it is our own (the client transaction's timeout), not the
        branch's own timer running out, nor a downstream 408."""
        if not branch.targets:
            return False
        ctx = branch.ctx
        status = resp.status
        if not (status == 503 or (status == 408 and resp.local)):
            return False
        if branch.cancel_wanted or branch.cancelled or ctx.cancelled or ctx.final_sent:
            return False
        left = self._time_left(branch)
        if left is not None and left <= 0.001:
            return False
        nxt = branch.targets[0]
        retry = Branch(ctx, branch.uri, branch.unstamped.copy(), (nxt.transport, nxt.ip, nxt.port))
        retry.targets = branch.targets[1:]
        retry.unstamped = branch.unstamped if retry.targets else None
        retry.deadline = branch.deadline
        retry.name = branch.name
        # The failed attempt is over: it leaves the pending set, its answer
        # is not one of the context's.
        branch.final = resp
        branch.targets = ()
        branch.unstamped = None
        self._disarm_branch(branch, out)
        self.stats.failovers += 1
        ctx.branches.append(retry)
        self._send_branch(retry, retry.request, out, left)
        return True
