"""parse_message and StreamFramer: the corpus, framing rules, and robustness."""

from __future__ import annotations

import pathlib
import random

import pytest

from host.sip import parser
from host.sip.errors import BadMessage
from host.sip.message import Request, Response
from host.sip.parser import MAX_MESSAGE, StreamFramer, parse_message
from host.sip.validate import check_request

CORPUS = pathlib.Path(__file__).parent / "corpus"
VALID = sorted((CORPUS / "valid").glob("*.sip"))
INVALID = sorted((CORPUS / "invalid").glob("*.sip"))


def msg(*lines: str, body: bytes = b"", cl: bool = True) -> bytes:
    head = list(lines)
    if cl:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def invite(*extra: str, body: bytes = b"", cl: bool = True, method: str = "INVITE") -> bytes:
    return msg(f"{method} sip:bob@biloxi.example.com SIP/2.0",
               "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
               "From: <sip:alice@atlanta.example.com>;tag=1", "To: <sip:bob@biloxi.example.com>",
               "Call-ID: abc@atlanta", f"CSeq: 7 {method}", *extra, body=body, cl=cl)


# ------------------------------------------------------------------ corpus
def test_corpus_is_large_enough():
    assert len(VALID) >= 30 and len(INVALID) >= 30


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_corpus_parses_and_round_trips(path):
    m = parse_message(path.read_bytes())
    if isinstance(m, Request):
        assert check_request(m) is None
    again = parse_message(m.serialize())
    strip = lambda hs: [h for h in hs if h[0] != "content-length"]  # noqa: E731
    assert strip(again.headers) == strip(m.headers)
    assert again.body == m.body
    assert (again.call_id, again.cseq, again.cseq_method) == (m.call_id, m.cseq, m.cseq_method)
    assert str(again.via) == str(m.via)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_corpus_gets_expected_status(path):
    prefix = path.stem.split("-")[0]
    expected = None if prefix == "none" else int(prefix)
    with pytest.raises(BadMessage) as info:
        m = parse_message(path.read_bytes())
        assert isinstance(m, Request), "a response must fail in parse_message"
        check_request(m)
    assert info.value.status == expected, info.value.reason


def test_corpus_files_are_crlf():
    # Everything but the one bare-LF case is stored with CRLF line ends.
    for path in VALID + INVALID:
        if path.stem == "bare-lf-line-ends":
            continue
        head = path.read_bytes().split(b"\r\n\r\n", 1)[0]
        assert b"\n" not in head.replace(b"\r\n", b""), path.name


def test_corpus_420_lists_every_unsupported_tag():
    m = parse_message((CORPUS / "invalid" / "420-proxy-require.sip").read_bytes())
    with pytest.raises(BadMessage) as info:
        check_request(m)
    assert info.value.headers == [("Unsupported", "foo, x-bar, baz")]


# ------------------------------------------------------------------ details
def test_compact_names_expand_and_folding_is_one_space():
    data = msg("INVITE sip:b@h SIP/2.0", "v: SIP/2.0/UDP h;branch=z9hG4bK1", "f: <sip:a@h>;tag=1",
               "t: <sip:b@h>", "i: x@y", "CSeq: 1 INVITE", "s: one,", "\t two", "k: a, b")
    m = parse_message(data)
    assert m.header("subject") == "one, two"
    assert m.header("s") == "one, two"
    assert m.header("supported") == "a, b"  # not a list the core splits
    assert [k for k, _ in m.headers][:4] == ["via", "from", "to", "call-id"]


def test_comma_lists_split_for_via_contact_route():
    m = parse_message(invite("Contact: <sip:a@x>;q=0.5, \"Bob, Jr\" <sip:b@y>",
                             "Route: <sip:p1;lr>,<sip:p2;lr>", "Record-Route: <sip:r1;lr>"))
    assert m.header_values("contact") == ["<sip:a@x>;q=0.5", '"Bob, Jr" <sip:b@y>']
    assert m.header_values("route") == ["<sip:p1;lr>", "<sip:p2;lr>"]


def test_top_via_is_parsed_and_cached():
    m = parse_message(invite())
    assert m._via is not None
    assert m.via.branch == "z9hG4bK776asdhds" and m.via.host == "pc33.atlanta.example.com"


def test_cached_fields():
    m = parse_message(invite())
    assert (m.call_id, m.cseq, m.cseq_method, m.method, m.uri) == (
        "abc@atlanta", 7, "INVITE", "INVITE", "sip:bob@biloxi.example.com")
    assert m.from_tag == "1" and m.to_tag is None


def test_udp_extra_bytes_dropped_and_short_body_rejected():
    data = invite(body=b"12345")
    assert parse_message(data + b"garbage").body == b"12345"
    with pytest.raises(BadMessage) as info:
        parse_message(data[:-1])
    assert info.value.status == 400


def test_missing_content_length_udp_takes_rest_stream_takes_nothing():
    data = invite(cl=False) + b"body"
    assert parse_message(data).body == b"body"
    assert parse_message(data, stream=True).body == b""


def test_response_problems_are_never_answered():
    resp = msg("SIP/2.0 200 OK", "Via: SIP/2.0/UDP h;branch=z9hG4bK1", "From: <sip:a@h>;tag=1",
               "To: <sip:b@h>;tag=2", "Call-ID: x", "CSeq: 1 INVITE", body=b"ok")
    m = parse_message(resp)
    assert isinstance(m, Response) and m.status == 200 and m.reason == "OK"
    for broken in (resp.replace(b"CSeq: 1 INVITE", b"CSeq: x"), resp[:-1],
                   resp.replace(b"Call-ID: x\r\n", b""), resp.replace(b"200 OK", b"2OO OK")):
        with pytest.raises(BadMessage) as info:
            parse_message(broken)
        assert info.value.status is None


def test_response_second_via_must_parse():
    resp = msg("SIP/2.0 180 Ringing", "Via: SIP/2.0/UDP p;branch=z9hG4bK1, SIP/2.0/UDP :bad",
               "From: <sip:a@h>;tag=1", "To: <sip:b@h>", "Call-ID: x", "CSeq: 1 INVITE")
    with pytest.raises(BadMessage) as info:
        parse_message(resp)
    assert info.value.status is None


def test_request_without_via_is_not_answerable_even_for_other_errors():
    data = invite().replace(b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n", b"")
    for variant in (data, data.replace(b"CSeq: 7 INVITE", b"CSeq: 7 BYE"), data + b"\x00"):
        with pytest.raises(BadMessage) as info:
            parse_message(variant.replace(b"Content-Length: 0", b"Content-Length: 3"))
        assert info.value.status is None


def test_size_limits():
    with pytest.raises(BadMessage) as info:
        parse_message(invite(body=b"x" * MAX_MESSAGE))
    assert info.value.status == 513
    ok = parse_message(invite(*[f"X-{i}: {i}" for i in range(parser.MAX_HEADERS - 8)]))
    assert ok.header("x-1") == "1"
    with pytest.raises(BadMessage):
        parse_message(invite(*[f"X-{i}: {i}" for i in range(parser.MAX_HEADERS)]))
    assert parse_message(invite("X-Long: " + "a" * (parser.MAX_LINE - 8))).header("x-long")
    with pytest.raises(BadMessage):
        parse_message(invite("X-Long: " + "a" * parser.MAX_LINE))


def test_comma_lists_count_against_the_header_limit():
    many = "Route: " + ", ".join(f"<sip:p{i};lr>" for i in range(parser.MAX_HEADERS))
    with pytest.raises(BadMessage) as info:
        parse_message(invite(many))
    assert info.value.status == 513
    assert len(parse_message(invite(many.split(", <sip:p200")[0])).header_values("route")) == 200


def test_header_name_cache_is_bounded():
    for i in range(parser._NAMES_MAX + 100):
        parse_message(invite(f"X-Name-{i}: v"))
    assert len(parser._NAMES) <= parser._NAMES_MAX


def test_tab_and_utf8_allowed_controls_not():
    assert parse_message(invite("Subject:\tcafé\tau lait")).header("subject") == "café\tau lait"
    for bad in (b"\x00", b"\x1b", b"\x7f", b"\r"):
        with pytest.raises(BadMessage):
            parse_message(invite("Subject: x").replace(b"Subject: x", b"Subject: x" + bad + b"y"))


def test_version_case_insensitive_and_bad_versions():
    assert parse_message(invite().replace(b"SIP/2.0\r\n", b"Sip/2.0\r\n", 1)).version == "SIP/2.0"
    with pytest.raises(BadMessage) as info:
        parse_message(invite().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1))
    assert info.value.status == 505
    with pytest.raises(BadMessage) as info:
        parse_message(invite().replace(b"SIP/2.0\r\n", b"HTTP/1.1\r\n", 1))
    assert info.value.status == 400


# ------------------------------------------------------------------ framing
def test_framer_several_messages_in_one_segment():
    a, b = invite(body=b"abc"), invite("X: 2", method="BYE")
    f = StreamFramer()
    assert f.feed(a + b + a[:10]) == [a, b]
    assert f.buffered() == 10
    assert f.feed(a[10:]) == [a]
    assert f.buffered() == 0


@pytest.mark.parametrize("body", [b"", b"v=0\r\no=x\r\n\r\nafter-blank"])
def test_framer_split_at_every_position(body):
    whole = invite(body=body)
    for cut in range(1, len(whole)):
        f = StreamFramer()
        assert f.feed(whole[:cut]) == []
        assert f.feed(whole[cut:]) == [whole]
        assert parse_message(whole, stream=True).body == body


def test_framer_byte_at_a_time_and_keepalives():
    a = invite(body=b"12345")
    f = StreamFramer()
    got = []
    for byte in b"\r\n\r\n" + a + b"\r\n" + a:
        got += f.feed(bytes([byte]))
    assert got == [a, a]


def test_framer_compact_and_missing_content_length():
    a = invite(body=b"xy").replace(b"Content-Length: 2", b"l :  2")
    b = invite(cl=False)
    assert StreamFramer().feed(a + b + a) == [a, b, a]


def test_framer_bare_lf():
    a = invite(body=b"hi").replace(b"\r\n", b"\n")
    assert StreamFramer().feed(a + a) == [a, a]
    assert parse_message(a, stream=True).body == b"hi"


@pytest.mark.parametrize("cl", [b"-1", b"abc", b"99999999999", b"1, 2"])
def test_framer_unframeable_content_length(cl):
    data = invite(body=b"x").replace(b"Content-Length: 1", b"Content-Length: " + cl)
    with pytest.raises(BadMessage) as info:
        StreamFramer().feed(data)
    assert info.value.status is None


def test_framer_conflicting_content_length():
    data = invite("Content-Length: 2", body=b"x")
    with pytest.raises(BadMessage):
        StreamFramer().feed(data)


def test_framer_limits():
    f = StreamFramer(max_size=1000)
    with pytest.raises(BadMessage):
        f.feed(invite(body=b"x" * 2000))
    f = StreamFramer(max_size=1000)
    f.feed(b"INVITE sip:a@b SIP/2.0\r\n")
    with pytest.raises(BadMessage):
        for _ in range(100):
            f.feed(b"X: " + b"y" * 20 + b"\r\n")


def test_framer_delivers_good_messages_before_the_error():
    a = invite()
    f = StreamFramer()
    assert f.feed(a + b"INVITE x SIP/2.0\r\nContent-Length: nope\r\n\r\n") == [a]
    with pytest.raises(BadMessage):
        f.feed(b"")


# ------------------------------------------------------------------ robustness
_ALPHABET = b'\x00\r\n \t:;,"<>@%[]\\=?&/.0123456789aZ\xff\xc3\xa9'


def _mutate(rng: random.Random, data: bytes) -> bytes:
    m = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not m:
            m += b"x"
        i = rng.randrange(len(m))
        op = rng.randrange(6)
        if op == 0:
            m[i] = rng.randrange(256)
        elif op == 1:
            m[i] = rng.choice(_ALPHABET)
        elif op == 2:
            del m[i:i + rng.randint(1, 20)]
        elif op == 3:
            m[i:i] = bytes(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 5)))
        elif op == 4:
            j = rng.randrange(len(m))
            m[i:i] = m[j:j + rng.randint(1, 40)]
        else:
            del m[i:]
    return bytes(m)


def _exercise(data: bytes) -> None:
    """Everything the core does with a parsed message may raise only BadMessage."""
    for stream in (False, True):
        try:
            m = parse_message(data, stream=stream)
        except BadMessage:
            continue
        m.via, m.from_tag, m.to_tag  # noqa: B018 - must not raise after a good parse
        assert parse_message(m.serialize()).headers is not None
        if isinstance(m, Request):
            try:
                check_request(m)
            except BadMessage:
                pass


def test_mutations_raise_only_bad_message():
    rng = random.Random(20240601)
    seeds = [p.read_bytes() for p in VALID + INVALID if p.stat().st_size < 4000]
    for _ in range(4000):
        data = _mutate(rng, rng.choice(seeds))
        _exercise(data)
        f = StreamFramer()
        pos = 0
        try:
            while pos < len(data):
                step = rng.randint(1, 64)
                for raw in f.feed(data[pos:pos + step]):
                    _exercise(raw)
                pos += step
        except BadMessage:
            pass


def test_random_bytes_raise_only_bad_message():
    rng = random.Random(7)
    for _ in range(1500):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        if rng.random() < 0.5:
            data = b"INVITE sip:a@b SIP/2.0\r\nVia: " + data + b"\r\n\r\n"
        _exercise(data)
        try:
            StreamFramer().feed(data)
        except BadMessage:
            pass
