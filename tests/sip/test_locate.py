"""RFC 3263 §4 target selection (host/sip/locate.py) from fake DNS answers."""

import pytest

from host.sip.locate import Naptr, Query, Srv, Target, locate, order_srv, run_with

ALL = frozenset({"udp", "tcp", "tls"})


def answers(zone):
    asked = []

    def answer(query: Query):
        asked.append((query.name, query.rdtype))
        return list(zone.get((query.name, query.rdtype), []))
    return answer, asked


def targets(zone, scheme="sip", host="example.test", port=None, transport=None,
            supported=ALL, random=lambda: 0.0, families=("A",)):
    answer, asked = answers(zone)
    found = run_with(locate(scheme, host, port, transport, supported, random, families), answer)
    return found, asked


def test_numeric_ip_needs_no_dns_and_keeps_port_and_transport():
    assert targets({}, host="192.0.2.1") == ([Target("udp", "192.0.2.1", 5060)], [])
    assert targets({}, host="[2001:db8::1]", port=5080, transport="tcp") == (
        [Target("tcp", "2001:db8::1", 5080)], [])
    assert targets({}, scheme="sips", host="192.0.2.1")[0] == [Target("tls", "192.0.2.1", 5061)]
    # A transport we have no listener for is no target at all.
    assert targets({}, host="192.0.2.1", transport="tls", supported=frozenset({"udp"}))[0] == []


def test_explicit_port_asks_only_address_records():
    zone = {("example.test", "A"): ["192.0.2.7"], ("example.test", "AAAA"): ["2001:db8::7"]}
    found, asked = targets(zone, port=5099, families=("A", "AAAA"))
    assert found == [Target("udp", "192.0.2.7", 5099), Target("udp", "2001:db8::7", 5099)]
    assert asked == [("example.test", "A"), ("example.test", "AAAA")]


def test_naptr_orders_services_by_order_then_preference_and_skips_unusable_ones():
    zone = {
        ("example.test", "NAPTR"): [
            Naptr(20, 10, "s", "SIP+D2U", "_sip._udp.example.test."),
            Naptr(10, 20, "s", "SIP+D2U", "_sip._udp.other.test."),
            Naptr(10, 10, "s", "SIP+D2T", "_sip._tcp.example.test."),
            Naptr(5, 10, "s", "SIP+D2W", "_sip._ws.example.test."),    # no ws listener
            Naptr(1, 10, "u", "SIP+D2U", "!^.*$!sip:x@y!"),            # not an SRV step
        ],
        ("_sip._tcp.example.test", "SRV"): [Srv(10, 0, 5070, "tcp1.example.test.")],
        ("_sip._udp.other.test", "SRV"): [Srv(10, 0, 5080, "udp1.example.test.")],
        ("_sip._udp.example.test", "SRV"): [Srv(10, 0, 5090, "udp2.example.test.")],
        ("tcp1.example.test", "A"): ["192.0.2.1"],
        ("udp1.example.test", "A"): ["192.0.2.2"],
        ("udp2.example.test", "A"): ["192.0.2.3"],
    }
    found, asked = targets(zone)
    assert found == [Target("tcp", "192.0.2.1", 5070), Target("udp", "192.0.2.2", 5080),
                     Target("udp", "192.0.2.3", 5090)]
    assert asked[0] == ("example.test", "NAPTR")
    assert ("_sip._ws.example.test", "SRV") not in asked


def test_ws_naptr_is_used_when_we_listen_on_ws():
    zone = {("example.test", "NAPTR"): [Naptr(5, 10, "s", "SIP+D2W", "_sip._ws.example.test.")],
            ("_sip._ws.example.test", "SRV"): [Srv(1, 0, 8080, "ws.example.test.")],
            ("ws.example.test", "A"): ["192.0.2.9"]}
    assert targets(zone, supported=frozenset({"udp", "ws"}))[0] == [Target("ws", "192.0.2.9", 8080)]


def test_sips_takes_only_secure_services():
    zone = {("example.test", "NAPTR"): [Naptr(1, 1, "s", "SIP+D2U", "_sip._udp.example.test."),
                                        Naptr(2, 1, "s", "SIPS+D2T", "_sips._tcp.example.test.")],
            ("_sip._udp.example.test", "SRV"): [Srv(1, 0, 5060, "a.example.test.")],
            ("_sips._tcp.example.test", "SRV"): [Srv(1, 0, 5061, "a.example.test.")],
            ("a.example.test", "A"): ["192.0.2.4"]}
    assert targets(zone, scheme="sips")[0] == [Target("tls", "192.0.2.4", 5061)]
    # No TLS listener: nothing can reach a sips URI.
    assert targets(zone, scheme="sips", supported=frozenset({"udp", "tcp"}))[0] == []


def test_no_naptr_tries_srv_of_udp_then_tcp_then_the_address():
    zone = {("_sip._tcp.example.test", "SRV"): [Srv(1, 0, 5070, "t.example.test.")],
            ("t.example.test", "A"): ["192.0.2.5"]}
    found, asked = targets(zone)
    assert found == [Target("tcp", "192.0.2.5", 5070)]
    assert asked == [("example.test", "NAPTR"), ("_sip._udp.example.test", "SRV"),
                     ("_sip._tcp.example.test", "SRV"), ("t.example.test", "A")]
    found, asked = targets({("example.test", "A"): ["192.0.2.6"]})
    assert found == [Target("udp", "192.0.2.6", 5060)]
    assert asked[-1] == ("example.test", "A")


def test_transport_parameter_skips_naptr_and_uses_its_srv_then_address():
    zone = {("_sip._tcp.example.test", "SRV"): [Srv(1, 0, 5071, "t.example.test.")],
            ("t.example.test", "A"): ["192.0.2.5"], ("example.test", "A"): ["192.0.2.8"]}
    found, asked = targets(zone, transport="TCP")
    assert found == [Target("tcp", "192.0.2.5", 5071)]
    assert ("example.test", "NAPTR") not in asked
    found, _ = targets(zone, transport="udp")
    assert found == [Target("udp", "192.0.2.8", 5060)]


def test_srv_priority_first_then_weighted_random_order():
    records = [Srv(20, 0, 1, "c."), Srv(10, 10, 2, "a."), Srv(10, 90, 3, "b."), Srv(5, 0, 4, ".")]
    # "." means no service; priority 10 before 20; random 0 picks the lightest first.
    assert [r.port for r in order_srv(records, lambda: 0.0)] == [2, 3, 1]
    # A draw beyond the first weight's share picks the heavier one first.
    assert [r.port for r in order_srv(records, lambda: 0.5)] == [3, 2, 1]


def test_srv_weights_give_each_record_its_share():
    records = [Srv(10, 10, 1, "a."), Srv(10, 30, 2, "b.")]
    draws = iter([i / 1000 for i in range(1000)] * 2)
    firsts = [order_srv(records, lambda: next(draws))[0].port for _ in range(1000)]
    share = firsts.count(2) / len(firsts)
    assert 0.70 <= share <= 0.80   # weight 30 of 40


def test_a_hostile_zone_is_bounded():
    zone = {("example.test", "NAPTR"): [],
            ("_sip._udp.example.test", "SRV"): [Srv(1, 0, 5000 + i, f"h{i}.example.test.") for i in range(100)]}
    for i in range(100):
        zone[(f"h{i}.example.test", "A")] = [f"192.0.2.{j}" for j in range(50)]
    found, asked = targets(zone)
    assert len(found) == 16 and len(asked) < 40


@pytest.mark.parametrize("host", ["EXAMPLE.test.", "example.test"])
def test_names_are_compared_without_case_and_final_dot(host):
    assert targets({("example.test", "A"): ["192.0.2.1"]}, host=host, port=5060)[0] == [
        Target("udp", "192.0.2.1", 5060)]
