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
"""

from __future__ import annotations

from .actions import Locate
from .context import Branch, ResponseContext


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
        params = hop.params
        transport = params.get("transport") if params else None
        out.append(Locate(token, hop.scheme, hop.host, hop.port, transport, self.supported))

    def located(self, token: int, targets: list) -> list:
        """The shell found where the branch `token` goes (RFC 3263): the
        ordered `locate.Target`s, empty when the name does not resolve."""
        out: list = []
        branch = self._locating.pop(token, None)
        if branch is None:
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
