"""Join a UAC, the proxy core and UASes with no sockets, so whole call flows
run as function calls on a virtual clock.

The `Network` delivers bytes between nodes by (host, port), optionally losing
some, and fires timers in deadline order. UAs here are deliberately small and
scripted: they speak just enough SIP to exercise the proxy.
"""

from __future__ import annotations

import heapq
import itertools

from host.routes.event import script_event
from host.sip.decision import Decision
from host.sip.message import Request, Response, make_response
from host.sip.parser import parse_message
from host.sip.proxy import Arm, Consult, ProxyCore, Transmit
from host.sip.headers import parse_name_addr

PROXY = ("127.0.0.1", 5060)


class Network:
    def __init__(self):
        self.now = 0.0
        self.nodes: dict[tuple[str, int], object] = {}
        self._queue: list = []
        self._seq = itertools.count()
        self.trace: list[tuple[float, tuple, tuple, str]] = []  # (time, src, dst, first line)
        self.drop = lambda src, dst, data: False

    def attach(self, addr, node):
        self.nodes[addr] = node
        node.net, node.addr = self, addr

    def send(self, src, dst, data: bytes, delay: float = 0.0):
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), "msg", (src, dst, data)))

    def at(self, delay: float, callback):
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), "call", callback))

    def run(self, until: float = 600.0, max_events: int = 100_000):
        for _ in range(max_events):
            if not self._queue or self._queue[0][0] > until:
                self.now = max(self.now, min(until, self._queue[0][0] if self._queue else until))
                return
            when, _, kind, payload = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            if kind == "call":
                payload()
                continue
            src, dst, data = payload
            self.trace.append((self.now, src, dst, data.split(b"\r\n", 1)[0].decode()))
            if self.drop(src, dst, data):
                continue
            node = self.nodes.get(dst)
            if node is not None:
                node.receive(data, src)
        raise AssertionError("call flow did not settle")

    def lines(self, src=None, dst=None):
        return [t[3] for t in self.trace if (src is None or t[1] == src) and (dst is None or t[2] == dst)]


class ProxyNode:
    """The proxy core; `router(event) -> Decision` plays the route (sync)."""

    def __init__(self, router=None, hooks=frozenset(), relay_to=None, transport="udp", **kw):
        ids = itertools.count(1)
        self.core = ProxyCore([(transport, *PROXY)], relay_to=relay_to,
                              new_id=lambda: f"b{next(ids)}", **kw)
        self.router = router or (lambda hook, event: Decision())
        self.hooks = frozenset(hooks)
        self.events: list[dict] = []
        self.transport = transport

    def receive(self, data, src):
        self.execute(self.core.receive(data, self.transport, src))

    def execute(self, actions):
        for a in actions:
            if isinstance(a, Transmit):
                self.net.send(self.addr, (a.host, a.port), a.data)
            elif isinstance(a, Arm):
                self.net.at(a.delay, lambda key=a.key: self.execute(self.core.timer(key)))
            elif isinstance(a, Consult):
                event = script_event(a).plain()   # as the shell builds it
                self.events.append(event)
                decision = self.router(a.hook, event)
                self.execute(self.core.decided(a.token, decision, "route", self.hooks))


class UAS:
    """Answers INVITE with `script` (e.g. [180, 200] or [180, 486], or
    [180] to ring forever), BYE/OPTIONS/others with 200, CANCEL with 200+487."""

    def __init__(self, script=(180, 200), delay=0.01, tag="uas"):
        self.script = list(script)
        self.delay = delay
        self.tag = tag
        self.received: list = []
        self.pending_invite: Request | None = None
        self.answered: dict[str, Response] = {}

    def receive(self, data, src):
        msg = parse_message(data)
        self.received.append(msg)
        if isinstance(msg, Response):
            return
        if msg.method == "ACK":
            return
        if msg.method == "INVITE":
            branch = msg.via.branch
            if branch in self.answered:  # retransmission: repeat the last answer
                self._send(self.answered[branch], src)
                return
            self.pending_invite = msg
            for i, code in enumerate(self.script):
                self.net.at(self.delay * (i + 1), lambda c=code, m=msg, s=src: self._answer(m, c, s))
        elif msg.method == "CANCEL":
            self._send(make_response(msg, 200, to_tag=self.tag), src)
            inv = self.pending_invite
            last = self.answered.get(inv.via.branch) if inv is not None else None
            if inv is not None and (last is None or last.status < 200):
                self._answer(inv, 487, src)
        else:
            self._send(make_response(msg, 200, to_tag=self.tag), src)

    def _answer(self, inv, code, src):
        if inv.via.branch in self.answered and self.answered[inv.via.branch].status >= 200:
            return
        resp = make_response(inv, code, to_tag=self.tag)
        if code < 300:
            resp.add_header("contact", f"<sip:uas@{self.addr[0]}:{self.addr[1]}>")
        self.answered[inv.via.branch] = resp
        self._send(resp, src)

    def _send(self, resp, src):
        via = resp.via
        port = int(via.params.get("rport") or via.port or 5060)
        self.net.send(self.addr, (via.params.get("received") or via.host, port), resp.serialize())


class UAC:
    """Sends one request and records responses; for INVITE it ACKs finals
    (hop-by-hop for non-2xx, end to end along the route set for 2xx)."""

    def __init__(self):
        self.responses: list[Response] = []
        self.sent: list[Request] = []

    def request(self, method="INVITE", ruri="sip:bob@example.com", headers=(), call_id="call-1",
                branch="z9hG4bK-uac1", cseq=1, to_tag=None, max_forwards=70, dst=PROXY):
        to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
        req = Request(method, ruri, [
            ("via", f"SIP/2.0/UDP {self.addr[0]}:{self.addr[1]};branch={branch};rport"),
            ("max-forwards", str(max_forwards)),
            ("from", "<sip:alice@example.com>;tag=uac"),
            ("to", to),
            ("call-id", call_id),
            ("cseq", f"{cseq} {method}"),
            ("contact", f"<sip:alice@{self.addr[0]}:{self.addr[1]}>"),
            *headers,
        ])
        self.sent.append(req)
        self.net.send(self.addr, dst, req.serialize())
        return req

    def receive(self, data, src):
        resp = parse_message(data)
        self.responses.append(resp)
        if resp.cseq_method == "INVITE" and resp.status >= 300:
            self._ack_non_2xx(resp, src)

    def _ack_non_2xx(self, resp, src):
        """§17.1.1.3: the ACK for a non-2xx goes hop by hop, same branch."""
        inv = next(r for r in self.sent if r.method == "INVITE")
        ack = Request("ACK", inv.uri, [
            ("via", inv.header("via")), ("max-forwards", "70"), ("from", inv.header("from")),
            ("to", resp.header("to")), ("call-id", resp.call_id), ("cseq", f"{resp.cseq} ACK")])
        self.net.send(self.addr, src, ack.serialize())

    @property
    def codes(self):
        return [r.status for r in self.responses]

    def ack_2xx(self, resp, invite):
        """Build the ACK for a 2xx along the route set (§13.2.2.4, §12.1.2)."""
        routes = list(reversed([parse_name_addr(v).uri for v in resp.header_values("record-route")]))
        contact = parse_name_addr(resp.header("contact")).uri
        headers = [("route", f"<{r}>") for r in routes]
        cseq = resp.cseq
        ack = Request("ACK", contact, [
            ("via", f"SIP/2.0/UDP {self.addr[0]}:{self.addr[1]};branch=z9hG4bK-ack{cseq};rport"),
            ("max-forwards", "70"), ("from", invite.header("from")), ("to", resp.header("to")),
            ("call-id", resp.call_id), ("cseq", f"{cseq} ACK"), *headers])
        first = routes[0] if routes else contact
        host_port = first.split("@")[-1].split(";")[0].split(":")
        dst = (host_port[-2] if len(host_port) > 2 else host_port[0], int(host_port[-1]))
        self.net.send(self.addr, dst, ack.serialize())
        return ack


def setup(router=None, uas_scripts=((180, 200),), hooks=(), **kw):
    """A network with a UAC at :5061, the proxy at :5060 and UASes at :5071…"""
    net = Network()
    proxy = ProxyNode(router, hooks, **kw)
    net.attach(PROXY, proxy)
    uac = UAC()
    net.attach(("127.0.0.1", 5061), uac)
    uases = []
    for i, script in enumerate(uas_scripts):
        uas = UAS(script, tag=f"uas{i}")
        net.attach(("127.0.0.1", 5071 + i), uas)
        uases.append(uas)
    return net, proxy, uac, uases
