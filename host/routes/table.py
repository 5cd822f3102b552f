"""The route table: which route handles an initial request.

Built from the `[[match]]` list of routes.toml (see `host.routes.settings` for
the file format). Rules are tried in file order; the first whose conditions
all hold names the route, and when none does the `default` route (normally
`main`) takes the request.

Conditions of one rule are ANDed; a list inside one condition is ORed:
  method       exact, case-sensitive (RFC 3261 §7.1: methods are case-sensitive)
  ruri_user    regex searched in the request-URI user part ("" when absent)
  ruri_host    regex searched in the request-URI host
  source       the source address lies in one of these CIDR networks (v4 or v6)
  header       every named header is present (names case-insensitive)
  header_regex a named header has an instance whose value the regex searches

Regexes use `re.search`, as Kamailio's `=~` does: anchor with ^ and $ to
match the whole field. Everything is compiled when the table is built, so
`select` costs a few dict lookups and regex searches per rule.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_ROUTE = "main"


@dataclass(frozen=True, slots=True)
class Match:
    """One compiled `[[match]]` rule. `line` is where it starts in routes.toml."""

    route: str
    methods: frozenset[str] | None = None
    ruri_user: re.Pattern | None = None
    ruri_host: re.Pattern | None = None
    sources: tuple[IPNetwork, ...] | None = None
    headers: tuple[str, ...] = ()                          # lower-case names that must be present
    header_regexes: tuple[tuple[str, re.Pattern], ...] = ()  # (lower-case name, pattern)
    line: int | None = None

    @property
    def needs_headers(self) -> bool:
        return bool(self.headers or self.header_regexes)

    def matches(self, event: dict, source, headers: dict | None) -> bool:
        """`source` is the parsed source address (or None when unparsable),
        `headers` the event's headers grouped by lower-case name (only built
        when some rule needs them)."""
        if self.methods is not None and event.get("method") not in self.methods:
            return False
        if self.ruri_user is not None and self.ruri_user.search(event.get("ruri_user") or "") is None:
            return False
        if self.ruri_host is not None and self.ruri_host.search(event.get("ruri_host") or "") is None:
            return False
        if self.sources is not None:
            # An address of the other IP version is simply "not in" a network.
            if source is None or not any(source in net for net in self.sources):
                return False
        if headers is not None:
            for name in self.headers:
                if name not in headers:
                    return False
            for name, pattern in self.header_regexes:
                if not any(pattern.search(v) for v in headers.get(name, ())):
                    return False
        return True


class RouteTable:
    """Ordered rules plus a default; `select(event)` returns a route name."""

    __slots__ = ("matches", "default", "_needs_source", "_needs_headers")

    def __init__(self, matches: tuple[Match, ...] = (), default: str = DEFAULT_ROUTE):
        self.matches = tuple(matches)
        self.default = default
        self._needs_source = any(m.sources is not None for m in self.matches)
        self._needs_headers = any(m.needs_headers for m in self.matches)

    def select(self, event: dict) -> str:
        if not self.matches:
            return self.default
        source = _parse_source(event.get("source_ip")) if self._needs_source else None
        headers = _group_headers(event.get("headers") or ()) if self._needs_headers else None
        for rule in self.matches:
            if rule.matches(event, source, headers):
                return rule.route
        return self.default

    def referenced_routes(self) -> set[str]:
        return {m.route for m in self.matches} | {self.default}

    def __repr__(self) -> str:
        return f"RouteTable({len(self.matches)} rules, default={self.default!r})"


def _parse_source(value):
    if not value:
        return None
    try:
        return ipaddress.ip_address(str(value).strip("[]"))
    except ValueError:
        return None


def _group_headers(pairs) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name.lower(), []).append(value)
    return grouped
