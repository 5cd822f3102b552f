"""URIs: sip, sips and tel, with the parts the proxy routes on (RFC 3261 §19.1, §25.1)."""

from __future__ import annotations

import pytest

from host.sip.errors import BadMessage
from host.sip.uri import URI, check_absolute_uri, parse_hostport, parse_uri, valid_host

from mutate import mutations


def test_full_sip_uri():
    u = parse_uri("sips:alice:secret@[2001:db8::1]:5061;transport=TCP;lr;maddr=[::1]?subject=a%20b&x=y")
    assert (u.scheme, u.user, u.password, u.host, u.port) == ("sips", "alice", "secret", "[2001:db8::1]", 5061)
    assert u.params == {"transport": "TCP", "lr": None, "maddr": "[::1]"}
    assert u.headers == "subject=a%20b&x=y"
    assert u.transport == "tls"   # sips over TCP is TLS (RFC 5630 §3.1.3), never plain TCP


def test_defaults_and_transport():
    u = parse_uri("sip:example.com")
    assert (u.user, u.password, u.port, u.params, u.headers) == (None, None, None, {}, None)
    assert u.transport == "udp"
    assert parse_uri("sips:example.com").transport == "tls"


def test_scheme_and_param_names_are_case_insensitive_values_kept():
    u = parse_uri("SIP:Bob@Example.COM;TRANSPORT=Udp")
    assert u.scheme == "sip" and u.user == "Bob" and u.host == "Example.COM"
    assert u.params == {"transport": "Udp"}


def test_escapes_in_user():
    u = parse_uri("sip:%61lice%20smith%3B@example.com")
    assert u.user == "%61lice%20smith%3B"
    assert u.user_unescaped == "alice smith;"
    assert u == parse_uri("sip:alice%20smith%3b@EXAMPLE.com")


@pytest.mark.parametrize("text", ["sip:a%@h", "sip:a%4@h", "sip:a%zz@h", "sip:h;x=%g0"])
def test_bad_escapes(text):
    with pytest.raises(BadMessage) as info:
        parse_uri(text)
    assert info.value.status == 400


def test_user_with_semicolon_question_mark_and_telephone_subscriber():
    u = parse_uri("sip:alice;day=tuesday@example.com;user=ip")
    assert u.user == "alice;day=tuesday" and u.params == {"user": "ip"}
    u = parse_uri("sip:+1-212-555-1212:1234@gateway.com;user=phone")
    assert (u.user, u.password) == ("+1-212-555-1212", "1234")


def test_tel_uris():
    u = parse_uri("tel:+1-201-555-0123;ext=22")
    assert (u.scheme, u.user, u.host, u.params) == ("tel", "+1-201-555-0123", "", {"ext": "22"})
    assert str(u) == "tel:+1-201-555-0123;ext=22"
    assert parse_uri("tel:7042;phone-context=example.com").params["phone-context"] == "example.com"
    for bad in ("tel:", "tel:;x", "tel:abc-def xyz", "tel:--", "tel:+1@host"):
        with pytest.raises(BadMessage):
            parse_uri(bad)


@pytest.mark.parametrize("text", [
    "sip:alice@atlanta.com", "sip:alice:@atlanta.com", "sips:a:b@h.example.:5061;lr?h=v",
    "sip:[::1]", "sip:u@[2001:db8::10]:5070;maddr=[2001:db8::11];transport=tcp",
    "sip:192.0.2.1:5060;x;y=z", "tel:+44(0)20-7946.0000;phone-context=+44",
    "sip:a-b_c.d!e~f*g'h(i)j&k=l+m$n,o;p?q/r@host_1.example",
])
def test_str_round_trip(text):
    u = parse_uri(text)
    assert str(parse_uri(str(u))) == str(u)
    assert parse_uri(str(u)) == u


def test_other_schemes_are_416_when_well_formed_400_when_not():
    for text in ("http://www.example.com/x", "mailto:bob@example.com", "im:bob@example.com", "urn:service:sos"):
        with pytest.raises(BadMessage) as info:
            parse_uri(text)
        assert info.value.status == 416, text
    for text in ("", "example.com", ":x", "1sip:x", "sipx", "http://a b", "x:<y>"):
        with pytest.raises(BadMessage) as info:
            parse_uri(text)
        assert info.value.status == 400, text


@pytest.mark.parametrize("text", [
    "sip:", "sip:@h", "sip:a@", "sip:a@@h", "sip:a@h@i", "sip:a b@h", "sip:a@h:", "sip:a@h:0",
    "sip:a@h:65536", "sip:a@h:123456", "sip:a@h:5o60", "sip:a@-h", "sip:a@h-.com", "sip:a@h..com",
    "sip:a@[2001:db8::1", "sip:a@[::g]", "sip:a@[fe80::1%25eth0]", "sip:a@[1.2.3.4]", "sip:a@h;=x",
    "sip:a@h;x=", "sip:a@h?x", "sip:a@h?=v", "sip:a@h;x=\"q\"", "sip:a@" + "l" * 64 + ".com",
    "sip:a\u00e9@h", "sip:a@h\t",
])
def test_malformed_sip_uris(text):
    with pytest.raises(BadMessage) as info:
        parse_uri(text)
    assert info.value.status == 400


def test_hostport():
    assert parse_hostport("example.com") == ("example.com", None)
    assert parse_hostport("[::1]:5060") == ("[::1]", 5060)
    assert parse_hostport("192.0.2.1:1") == ("192.0.2.1", 1)
    for bad in ("", ":5060", "[::1]x", "[::1", "h:", "h:0", "h:99999", "h:\u00b2", "h:-1"):
        with pytest.raises(BadMessage):
            parse_hostport(bad)


def test_valid_host():
    for ok in ("a", "a.b.c", "a-b.example.", "192.0.2.1", "_sip._udp.example.com", "[2001:db8::1]", "[::ffff:1.2.3.4]"):
        assert valid_host(ok), ok
    for bad in ("", ".", "a..b", "-a", "a-", "a b", "[]", "[::1", "[zz::1]", "[1::2::3]", "a/b"):
        assert not valid_host(bad), bad


def test_check_absolute_uri():
    check_absolute_uri("http://example.com/a?b=c")
    check_absolute_uri("urn:service:sos")
    for bad in ("", "noscheme", "1x:y", "x:", "x:a b", 'x:"q"', "x:<y>"):
        with pytest.raises(BadMessage):
            check_absolute_uri(bad)


def test_equality_subset():
    assert parse_uri("sip:bob@EXAMPLE.com") == parse_uri("sip:bob@example.com")
    assert parse_uri("sip:bob@h") != parse_uri("sip:Bob@h")  # user part is case-sensitive
    assert parse_uri("sip:bob@h;transport=tcp") != parse_uri("sip:bob@h")
    assert parse_uri("sip:bob@h:5060") != parse_uri("sip:bob@h")
    assert parse_uri("sip:bob@h").__eq__("sip:bob@h") is NotImplemented


def test_copy_is_independent():
    u = parse_uri("sip:a@h;lr")
    c = u.copy()
    c.params["x"] = "1"
    assert "x" not in u.params and isinstance(c, URI)


def test_random_uris_raise_only_bad_message():
    alphabet = 'sip:tel;,"<>@%[]\\=?&/.:0123456789aZ \t+-_!~*\u00e9\x00#'
    seeds = ["sip:alice:pw@[2001:db8::1]:5060;transport=tcp;lr?h=v&x=y", "tel:+1-555;ext=1",
             "sips:%41@h.example.com;maddr=[::1]"]
    for text in mutations(11, seeds, alphabet, 5000):
        try:
            u = parse_uri(text)
        except BadMessage:
            continue
        assert str(parse_uri(str(u))) == str(u)
