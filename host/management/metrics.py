"""Prometheus exposition of the server's own counters, read at scrape time.

The hot path pays nothing: the core, the registry and the services keep
plain integers (host/sip/actions.py CoreStats, host/routes/records.py...);
a scrape first gathers them into one plain snapshot (`snapshot_of`, async
because registrations live in the store), then a custom Collector turns the
snapshot into metric families and prometheus-client writes the text format.
With several worker processes the parent merges their snapshots first
(fanout.py), so one scrape shows the whole server.

Names follow Prometheus conventions: `babelsip_` prefix, `_total` counters,
seconds. The table beside Kamailio's names is in host/management/README.md.
"""

from __future__ import annotations

import time

from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from host.sip.dialogs import CONFIRMED, EARLY, TRYING

__all__ = ["CONTENT_TYPE_LATEST", "SnapshotCollector", "exposition", "snapshot_of"]


async def snapshot_of(server, registrations: dict) -> dict:
    """Every number a scrape shows, as plain data (JSON-able, mergeable).
    `registrations`: {"aors": n, "contacts": n} from the store."""
    core = server.core
    st = core.stats.as_dict() if core is not None else {}
    states = {TRYING: 0, EARLY: 0, CONFIRMED: 0}
    if core is not None:
        for dialog in core.dialogs.active():
            states[dialog.state] = states.get(dialog.state, 0) + 1
    services = server.services.statistics() if server.services is not None else {}
    store = server.store.statistics() if hasattr(server.store, "statistics") else {}
    routes = {}
    if server.registry is not None:
        for name, r in server.registry.statistics().items():
            routes[name] = {"events": r.events, "decisions": dict(r.decisions),
                            "fallbacks": r.fallbacks, "errors": r.errors, "timeouts": r.timeouts,
                            "restarts": r.restarts, "inflight": r.inflight,
                            "up": 1 if r.state == "ok" else 0, "latency": r.latency}
    return {
        "received": st.get("received", 0),
        "requests": st.get("requests", {}),
        "replies": st.get("replies", {}),
        "forwarded_replies": st.get("forwarded_replies", {}),
        "forwarded_requests": st.get("client_txns", 0),
        "dropped": {"malformed": st.get("bad_dropped", 0),
                    "stray_response": st.get("stray_responses", 0)},
        "stateless": st.get("stateless", {}),
        "transactions": {"server": len(core.server_txns) if core else 0,
                         "client": len(core.client_txns) if core else 0},
        "transactions_created": {"server": st.get("server_txns", 0), "client": st.get("client_txns", 0)},
        "retransmissions": st.get("retransmissions", 0),
        "routes": routes,
        "registrations": dict(registrations),
        "registrar": {"saved": services.get("registrations", 0),
                      "refused": services.get("registrations_refused", 0)},
        "auth": dict(services.get("auth", {})),
        "dialogs": {"early": states[TRYING] + states[EARLY], "confirmed": states[CONFIRMED]},
        "dialogs_started": st.get("dialogs", 0),
        "dialogs_timed_out": st.get("dialogs_timed_out", 0),
        "dialog_store_errors": server.dialogs.statistics()["errors"],
        "store": {"errors": store.get("errors", 0), "up": int(store.get("up", True))},
        "internal_errors": server.internal_errors,
        "workers": 1,
        "start_time": getattr(server, "started_at", None) or time.time(),
    }


class SnapshotCollector:
    """A prometheus-client collector over one snapshot (module doc)."""

    def __init__(self, snapshot: dict):
        self.s = snapshot

    def collect(self):
        s = self.s
        yield _counter("sip_messages_received", "SIP messages received (parsed or not)", s["received"])
        yield _by("sip_requests_received", "SIP requests received, by method", "method", s["requests"])
        yield _by("sip_replies_received", "SIP replies received, by status class", "class", s["replies"])
        yield _by("sip_replies_forwarded", "SIP replies sent upstream through a transaction, by status class",
                  "class", s["forwarded_replies"])
        yield _counter("sip_requests_forwarded", "requests relayed statefully (one per branch)",
                       s["forwarded_requests"])
        yield _by("sip_messages_dropped", "SIP messages dropped without an answer, by reason",
                  "reason", s["dropped"])
        yield _by("sip_stateless_replies", "answers sent with no transaction, by status code",
                  "code", s["stateless"])
        yield _counter("sip_retransmissions", "request retransmissions absorbed by a transaction",
                       s["retransmissions"])
        gauge = GaugeMetricFamily("babelsip_transactions", "transactions in use now", labels=["kind"])
        for kind, n in s["transactions"].items():
            gauge.add_metric([kind], n)
        yield gauge
        yield _by("transactions_created", "transactions created", "kind", s["transactions_created"])
        yield from self._routes(s["routes"])
        yield GaugeMetricFamily("babelsip_registered_aors", "addresses-of-record with a live binding",
                                value=s["registrations"].get("aors", 0))
        yield GaugeMetricFamily("babelsip_registered_contacts", "live bindings (contacts)",
                                value=s["registrations"].get("contacts", 0))
        yield _by("registrar_requests", "REGISTERs the registrar answered, by outcome", "outcome",
                  s["registrar"])
        yield _by("auth_checks", "digest authentication outcomes", "outcome",
                  {k: v for k, v in s["auth"].items() if isinstance(v, int)})
        dialogs = GaugeMetricFamily("babelsip_dialogs", "dialogs tracked now, by state", labels=["state"])
        for state, n in s["dialogs"].items():
            dialogs.add_metric([state], n)
        yield dialogs
        yield _counter("dialogs_started", "dialogs tracked since start", s["dialogs_started"])
        yield _counter("dialogs_timed_out", "calls ended by their duration limit", s["dialogs_timed_out"])
        yield _counter("store_errors", "store operations that failed",
                       s["store"]["errors"] + s["dialog_store_errors"])
        yield GaugeMetricFamily("babelsip_store_up", "1 while the store answers", value=s["store"]["up"])
        yield _counter("internal_errors", "messages that met a bug (logged with a traceback)",
                       s["internal_errors"])
        yield GaugeMetricFamily("babelsip_worker_processes", "core processes serving", value=s["workers"])
        yield GaugeMetricFamily("babelsip_start_time_seconds", "when the server started (Unix time)",
                                value=s["start_time"])

    def _routes(self, routes: dict):
        families = {f: CounterMetricFamily(f"babelsip_route_{f}", f"route {f}", labels=["route"])
                    for f in ("events", "fallbacks", "errors", "timeouts", "restarts")}
        decisions = CounterMetricFamily("babelsip_route_decisions", "route decisions, by verb",
                                        labels=["route", "verb"])
        up = GaugeMetricFamily("babelsip_route_up", "1 while the route serves a loaded generation",
                               labels=["route"])
        latency = HistogramMetricFamily("babelsip_route_event_duration_seconds",
                                        "time a route took to decide one event", labels=["route"])
        for name, r in sorted(routes.items()):
            for field, family in families.items():
                family.add_metric([name], r[field])
            for verb, n in sorted(r["decisions"].items()):
                decisions.add_metric([name, verb], n)
            up.add_metric([name], r["up"])
            lat = r.get("latency")
            if lat:
                latency.add_metric([name], [(_le(b), n) for b, n in lat["buckets"]], lat["sum"])
        yield from families.values()
        yield decisions
        yield up
        yield latency


def _le(bound) -> str:
    return "+Inf" if bound == "+Inf" else repr(float(bound))


def _counter(name: str, doc: str, value) -> CounterMetricFamily:
    return CounterMetricFamily(f"babelsip_{name}", doc, value=value)


def _by(name: str, doc: str, label: str, values: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(f"babelsip_{name}", doc, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([str(key)], n)
    return family


def exposition(snapshot: dict) -> bytes:
    """The Prometheus text format of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
