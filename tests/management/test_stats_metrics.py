"""Kamailio-style statistics keys, the reset baseline, and the Prometheus
exposition of a snapshot, parsed back with prometheus_client's own parser."""

from prometheus_client.parser import text_string_to_metric_families

from host.management.ctl import params_of, render
from host.management.metrics import exposition
from host.management.statistics import Baseline, flatten, select
from host.routes.records import LatencyHistogram

STATS = {"core": {"received": 10, "requests": {"INVITE": 3}, "replies": {"2xx": 2}},
         "server_transactions": 4, "internal_errors": 0,
         "transports": {"udp": {"received": 9}}, "store": {"backend": "memory", "up": True}}


def test_flatten_names_groups_and_leaves_out_non_numbers():
    flat = flatten(STATS)
    assert flat == {"core:received": 10, "core:requests_invite": 3, "core:replies_2xx": 2,
                    "tm:server_transactions": 4, "core:internal_errors": 0,
                    "transports:udp_received": 9, "store:up": 1}
    assert select(flat, ["core:"]).keys() == {"core:received", "core:requests_invite",
                                              "core:replies_2xx", "core:internal_errors"}
    assert select(flat, ["tm:server_transactions", "nope:x"]) == {"tm:server_transactions": 4}
    assert select(flat, ["all"]) == flat


def test_reset_is_a_baseline_for_counters_not_gauges():
    base = Baseline()
    flat = flatten(STATS)
    assert "tm:server_transactions" not in base.reset(flat, ["all"])
    later = dict(flat, **{"core:received": 15, "tm:server_transactions": 6})
    seen = base.apply(later)
    assert seen["core:received"] == 5 and seen["tm:server_transactions"] == 6


def snapshot():
    lat = LatencyHistogram()
    for s in (0.00005, 0.002, 0.002, 3.0):
        lat.observe(s)
    return {"received": 12, "requests": {"INVITE": 2, "REGISTER": 4}, "replies": {"2xx": 3},
            "forwarded_replies": {"1xx": 2, "2xx": 2}, "forwarded_requests": 2,
            "dropped": {"malformed": 1, "stray_response": 0}, "stateless": {"483": 1},
            "transactions": {"server": 3, "client": 1},
            "transactions_created": {"server": 8, "client": 2}, "retransmissions": 5,
            "routes": {"main": {"events": 6, "decisions": {"relay": 2, "reply": 4}, "fallbacks": 0,
                                "errors": 1, "timeouts": 0, "restarts": 0, "inflight": 0, "up": 1,
                                "latency": lat.snapshot()}},
            "registrations": {"aors": 2, "contacts": 3}, "registrar": {"saved": 4, "refused": 0},
            "auth": {"challenges": 4}, "dialogs": {"early": 0, "confirmed": 1},
            "dialogs_started": 1, "dialogs_timed_out": 0, "dialog_store_errors": 0,
            "store": {"errors": 2, "up": 1}, "internal_errors": 0, "workers": 1, "start_time": 1.0}


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_parses_back_with_the_values_of_the_snapshot():
    got = samples(exposition(snapshot()).decode())
    assert got[("babelsip_sip_requests_received_total", (("method", "REGISTER"),))] == 4
    assert got[("babelsip_sip_replies_forwarded_total", (("class", "1xx"),))] == 2
    assert got[("babelsip_sip_stateless_replies_total", (("code", "483"),))] == 1
    assert got[("babelsip_sip_retransmissions_total", ())] == 5
    assert got[("babelsip_transactions", (("kind", "server"),))] == 3
    assert got[("babelsip_route_decisions_total", (("route", "main"), ("verb", "reply")))] == 4
    assert got[("babelsip_route_errors_total", (("route", "main"),))] == 1
    assert got[("babelsip_route_event_duration_seconds_bucket", (("le", "0.0001"), ("route", "main")))] == 1
    assert got[("babelsip_route_event_duration_seconds_bucket", (("le", "0.0025"), ("route", "main")))] == 3
    assert got[("babelsip_route_event_duration_seconds_count", (("route", "main"),))] == 4
    assert got[("babelsip_registered_contacts", ())] == 3
    assert got[("babelsip_dialogs", (("state", "confirmed"),))] == 1
    assert got[("babelsip_store_errors_total", ())] == 2
    assert got[("babelsip_worker_processes", ())] == 1


def test_ctl_arguments_and_table_rendering():
    assert params_of(["sip:alice@x", "5", "true"]) == ["sip:alice@x", 5, True]
    assert params_of(["aor=sip:a@x", "n=[1]"]) == {"aor": "sip:a@x", "n": [1]}
    text = render({"count": 1, "routes": [{"route": "main", "state": "ok"}, {"route": "b", "state": "failed"}]})
    lines = text.splitlines()
    assert lines[0].split() == ["count", "1"]
    assert lines[2].split() == ["ROUTE", "STATE"] and lines[4].split() == ["b", "failed"]
