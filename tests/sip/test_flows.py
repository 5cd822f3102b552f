"""Flow tokens between the cores of a cluster (host/sip/flows.py): one core
relays a call through the core that holds the callee's flow, which delivers
it there without asking its route; a token it did not sign is just a Route."""

import pytest
from callflow import setup

from host.sip.decision import Decision
from host.sip.flows import FLOW_PARAM, flow_of, flow_token, owner_route

SECRET = b"k" * 32
FLOW = ("udp", "127.0.0.1", 5071)       # where the callee's NAT binding is


@pytest.mark.parametrize("flow", [FLOW, ("tcp", "2001:db8::7", 40123), ("udp", "10.0.0.1", 1)])
def test_a_token_names_its_flow(flow):
    token = flow_token(SECRET, flow)
    assert flow_of(SECRET, token) == flow
    assert all(c.isalnum() or c in "-_." for c in token)   # a URI parameter value as is


@pytest.mark.parametrize("token", [
    flow_token(b"x" * 32, FLOW),                                  # another cluster's secret
    flow_token(SECRET, FLOW)[:-2] + "AA",                         # tag changed
    "dWRwfDEyNy4wLjAuMXw1MDcx.AAAAAAAAAAAAAAAA",                  # body without its tag
    "", ".", "nodot", "!!!.???",
])
def test_a_token_not_signed_with_our_secret_names_nothing(token):
    assert flow_of(SECRET, token) is None


def routed_through_us(net, uac, token):
    return uac.request(ruri="sip:bob@10.9.9.9:5999",   # the callee's private Contact
                       headers=[("route", owner_route("127.0.0.1:5060", token))])


def test_the_owner_delivers_over_the_flow_without_asking_its_route():
    net, proxy, uac, (uas,) = setup(flow_secret=SECRET)
    routed_through_us(net, uac, flow_token(SECRET, FLOW))
    net.run(until=2)
    assert proxy.events == []                       # no consult: the entry core decided
    inv = uas.received[0]                           # sent to the flow, not to 10.9.9.9
    assert inv.uri == "sip:bob@10.9.9.9:5999" and inv.header("route") is None
    assert inv.header("record-route") == "<sip:127.0.0.1:5060;lr>"   # the dialog keeps the flow
    assert uac.responses[-1].status == 200


def test_a_forged_token_is_an_ordinary_route_the_route_decides_about():
    net, proxy, uac, (uas,) = setup(lambda hook, event: Decision(verb="reply", code=403),
                                    flow_secret=SECRET)
    routed_through_us(net, uac, flow_token(b"mallory" * 5, FLOW))
    net.run(until=2)
    assert [e["method"] for e in proxy.events] == ["INVITE"]
    assert uas.received == [] and uac.responses[-1].status == 403


def test_without_a_cluster_secret_a_flow_route_is_ignored():
    net, proxy, uac, (uas,) = setup(lambda hook, event: Decision(verb="reply", code=404))
    routed_through_us(net, uac, flow_token(SECRET, FLOW))
    net.run(until=2)
    assert uas.received == [] and uac.responses[-1].status == 404
    assert FLOW_PARAM not in (proxy.events[0]["ruri"])
