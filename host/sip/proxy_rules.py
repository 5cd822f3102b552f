"""Pure RFC 3261 §16 request processing steps for a stateful proxy.

Each function does one numbered step of §16.3–§16.6 on a Request and knows
nothing about transactions or sockets. `Local` describes the proxy's own
addresses, used to recognise Route entries and Request-URIs meant for us.
"""

from __future__ import annotations

import hashlib
import ipaddress

from .errors import BadMessage
from .flows import FLOW_PARAM, flow_of
from .headers import parse_name_addr, parse_via, tag_of
from .message import Request
from .uri import URI, parse_uri

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7
DEFAULT_MAX_FORWARDS = 70


class Local:
    """The addresses this proxy answers on."""

    __slots__ = ("hosts", "ports", "names", "_first_host")

    def __init__(self, listen: list[tuple[str, str, int]], names: tuple[str, ...] = ()):
        # listen: (transport, host, port)
        self.hosts = {h.lower() for _, h, _ in listen} | {n.lower() for n in names}
        self.ports = {p for _, _, p in listen}
        self.names = names
        self._first_host = listen[0][1] if listen else "localhost"

    def is_mine(self, uri: URI) -> bool:
        host = uri.host.lower()
        if host.startswith("["):
            host = host[1:-1]
        port = uri.port or (5061 if uri.scheme == "sips" else 5060)
        return host in self.hosts and port in self.ports

    def domain_of(self, host: str, port: int | None) -> str | None:
        """The one domain name of this server's users when host[:port] is
        ours (any of our ports, or none: a softphone set up with just the
        server's address), else None. The first configured name, or the
        first address we listen on, stands for all of them."""
        host = host.lower().strip("[]")
        if host not in self.hosts or (port is not None and port not in self.ports):
            return None
        return (self.names[0] if self.names else self._first_host).lower()

    def is_my_via(self, host: str, port: int | None) -> bool:
        return host.lower().strip("[]") in self.hosts and (port or 5060) in self.ports


def max_forwards(req: Request) -> int | None:
    """§16.3 step 3: the Max-Forwards value, or None when absent."""
    value = req.header("max-forwards")
    if value is None:
        return None
    if not value.isdigit() or len(value) > 3 or int(value) > 255:
        raise BadMessage(f"bad Max-Forwards {value[:20]!r}")
    return int(value)


def decrement_max_forwards(req: Request) -> None:
    """§16.6 step 3 (validation already refused a bad or repeated value)."""
    headers = req.headers
    for i, (key, value) in enumerate(headers):
        if key == "max-forwards":
            headers[i] = ("max-forwards", str(int(value) - 1))
            return
    headers.append(("max-forwards", str(DEFAULT_MAX_FORWARDS)))


def loop_hash(req: Request, via_below: str, uri: str | None = None) -> str:
    """§16.6 step 8: the part of our branch that detects loops — a hash over
    the fields that stay the same when a request comes back to us unchanged.
    `via_below` is the top Via as we received it (it ends up right below ours),
    `uri` the Request-URI as received, before any retargeting (default: the
    request's): a request retargeted to another URI of ours is a spiral."""
    to = from_ = require = ""
    for name, value in req.headers:  # one pass instead of three lookups
        if name == "to":
            to = to or value
        elif name == "from":
            from_ = from_ or value
        elif name == "proxy-require":
            require = require or value
    key = "\0".join((uri or req.uri, to, tag_of(from_) or "", req.call_id, str(req.cseq), via_below, require))
    return hashlib.blake2s(key.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def detect_loop(req: Request, local: Local) -> bool:
    """§16.3 step 4: a Via of ours whose branch carries the hash this request
    would get now means it came back unchanged — a loop, not a spiral."""
    vias = req.header_values("via")
    for i, value in enumerate(vias[:-1]):
        cookie = value.find("branch=" + MAGIC_COOKIE)
        if cookie < 0:
            continue
        try:
            via = parse_via(value)
        except BadMessage:
            continue
        if not local.is_my_via(via.host, via.port):
            continue
        expected = MAGIC_COOKIE + loop_hash(req, vias[i + 1]) + "."
        if (via.branch or "").startswith(expected):
            return True
    return False


def process_route(req: Request, local: Local) -> bool:
    """§16.4: undo a strict router's rewrite and remove our own top Route —
    both of them when we double record-routed across transports (RFC 5658).
    Returns True when a Route entry of ours was removed (the request follows
    a route set we recorded)."""
    if not req.has_header("route"):
        return False
    removed = False
    try:
        ruri = req.parsed_uri
    except BadMessage:
        ruri = None
    if (ruri is not None and local.is_mine(ruri) and "lr" not in ruri.params
            and not _top_route_is_mine(req, local)):
        # The previous hop was a strict router: it put our Record-Route URI
        # in the Request-URI. The real one is the last Route value. (A top
        # Route of ours instead means a UA with us as outbound proxy sent a
        # request for us, e.g. REGISTER sip:our-address: that URI is real.)
        routes = req.header_values("route")
        last = parse_name_addr(routes[-1]).uri
        req.uri = last
        req.headers = [h for h in req.headers if not (h[0] == "route" and h[1] is routes[-1])]
        removed = True
    top = req.header("route")
    if top is not None:
        uri = parse_uri(parse_name_addr(top).uri)
        if local.is_mine(uri):
            req.pop_first("route")
            removed = True
            while _top_route_is_mine(req, local):
                req.pop_first("route")
    return removed


def flow_in_own_route(req: Request, local: Local, secret: bytes) -> tuple[str, str, int] | None:
    """The flow another core asks us to deliver over (flows.py): a top Route
    of ours with a valid flow token. Read before process_route removes it."""
    top = req.header("route")
    if top is None or FLOW_PARAM not in top:
        return None
    try:
        uri = parse_uri(parse_name_addr(top).uri)
    except BadMessage:
        return None
    token = uri.params.get(FLOW_PARAM)
    if not token or not local.is_mine(uri):
        return None
    return flow_of(secret, token)


def _top_route_is_mine(req: Request, local: Local) -> bool:
    top = req.header("route")
    if top is None:
        return False
    try:
        return local.is_mine(parse_uri(parse_name_addr(top).uri))
    except BadMessage:
        return False


def next_hop(req: Request) -> URI:
    """§16.6 step 7 / §8.1.2: the first Route (loose routing) or the Request-URI."""
    top = req.header("route")
    if top is not None:
        uri = parse_uri(parse_name_addr(top).uri)
        if "lr" not in uri.params:
            # §16.6 step 6: the next hop is a strict router. Put the
            # Request-URI at the end of the Route set and the strict
            # router's URI in the Request-URI.
            req.pop_first("route")
            req.add_header("route", f"<{req.uri}>")
            req.uri = str(uri)
        return uri
    return req.parsed_uri


def record_route_value(transport: str, host: str, port: int, sips: bool = False) -> str:
    """§16.6 step 4: a URI that routes back to this proxy, with lr. A sips
    request is record-routed with a sips URI (§16.6 step 4, RFC 5630 §3.1.3)
    on its TLS side; WSS is "sips:...;transport=ws" (RFC 7118 §5.2)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if transport == "wss":
        return f"<sips:{host}:{port};transport=ws;lr>"
    if transport == "tls" and sips:
        return f"<sips:{host}:{port};lr>"
    tp = "" if transport == "udp" else f";transport={transport}"
    return f"<sip:{host}:{port}{tp};lr>"


SECURE_TRANSPORTS = frozenset({"tls", "wss"})


def hop_transport(hop: URI, sips: bool, forced: str | None = None) -> str:
    """The transport a request goes to its next hop `hop` on (`forced`: the
    flow of a registered binding). A sips request (`sips`: its Request-URI
    is one) never leaves over an insecure transport (RFC 5630 §3.1.3): a
    hop that names no transport is reached over TLS, one that names an
    insecure one is refused (503), never downgraded."""
    transport = forced or hop.transport
    if not sips or transport in SECURE_TRANSPORTS:
        return transport
    if forced is None and "transport" not in hop.params:
        return "tls"
    raise BadMessage(f"a sips request is not sent over {transport}", 503)


def hop_port(hop: URI, transport: str) -> int:
    """The port of a next hop: its own, else its transport's default."""
    return hop.port or TRANSPORT_PORTS.get(transport, 5060)


def via_value(transport: str, host: str, port: int, branch: str) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"SIP/2.0/{transport.upper()} {host}:{port};branch={branch}"


def sent_from_behind_nat(req: Request, transport: str, src_ip: str, src_port: int) -> bool:
    """RFC 3581's test: the UA's top Via names another address than the one
    its request came from, so it does not know its public address. Over a
    datagram the port counts too; over a connection the source port is an
    ephemeral one whatever the UA is, so only the address does."""
    via = req.via
    if via is None:
        return False
    if via.host.strip("[]") != src_ip:
        return True
    return transport == "udp" and (via.port or 5060) != src_port


def fix_received(req: Request, src_ip: str, src_port: int) -> None:
    """RFC 3261 §18.2.1 and RFC 3581: note where the request really came from
    in its top Via, so responses find their way back through NAT. Runs before
    anything else reads the Via. A `received` the client wrote itself is never
    believed: it is replaced by the source, or removed when the Via host is
    the source already, so no later hop can be steered by it either."""
    via = req.via
    if via is None:
        return
    params = via.params
    changed = False
    if via.host.strip("[]") != src_ip:
        if params.get("received") != src_ip:
            params["received"] = src_ip
            changed = True
    elif "received" in params:
        del params["received"]
        changed = True
    if "rport" in params:
        if params["rport"] != str(src_port):
            params["rport"] = str(src_port)
            changed = True
        if "received" not in params:
            params["received"] = src_ip
            changed = True
    if changed:
        for i, (k, _) in enumerate(req.headers):
            if k == "via":
                req.headers[i] = ("via", str(via))
                break
        req._via = via


# Default port by transport (RFC 3261 §18.2.2, RFC 7118 for ws/wss); uri.DEFAULT_PORTS is by scheme.
TRANSPORT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}


def reply_port(via, transport: str, src_port: int, *, to_source: bool) -> int:
    """§18.2.2 and RFC 3581 §4: the port a response over a datagram goes to —
    the source port when the client asked with rport (or when we answer a
    request we refuse, whose Via we do not trust), else the Via's sent-by
    port. The host is always the request's real source: never a host the
    Via names, so nobody can aim our answers at a third party."""
    if to_source or via is None:
        return src_port
    return via_reply_port(via, transport)


def via_reply_port(via, transport: str) -> int:
    """The port a Via names for responses (RFC 3581 §4): its filled-in rport,
    else its sent-by port, else the transport's default."""
    rport = via.params.get("rport")
    if rport and rport.isdigit() and 0 < int(rport) < 65536:
        return int(rport)
    return via.port or TRANSPORT_PORTS.get(transport, 5060)


def stateless_destination(via) -> tuple[str, str, int] | None:
    """(transport, host, port) for a response forwarded with no transaction
    (§18.2.2, RFC 3581 §4): the Via's received/rport, else its sent-by —
    but only when that is an IP literal: a response with no state behind it
    must not start a DNS lookup."""
    if via is None:
        return None
    host = (via.params.get("received") or via.host).strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    transport = via.transport.lower()
    return transport, host, via_reply_port(via, transport)
