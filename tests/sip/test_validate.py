"""RFC 3261 §16.3 request validation."""

from __future__ import annotations

import pytest

from host.sip.errors import BadMessage
from host.sip.message import Request
from host.sip.parser import parse_message
from host.sip.validate import check_request


def req(*extra: str, ruri: str = "sip:bob@biloxi.example.com", frm: str = "<sip:alice@a.example>;tag=1",
        to: str = "<sip:bob@biloxi.example.com>") -> Request:
    lines = [f"INVITE {ruri} SIP/2.0", "Via: SIP/2.0/UDP a.example;branch=z9hG4bK1", f"From: {frm}",
             f"To: {to}", "Call-ID: x@y", "CSeq: 1 INVITE", *extra, "Content-Length: 0"]
    m = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(m, Request)
    return m


def status_of(m: Request):
    try:
        check_request(m)
    except BadMessage as exc:
        return exc.status
    return "ok"


def test_acceptable_requests():
    assert check_request(req()) is None
    assert check_request(req("Max-Forwards: 0")) is None  # 483 is the proxy's decision
    assert check_request(req("Max-Forwards: 255", "Require: 100rel")) is None
    assert check_request(req(ruri="tel:+15550100")) is None
    assert check_request(req(ruri="sips:bob:pw@[::1]:5061;lr")) is None
    assert check_request(req(frm="<urn:x:y>;tag=3", to="<http://e.example/b>")) is None
    assert check_request(req(frm="sip:alice@a.example;tag=2")) is None


@pytest.mark.parametrize("value", ["256", "-1", "1.0", "seventy", "", "0070x", "\u0661", "1000"])
def test_bad_max_forwards_is_400(value):
    assert status_of(req(f"Max-Forwards: {value}")) == 400


def test_two_max_forwards_is_400():
    assert status_of(req("Max-Forwards: 70", "Max-Forwards: 70")) == 400


@pytest.mark.parametrize("ruri", ["http://example.com/", "mailto:bob@example.com", "urn:service:sos"])
def test_unsupported_scheme_is_416(ruri):
    assert status_of(req(ruri=ruri)) == 416


@pytest.mark.parametrize("ruri", ["sip:@h", "sip:bob@h:0", "sip:b%zz@h", "sip:bob@h?Route=x", "tel:xyz"])
def test_malformed_request_uri_is_400(ruri):
    assert status_of(req(ruri=ruri)) == 400


def test_syntax_comes_before_scheme():
    # §16.3 order: a malformed From makes it a 400 even with an unknown scheme.
    assert status_of(req(ruri="http://example.com/", frm="<sip:a@-bad>;tag=1")) == 400


@pytest.mark.parametrize("frm", ["*", "<sip:a@h:99999>;tag=1", "Alice sip:a@h", "<sip:a@h", "<tel:>;tag=1"])
def test_bad_from_is_400(frm):
    assert status_of(req(frm=frm)) == 400


def test_proxy_require_is_420_with_unsupported_header():
    m = req("Proxy-Require: sec-agree, Foo", "Proxy-Require: foo, bar")
    with pytest.raises(BadMessage) as info:
        check_request(m)
    assert info.value.status == 420
    assert info.value.headers == [("Unsupported", "sec-agree, Foo, foo, bar")]
    assert check_request(m, supported=frozenset({"sec-agree", "foo", "bar"})) is None


def test_missing_via_cannot_be_answered():
    m = req()
    m.remove_header("via")
    assert status_of(m) is None


def test_from_to_counted_on_edited_messages():
    m = req()
    m.add_header("To", "<sip:x@y>")
    assert status_of(m) == 400
    m = req()
    m.remove_header("from")
    assert status_of(m) == 400
