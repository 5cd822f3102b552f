"""`babelsip run` flags for the edge: RFC 3263 DNS and per-source flood
limits (README: "Next hops (RFC 3263)", "Flood limits"). One argument group,
turned into ServerConfig.extra entries by `edge_extra`."""

from __future__ import annotations

import argparse
import ipaddress


def parse_dns_server(text: str) -> tuple[str, int]:
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
        port = int(port)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: --dns-server needs IP[:PORT], e.g. 127.0.0.1:5353")
    return host, port


def parse_cidr(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: --pike-allow needs an address or CIDR, e.g. 192.0.2.0/24")
    return text


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: needs a number > 0")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: needs an integer >= 1")
    return int(text)


def add_edge_flags(run: argparse.ArgumentParser) -> None:
    edge = run.add_argument_group("next hops (RFC 3263) and flood limits (README)")
    edge.add_argument("--dns-server", action="append", type=parse_dns_server, default=None,
                      metavar="IP[:PORT]", help="the DNS server(s) for NAPTR/SRV/A lookups "
                      "(repeatable); default: /etc/resolv.conf, with /etc/hosts for addresses")
    edge.add_argument("--pike-rate", type=_positive_float, default=None, metavar="N",
                      help="limit each source IP to N requests per second (default: no limit)")
    edge.add_argument("--pike-burst", type=_positive_int, default=None, metavar="N",
                      help="requests a source may send at once before --pike-rate applies "
                           "(default: 2 x rate, at least 10)")
    edge.add_argument("--pike-action", choices=["drop", "503"], default="drop",
                      help="what a blocked source's requests get (drop)")
    edge.add_argument("--pike-allow", action="append", type=parse_cidr, default=[], metavar="CIDR",
                      help="sources never limited, e.g. a trunk (repeatable)")


def edge_extra(args) -> dict:
    """ServerConfig.extra entries for the edge flags."""
    extra: dict = {}
    if args.dns_server:
        extra["dns_servers"] = list(args.dns_server)
    if args.pike_rate is not None:
        from host.shell.flood import FloodGuard
        from host.sip.pike import SourceLimiter
        burst = args.pike_burst or max(10, int(2 * args.pike_rate))
        extra["flood"] = FloodGuard(SourceLimiter(args.pike_rate, burst, tuple(args.pike_allow)),
                                    action=args.pike_action)
    return extra
