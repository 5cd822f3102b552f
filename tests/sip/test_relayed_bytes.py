"""A relayed response is its received bytes with our Via cut out
(message.ReceivedResponse), and that must be the same message as the one
serialized from its fields: both parse to the same thing, over the corpus,
sipp's forms and mutations of them. Any other change to the response makes
it fall back to the fields, so the change is on the wire."""

from __future__ import annotations

import pathlib
import random

import pytest

from host.sip import parser
from host.sip.errors import BadMessage
from host.sip.nat import fix_contacts
from host.sip.parser import parse_message

from test_parser import _mutate

CORPUS = pathlib.Path(__file__).parent / "corpus"
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"

VIAS = [b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK9c6d.f5f1",
        b"SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0;received=10.0.0.9;rport=5061"]


def sipp_response(status=b"180 Ringing", vias=VIAS, one_line=True, via_name=b"Via",
                  body=b"", extra=b"", via_last=False) -> bytes:
    """As sipp's uas answers (every Via in one line), or one Via per line."""
    via_lines = ([via_name + b": " + b", ".join(vias)] if one_line
                 else [via_name + b": " + v for v in vias])
    others = [b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag001",
              b"To: service <sip:service@127.0.0.1:5060>;tag=2SIPpTag011",
              b"Call-ID: 1-1@127.0.0.1", b"CSeq: 1 INVITE",
              b"Contact: <sip:127.0.0.1:5090;transport=UDP>",
              b"Content-Length:   " + str(len(body)).encode()]
    lines = others + via_lines if via_last else via_lines + others
    return b"SIP/2.0 " + status + b"\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + body + extra


FORMS = {
    "sipp-one-line": sipp_response(),
    "one-per-line": sipp_response(one_line=False),
    "compact-name": sipp_response(one_line=False, via_name=b"v"),
    "with-sdp": sipp_response(b"200 OK", body=SDP),
    "extra-datagram-bytes": sipp_response(b"200 OK", body=SDP, extra=b"garbage"),
    "via-last-header": sipp_response(one_line=False, via_last=True),
    "list-via-last": sipp_response(via_last=True),
    "three-in-a-list": sipp_response(vias=VIAS + [b"SIP/2.0/TCP h3:5070;branch=z9hG4bK3"]),
    "tabs-in-list": sipp_response().replace(b", SIP/2.0/UDP 127.0.0.1:5061", b",\t SIP/2.0/UDP 127.0.0.1:5061"),
}
CORPUS_RESPONSES = [p for p in sorted(CORPUS.glob("valid/*.sip")) if p.read_bytes().lstrip().startswith(b"SIP/")]


def seen(data: bytes, stream: bool):
    """What a next hop reads in `data`: the message's fields."""
    m = parse_message(data, stream=stream)
    headers = [h for h in m.headers if h[0] != "content-length"]
    return (m.start_line(), headers, m.body, m.call_id, m.cseq, m.cseq_method)


def relay_both_ways(data: bytes, stream: bool = False):
    """(the bytes relayed by cutting the Via out, from the fields) for
    `data` with its top Via popped, or None when it does not parse."""
    try:
        resp = parse_message(data, stream=stream)
    except BadMessage:
        return None
    resp.pop_first("via")
    return resp.serialize(), resp.serialize_fields(), resp


@pytest.mark.skipif(not parser.accelerated(), reason="C scanner not built")
@pytest.mark.parametrize("name", FORMS)
def test_sipp_forms_are_relayed_from_their_bytes(name):
    data = FORMS[name]
    fast, fields, resp = relay_both_ways(data)
    assert resp.received is not None, "the response keeps its bytes"
    assert fast != fields, "the relayed bytes are the received ones, not a re-serialization"
    cut = resp.received
    assert fast == data[:cut.via_start] + data[cut.via_end:len(fast) + cut.via_end - cut.via_start]
    assert fast.endswith(b"\r\n\r\n" + resp.body)   # extra datagram bytes dropped (§18.3)
    for stream in (False, True):
        assert seen(fast, stream) == seen(fields, stream)
    assert parse_message(fast).via.branch == "z9hG4bK-1-1-0"   # the next Via is now on top


@pytest.mark.parametrize("path", CORPUS_RESPONSES, ids=lambda p: p.stem)
def test_corpus_responses_relay_to_the_same_message(path):
    data = path.read_bytes()
    for stream in (False, True):
        both = relay_both_ways(data, stream)
        if both is None:
            continue
        fast, fields, _ = both
        try:
            expected = seen(fields, stream)
        except BadMessage:   # the only Via was ours: nothing to relay to
            with pytest.raises(BadMessage):
                seen(fast, stream)
            continue
        assert seen(fast, stream) == expected, path.name


def test_mutated_responses_relay_to_the_same_message():
    rng = random.Random(3261)
    seeds = list(FORMS.values()) + [p.read_bytes() for p in CORPUS_RESPONSES]
    from_bytes = 0
    for _ in range(3000):
        data = _mutate(rng, rng.choice(seeds))
        both = relay_both_ways(data)
        if both is None:
            continue
        fast, fields, resp = both
        try:
            expected = seen(fields, False)
        except BadMessage:   # no Via left, or an edit the fields form refuses too
            with pytest.raises(BadMessage):
                seen(fast, False)
            continue
        assert seen(fast, False) == expected, data[:300]
        from_bytes += fast != fields
    assert from_bytes > 100   # the comparison covered the cut bytes, not only the fallback


@pytest.mark.skipif(not parser.accelerated(), reason="C scanner not built")
@pytest.mark.parametrize("change", ["set_header", "direct_write", "status", "reason", "body",
                                    "fix_contacts", "second_pop", "copy"])
def test_any_other_change_is_serialized_from_the_fields(change):
    resp = parse_message(FORMS["with-sdp"])
    resp.pop_first("via")
    if change == "set_header":
        resp.set_header("subject", "changed")
    elif change == "direct_write":
        resp.headers[1] = ("to", "<sip:changed@h>;tag=9")
    elif change == "status":
        resp.status, resp.reason = 500, "Server Internal Error"
    elif change == "reason":
        resp.reason = "Rang"
    elif change == "body":
        resp.body = b"v=0\r\n"
    elif change == "fix_contacts":
        fix_contacts(resp, "192.0.2.7", 40000)
    elif change == "second_pop":
        resp.pop_first("via")
    elif change == "copy":
        resp = resp.copy()
        resp.status, resp.reason = 500, "Server Internal Error"
    assert resp.serialize() == resp.serialize_fields()


@pytest.mark.skipif(not parser.accelerated(), reason="C scanner not built")
def test_quoted_string_in_a_via_list_keeps_to_the_fields():
    data = FORMS["sipp-one-line"].replace(b";branch=z9hG4bK9c6d.f5f1", b';x="a,b";branch=z9hG4bK9c6d.f5f1')
    resp = parse_message(data)
    assert resp.received is None
    resp.pop_first("via")
    assert parse_message(resp.serialize()).via.branch == "z9hG4bK-1-1-0"


def test_a_response_without_content_length_keeps_to_the_fields():
    data = FORMS["one-per-line"].replace(b"Content-Length:   0\r\n", b"")
    assert parse_message(data).received is None
