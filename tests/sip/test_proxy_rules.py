"""RFC 3261 §16 request steps (host/sip/proxy_rules.py), one at a time."""

from host.sip.message import Request
from host.sip.proxy_rules import Local, decrement_max_forwards, process_route

LOCAL = Local([("udp", "127.0.0.1", 5060), ("tcp", "127.0.0.1", 5060)])


def request(uri, routes=(), extra=()):
    return Request("BYE", uri, [("via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1"),
                                *(("route", r) for r in routes), *extra])


def test_both_entries_of_our_double_record_route_are_removed():
    req = request("sip:bob@10.0.0.2", ["<sip:127.0.0.1:5060;lr>", "<sip:127.0.0.1:5060;transport=tcp;lr>",
                                       "<sip:proxy.example;lr>"])
    assert process_route(req, LOCAL)
    assert req.header_values("route") == ["<sip:proxy.example;lr>"]


def test_a_foreign_top_route_is_left_alone():
    req = request("sip:bob@10.0.0.2", ["<sip:proxy.example;lr>", "<sip:127.0.0.1:5060;lr>"])
    assert not process_route(req, LOCAL)
    assert len(req.header_values("route")) == 2


def test_strict_router_rewrite_is_undone():
    req = request("sip:127.0.0.1:5060", ["<sip:bob@10.0.0.2>"])
    assert process_route(req, LOCAL)
    assert req.uri == "sip:bob@10.0.0.2" and req.header("route") is None


def test_max_forwards_is_decremented_in_place_or_added():
    req = request("sip:bob@x", extra=[("max-forwards", "70"), ("subject", "s")])
    decrement_max_forwards(req)
    assert req.headers[1] == ("max-forwards", "69")
    bare = request("sip:bob@x")
    decrement_max_forwards(bare)
    assert bare.header("max-forwards") == "70"


def test_a_request_for_us_through_us_as_outbound_proxy_keeps_its_uri():
    # A phone with the server as outbound proxy: REGISTER sip:127.0.0.1 with
    # our own Route on top is loose routing to us, not a strict router's
    # rewrite (the Request-URI must survive: the digest covers it).
    req = request("sip:127.0.0.1", ["<sip:127.0.0.1:5060;lr>"])
    assert process_route(req, LOCAL)
    assert req.uri == "sip:127.0.0.1" and req.header("route") is None
