"""NAT detection and Contact fixing (host/sip/nat.py; RFC 3581, RFC 5626)."""

import pytest

from host.sip.errors import BadMessage
from host.sip.nat import behind_nat, fixed_contact, is_private


@pytest.mark.parametrize("case, contact, source, transport, expected", [
    # RFC 3581 §1: the UA writes its private address, the message arrives
    # from the NAT's public one.
    ("rfc3581 private contact, public source", "sip:alice@192.168.1.2:5060",
     ("203.0.113.9", 5060), "udp", True),
    ("rfc3581 port-translating NAT", "sip:alice@192.168.1.2:5060",
     ("203.0.113.9", 40112), "udp", True),
    ("rfc6598 carrier-grade NAT", "sip:alice@100.64.3.4", ("198.51.100.1", 5060), "udp", True),
    ("rfc1918 172.16/12", "sip:alice@172.20.0.5", ("198.51.100.1", 5060), "udp", True),
    ("link-local", "sip:alice@169.254.1.1", ("198.51.100.1", 5060), "udp", True),
    ("unique-local ipv6", "sip:alice@[fd00::5]", ("2001:db8::1", 5060), "udp", True),
    ("private contact on our own network", "sip:alice@10.0.0.7:5060",
     ("10.0.0.7", 5060), "udp", False),
    ("private contact, default port matches", "sip:alice@10.0.0.7", ("10.0.0.7", 5060), "udp", False),
    ("public contact, same address", "sip:alice@198.51.100.7:5070",
     ("198.51.100.7", 5070), "udp", False),
    ("public contact, other address", "sip:alice@198.51.100.7", ("198.51.100.8", 5060), "udp", True),
    ("public contact, port rewritten", "sip:alice@198.51.100.7", ("198.51.100.7", 1024), "udp", True),
    ("tls default port 5061", "sips:alice@198.51.100.7", ("198.51.100.7", 5061), "tls", False),
    ("tls transport param default port", "sip:alice@198.51.100.7;transport=tls",
     ("198.51.100.7", 5061), "tcp", False),
    ("arrived over tls, no transport in contact", "sip:alice@198.51.100.7",
     ("198.51.100.7", 5061), "tls", False),
    # RFC 5626 §3.5: a TCP flow from an ephemeral port is the way back.
    ("rfc5626 tcp flow, ephemeral port", "sip:alice@198.51.100.7;transport=tcp;ob",
     ("198.51.100.7", 49152), "tcp", True),
    ("ipv6 same address, other spelling", "sip:alice@[2001:db8:0::1]", ("2001:db8::1", 5060),
     "udp", False),
    ("ipv4-mapped source", "sip:alice@198.51.100.7", ("::ffff:198.51.100.7", 5060), "udp", False),
    ("hostname, default port", "sip:alice@phone.example.com", ("198.51.100.7", 5060), "udp", False),
    ("hostname, other port", "sip:alice@phone.example.com:5062", ("198.51.100.7", 5060),
     "udp", True),
    ("hostname, ephemeral tcp port", "sip:alice@phone.example.com;transport=tcp",
     ("198.51.100.7", 50000), "tcp", True),
    ("name-addr contact value", '"Alice" <sip:alice@192.168.1.2>;expires=60',
     ("203.0.113.9", 5060), "udp", True),
    ("unreadable contact", "sip:alice@", ("203.0.113.9", 5060), "udp", True),
    ("tel contact", "tel:+15551234", ("203.0.113.9", 5060), "udp", True),
])
def test_behind_nat(case, contact, source, transport, expected):
    assert behind_nat(contact, *source, transport) is expected


@pytest.mark.parametrize("host, expected", [
    ("10.1.2.3", True), ("172.15.0.1", False), ("172.31.255.255", True), ("192.168.0.1", True),
    ("100.63.255.255", False), ("100.64.0.0", True), ("100.127.255.255", True),
    ("169.254.9.9", True), ("[fe80::1]", True), ("fc00::1", True), ("2001:db8::1", False),
    ("::ffff:10.0.0.1", True), ("8.8.8.8", False), ("example.com", False),
])
def test_is_private(host, expected):
    assert is_private(host) is expected


@pytest.mark.parametrize("case, value, source, expected", [
    ("rfc3581 addr-spec", "sip:alice@192.168.1.2:5060", ("203.0.113.9", 40112),
     "<sip:alice@203.0.113.9:40112>"),
    ("name-addr with display and expires", '"Alice Smith" <sip:alice@192.168.1.2>;expires=3600',
     ("203.0.113.9", 40112), '"Alice Smith" <sip:alice@203.0.113.9:40112>;expires=3600'),
    ("token display name", "Alice <sip:alice@10.0.0.2:5062>;q=0.5",
     ("203.0.113.9", 1), "Alice <sip:alice@203.0.113.9:1>;q=0.5"),
    ("addr-spec header params stay header params", "sip:alice@10.0.0.2;expires=60",
     ("203.0.113.9", 5060), "<sip:alice@203.0.113.9:5060>;expires=60"),
    ("rfc5626 uri params and instance kept",
     '<sip:alice@10.0.0.2:5060;transport=tcp;ob>;reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"',
     ("203.0.113.9", 50000),
     '<sip:alice@203.0.113.9:50000;transport=tcp;ob>;reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'),
    ("no user part", "<sip:10.0.0.2>", ("203.0.113.9", 5060), "<sip:203.0.113.9:5060>"),
    ("ipv6 source bracketed", "<sip:alice@10.0.0.2>", ("2001:db8::7", 5060),
     "<sip:alice@[2001:db8::7]:5060>"),
    ("ipv6 contact replaced", "<sip:alice@[fd00::2]:5060>", ("2001:db8::7", 6000),
     "<sip:alice@[2001:db8::7]:6000>"),
    ("only the first of several", "<sip:a@10.0.0.2>, <sip:b@10.0.0.3>", ("203.0.113.9", 7),
     "<sip:a@203.0.113.9:7>, <sip:b@10.0.0.3>"),
    ("star unchanged", "*", ("203.0.113.9", 5060), "*"),
    ("tel unchanged", "<tel:+15551234>", ("203.0.113.9", 5060), "<tel:+15551234>"),
])
def test_fixed_contact(case, value, source, expected):
    assert fixed_contact(value, *source) == expected


def test_fixed_contact_result_reads_as_not_nated():
    fixed = fixed_contact('"A" <sip:a@192.168.1.2;transport=udp>;expires=60', "203.0.113.9", 40112)
    assert not behind_nat(fixed, "203.0.113.9", 40112, "udp")


@pytest.mark.parametrize("value", ["<sip:alice@10.0.0.2", "sip:", '"unterminated <sip:a@b>'])
def test_fixed_contact_rejects_malformed(value):
    with pytest.raises(BadMessage):
        fixed_contact(value, "203.0.113.9", 5060)
