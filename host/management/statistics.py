"""Kamailio-style statistics ("group:name" keys) from the server's nested
counters, and `stats.reset_statistics` as a baseline, sans-IO.

`Server.statistics()` nests its counters by owner (core, transports,
services, store...). Operators of Kamailio ask `kamcmd stats.get_statistics
core:` or `tm:` or one `group:name`; `flatten` turns the nesting into those
keys: a top-level dict is a group, deeper dicts join their names with "_"
(core:requests_invite, transports:udp_received), non-numbers are left out.

A reset does not touch the counters themselves: the Prometheus collector
reads them too, and a Prometheus counter must never go down. It records a
baseline instead, subtracted from counters (not from gauges) when read here.
"""

from __future__ import annotations

# Keys whose value is a level (in use now), never reset: last name parts.
GAUGE_NAMES = frozenset({
    "server_transactions", "client_transactions", "timers", "connections", "connection_cap",
    "active", "queued", "flows", "up", "inflight", "retired_generations",
})
# Top-level scalars of Server.statistics() and the group they belong to.
TOP_LEVEL_GROUP = {"server_transactions": "tm", "client_transactions": "tm", "timers": "core",
                   "internal_errors": "core"}


def flatten(statistics: dict) -> dict[str, int | float]:
    """{"group:name": number} from a nested statistics dict."""
    out: dict[str, int | float] = {}
    for key, value in statistics.items():
        if isinstance(value, dict):
            _walk(out, key, "", value)
        elif _number(value):
            out[f"{TOP_LEVEL_GROUP.get(key, 'core')}:{key}"] = value
    return out


def _walk(out: dict, group: str, prefix: str, node: dict) -> None:
    for key, value in node.items():
        name = f"{prefix}{str(key).lower()}"
        if isinstance(value, dict):
            _walk(out, group, name + "_", value)
        elif _number(value):
            out[f"{group}:{name}"] = int(value) if isinstance(value, bool) else value


def _number(value) -> bool:
    return isinstance(value, (int, float))


def is_gauge(key: str) -> bool:
    name = key.partition(":")[2]
    return name in GAUGE_NAMES or name.rpartition("_")[2] in GAUGE_NAMES


def select(flat: dict[str, int | float], names: list[str]) -> dict[str, int | float]:
    """Kamailio's selectors: "all", "group:" (or "group") for a group, or
    one "group:name". Unknown ones select nothing."""
    if not names or "all" in names:
        return dict(flat)
    out = {}
    for sel in names:
        group, colon, name = sel.partition(":")
        if name:
            if sel in flat:
                out[sel] = flat[sel]
            continue
        out.update({k: v for k, v in flat.items() if k.startswith(group + ":")})
    return out


class Baseline:
    """What `stats.reset_statistics` remembers: counter values at the reset."""

    def __init__(self):
        self.at: dict[str, int | float] = {}

    def reset(self, flat: dict[str, int | float], names: list[str]) -> list[str]:
        chosen = [k for k in select(flat, names) if not is_gauge(k)]
        for key in chosen:
            self.at[key] = flat[key]
        return sorted(chosen)

    def apply(self, flat: dict[str, int | float]) -> dict[str, int | float]:
        at = self.at
        return {k: (v - at[k] if k in at and not is_gauge(k) else v) for k, v in flat.items()}
