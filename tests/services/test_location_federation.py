"""Lookup across the cores of a cluster: a binding whose flow lives on
another core is reached through that core (host/sip/flows.py)."""

import time

from host.services.location import LocationService
from host.sip.decision import Target
from host.sip.flows import FLOW_PARAM, flow_of
from host.sip.headers import parse_name_addr
from host.sip.registrar import Binding, Settings
from host.sip.uri import parse_uri
from host.storage.memory import MemoryStore

SECRET = b"s" * 32


def binding(core, *, nat=False, transport="udp", path=()):
    now = time.time()
    return Binding("sip:bob@10.0.0.7:5060", now + 600, 1.0, "cid", 1, (transport, "198.51.100.9", 40001),
                   path, "", "", 0, core, now, nat)


def service(core="127.0.0.1:5060"):
    return LocationService(MemoryStore(), Settings(), core=core, flow_secret=SECRET)


def test_a_nated_binding_of_another_core_goes_through_that_core_with_its_flow():
    target = service().target(binding("127.0.0.1:5070", nat=True))
    assert target.dest is None and target.uri == "sip:bob@10.0.0.7:5060"
    route = parse_uri(parse_name_addr(target.route[0]).uri)
    assert (route.host, route.port, "lr" in route.params) == ("127.0.0.1", 5070, True)
    assert flow_of(SECRET, route.params[FLOW_PARAM]) == ("udp", "198.51.100.9", 40001)


def test_a_tcp_binding_of_another_core_goes_through_it_too():
    route = service().target(binding("127.0.0.1:5070", transport="tcp")).route[0]
    assert flow_of(SECRET, parse_uri(parse_name_addr(route).uri).params[FLOW_PARAM])[0] == "tcp"


def test_a_binding_any_core_can_reach_is_sent_directly():
    # A public UDP Contact: no flow to keep, the entry core sends to it itself.
    assert service().target(binding("127.0.0.1:5070")) == Target("sip:bob@10.0.0.7:5060")


def test_our_own_nated_binding_is_reached_at_its_received_address():
    target = service().target(binding("127.0.0.1:5060", nat=True))
    assert target == Target("sip:bob@10.0.0.7:5060", (), ("udp", "198.51.100.9", 40001))


def test_a_path_wins_over_the_owner_core():
    target = service().target(binding("127.0.0.1:5070", nat=True, path=("<sip:edge.example;lr>",)))
    assert target.route == ("<sip:edge.example;lr>",)
