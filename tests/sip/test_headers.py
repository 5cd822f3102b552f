"""Header names and the header values the core parses (RFC 3261 §7.3, §20, §25)."""

from __future__ import annotations

import pytest

from host.sip.errors import BadMessage
from host.sip.headers import (
    display_name, header_key, parse_name_addr, parse_params, parse_via, split_commas, tag_of,
    unquote_string,
)

from mutate import mutations


def test_header_key_and_display_name():
    assert header_key("v") == "via" and header_key(" Call-Id ") == "call-id" and header_key("L") == "content-length"
    assert header_key("X-Custom") == "x-custom"
    assert display_name("call-id") == "Call-ID" and display_name("www-authenticate") == "WWW-Authenticate"
    assert display_name("x-my-header") == "X-My-Header" and display_name("cseq") == "CSeq"


@pytest.mark.parametrize("value, parts", [
    ("a", ["a"]),
    ("a, b ,c", ["a", "b", "c"]),
    ("a,,b,", ["a", "b"]),
    ('"x, y" <sip:a@b>, <sip:c@d>', ['"x, y" <sip:a@b>', "<sip:c@d>"]),
    ('<sip:a,b@h;x=1,2>;q=1, <sip:c@d>', ["<sip:a,b@h;x=1,2>;q=1", "<sip:c@d>"]),
    ('"a \\" , b" <sip:x@y>, z', ['"a \\" , b" <sip:x@y>', "z"]),
    ('<sip:a@b>;p="1,2", c', ['<sip:a@b>;p="1,2"', "c"]),
])
def test_split_commas(value, parts):
    assert split_commas(value) == parts


@pytest.mark.parametrize("value", ['"open, b', "<sip:a, b", '"a\\", b'])
def test_split_commas_unbalanced(value):
    with pytest.raises(BadMessage):
        split_commas(value)


def test_parse_params():
    assert parse_params("") == {}
    assert parse_params("branch=z9hG4bK1;rport") == {"branch": "z9hG4bK1", "rport": None}
    assert parse_params(";A=B;c") == {"a": "B", "c": None}
    assert parse_params(" ; a = b ;  c ") == {"a": "b", "c": None}
    assert parse_params(';x="a;b,c=d";y') == {"x": '"a;b,c=d"', "y": None}
    assert parse_params(';q="say \\"hi\\""') == {"q": '"say \\"hi\\""'}
    assert parse_params(";received=2001:db8::1;maddr=[::1]") == {"received": "2001:db8::1", "maddr": "[::1]"}
    assert parse_params(";;a=1;") == {"a": "1"}  # empty elements tolerated


@pytest.mark.parametrize("text", [";=x", ";a b", ";a=b c", ';a="open', ";a=<x>", ";a==b", ';a="x"y', ";a=é"])
def test_parse_params_errors(text):
    with pytest.raises(BadMessage):
        parse_params(text)


def test_parse_via_common_form():
    v = parse_via("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport")
    assert (v.transport, v.host, v.port, v.branch, v.sent_by) == ("UDP", "127.0.0.1", 5061, "z9hG4bK-1", "127.0.0.1:5061")
    assert v.params == {"branch": "z9hG4bK-1", "rport": None}
    assert str(v) == "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport"


def test_parse_via_whitespace_case_ipv6():
    v = parse_via("  sip / 2.0 / tcp   [2001:db8::9] : 5070 ; Branch = z9hG4bKx ; received=2001:db8::9 ")
    assert (v.transport, v.host, v.port) == ("TCP", "[2001:db8::9]", 5070)
    assert v.params == {"branch": "z9hG4bKx", "received": "2001:db8::9"}
    assert parse_via("SIP/2.0/WSS h.example.com").port is None
    assert parse_via("SIP/2.0/UDP h").branch is None


@pytest.mark.parametrize("value", [
    "", "SIP/2.0", "SIP/2.0/UDP", "SIP/3.0/UDP h", "HTTP/2.0/UDP h", "SIP/2.0/UDP h:0", "SIP/2.0/UDP h:70000",
    "SIP/2.0/UDP h:x", "SIP/2.0/UDP -h", "SIP/2.0/UDP [::1", "SIP/2.0/UDP [zz::1]", "SIP/2.0/UDP h;=x",
    "SIP/2.0/UDP h junk", "SIP/2.0/UDP h;branch=a b", "SIP/2.0/U@P h",
])
def test_parse_via_errors(value):
    with pytest.raises(BadMessage):
        parse_via(value)


def test_name_addr_forms():
    a = parse_name_addr('"Alice \\"A\\", <x>" <sip:alice@h>;tag=1;x="y;z"')
    assert a.display == '"Alice \\"A\\", <x>"' and unquote_string(a.display) == 'Alice "A", <x>'
    assert a.uri == "sip:alice@h" and a.params == {"tag": "1", "x": '"y;z"'} and a.tag == "1"
    b = parse_name_addr("Bob  Smith\t<sips:bob@h;transport=tcp>")
    assert b.display == "Bob  Smith" and b.uri == "sips:bob@h;transport=tcp" and b.params == {}
    c = parse_name_addr("<sip:c@h>")
    assert c.display is None and c.bracketed
    d = parse_name_addr("sip:d@h;tag=9;lr")  # addr-spec: params belong to the header (§20.10)
    assert (d.uri, d.params, d.bracketed) == ("sip:d@h", {"tag": "9", "lr": None}, False)
    assert parse_name_addr("*").uri == "*"
    assert parse_name_addr("<sip:a@h> ;tag").params == {"tag": None}  # a flag parameter
    assert parse_name_addr('"" <tel:+1555>').display == '""'
    assert parse_name_addr("<http://example.com/x?y=z>").uri == "http://example.com/x?y=z"
    assert str(a) == '"Alice \\"A\\", <x>" <sip:alice@h>;tag=1;x="y;z"'


@pytest.mark.parametrize("value", [
    "", "Alice sip:a@h", '"unterminated <sip:a@h>', "<sip:a@h", "<>", "< sip:a b@h>", "<sip:a@h> junk",
    'Ali"ce <sip:a@h>', '"a" x <sip:a@h>', "sip:a@h?subject=x", "sip:a,b@h", "Al,ice <sip:a@h>",
    "<sip:a@h>;=1", "noscheme", "<sip:a@h>x;tag=1",
])
def test_name_addr_errors(value):
    with pytest.raises(BadMessage):
        parse_name_addr(value)


def test_tag_of():
    assert tag_of("<sip:a@h>;tag=abc") == "abc"
    assert tag_of("<sip:a@h>;x=1;TAG=Abc;y=2") == "Abc"
    assert tag_of('"a;tag=no" <sip:a@h;tag=no>;tag=yes') == "yes"
    assert tag_of("sip:a@h;tag=addr") == "addr"
    assert tag_of("<sip:a@h> ; tag = spaced") == "spaced"
    assert tag_of("<sip:a@h>;tagx=1") is None
    assert tag_of("<sip:a@h>") is None and tag_of(None) is None and tag_of("") is None
    assert tag_of('<sip:a@h>;tag ="broken') is None  # never raises


def test_unquote_string():
    assert unquote_string('"a \\"b\\" \\\\ c"') == 'a "b" \\ c'
    assert unquote_string("plain") == "plain"


def test_random_values_raise_only_bad_message():
    alphabet = 'sip:;,"<>@%[]\\=?&/. \t*0123456789aZ\u00e9'
    seeds = ['"A \\"b\\"" <sip:a@b>;tag=1;x="q;r"', "SIP/2.0/UDP [::1]:5060;branch=z9hG4bK1;received=::1",
             'a, "b,c" <sip:x,y@z>, <sip:q>']
    for text in mutations(5, seeds, alphabet, 4000):
        for parse in (parse_name_addr, parse_via, split_commas, parse_params):
            try:
                parse(text)
            except BadMessage:
                pass
        tag_of(text)
