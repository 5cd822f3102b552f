"""Is a UA behind NAT, and its Contact rewritten to where it really is
(RFC 3581 §4 "received"/"rport"; RFC 5626 §3.5, §5.3 flows).

A UA behind NAT writes its private address into Contact; the proxy sees its
message arrive from the NAT's public address and port. `behind_nat` tells
the two apart, `fixed_contact` points the Contact at the source address.

`behind_nat` rule, in order:

1. A Contact that cannot be read (or a tel: one) counts as NATed: the
   source address is the one known to reach the UA.
2. The Contact's host is an IP address: NATed when host:port is not the
   source ip:port. That covers the RFC 3581 case, a private-use address
   (RFC 1918, RFC 6598 100.64/10, link-local, unique-local fc00::/7: see
   `is_private`) seen from another address, as well as a public address
   behind a port-translating NAT. A private Contact equal to the source is
   not NATed: the UA is on our own network and reachable as it says.
   IPv4-mapped IPv6 sources (dual-stack sockets) compare as IPv4.
3. The Contact's host is a name: we cannot resolve it here (pure module), so
   the name is taken on trust and only the port decides: NATed when the
   Contact's port (explicit or default) is not the source port.

The default port comes from the Contact's own transport when it names one
(;transport=, or sips: meaning TLS), else from the transport the message
arrived on. Over TCP and TLS the source port is usually ephemeral, so most
connection-oriented UAs come out NATed: right, since the connection (the
flow) is the only way back to them.
"""

from __future__ import annotations

import ipaddress

from .errors import BadMessage
from .headers import parse_name_addr, split_commas
from .uri import parse_uri

__all__ = ["PRIVATE_NETWORKS", "behind_nat", "fixed_contact", "is_private"]

PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",   # RFC 1918
    "100.64.0.0/10",                                    # RFC 6598 carrier-grade NAT
    "169.254.0.0/16",                                   # RFC 3927 link-local
    "fc00::/7",                                         # RFC 4193 unique-local
    "fe80::/10",                                        # RFC 4291 link-local
))

_DEFAULT_PORT = {"tls": 5061, "wss": 443, "ws": 80}


def _ip(text: str):
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_private(host: str) -> bool:
    """Whether `host` is an address of PRIVATE_NETWORKS (a name is not)."""
    address = _ip(host)
    return address is not None and any(
        address in net for net in PRIVATE_NETWORKS if net.version == address.version)


def _contact_uri(contact: str):
    """The URI of a Contact URI or header value (first contact only)."""
    text = contact.strip(" \t")
    if text[:4].lower() in ("sip:", "sips") and "<" not in text and "," not in text:
        return parse_uri(text)
    return parse_uri(parse_name_addr(split_commas(text)[0]).uri)


def behind_nat(contact_uri: str, source_ip: str, source_port: int, transport: str) -> bool:
    """Whether the UA that sent `contact_uri` (a URI, or a Contact header
    value) from source_ip:source_port over `transport` is behind NAT, by the
    rule in the module text."""
    try:
        uri = _contact_uri(contact_uri)
    except (BadMessage, IndexError):
        return True
    if uri.scheme == "tel" or not uri.host:
        return True
    named = uri.params.get("transport") or ("tls" if uri.scheme == "sips" else None)
    port = uri.port or _DEFAULT_PORT.get((named or transport).lower(), 5060)
    host, source = _ip(uri.host), _ip(source_ip)
    if host is None:            # a hostname: only the port can tell
        return port != source_port
    return host != source or port != source_port


def fixed_contact(value: str, source_ip: str, source_port: int) -> str:
    """`value` (a Contact header value) with the host:port of its first
    URI replaced by source_ip:source_port. Display name, URI parameters
    (;transport=, ;ob) and header parameters (;expires=, ;q=, +sip.instance)
    are kept; an IPv6 source is bracketed. "*" and tel: contacts come back
    unchanged. Raises BadMessage for a value that cannot be parsed."""
    parts = split_commas(value)
    if not parts:
        return value
    first = parse_name_addr(parts[0])
    if first.uri == "*":
        return value
    uri = parse_uri(first.uri)
    if uri.scheme == "tel":
        return value
    uri.host = f"[{source_ip}]" if ":" in source_ip and not source_ip.startswith("[") else source_ip
    uri.port = source_port
    first.uri = str(uri)
    return ", ".join([str(first)] + parts[1:])


def fix_contacts(message, ip: str, port: int) -> None:
    """Every Contact of `message` pointed at (ip, port); one that cannot be
    parsed is left as it is (the UA's problem, not a reason to drop the call)."""
    headers = message.headers
    for i, (key, value) in enumerate(headers):
        if key == "contact":
            try:
                headers[i] = (key, fixed_contact(value, ip, port))
            except BadMessage:
                pass
