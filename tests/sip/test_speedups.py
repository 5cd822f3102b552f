"""The optional C scanner (host/sip/_scan.c through cffi) against the pure-Python parser.

Both paths must give the same message, or the same BadMessage status, for the
whole corpus and for mutations of it; and the scanner must really take the
common messages (else these comparisons would test nothing).
"""

from __future__ import annotations

import pathlib
import random

import pytest

from host.sip import parser
from host.sip.errors import BadMessage
from host.sip.message import Request
from host.sip import scanned as scanned_mod
from host.sip.parser import parse_message
from host.sip.validate import check_request

from test_parser import _mutate

pytestmark = pytest.mark.skipif(not parser.accelerated(), reason="C scanner not built")

CORPUS = pathlib.Path(__file__).parent / "corpus"
FILES = sorted(CORPUS.glob("*/*.sip"))

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
PLAIN = [
    b"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0;rport\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag001\r\n"
    b"To: service <sip:service@127.0.0.1:5060>\r\nCall-ID: 1-1@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.1:5061\r\nMax-Forwards: 70\r\nX-Custom-Thing: a, b\r\n"
    b"Route: <sip:p1;lr>, <sip:p2;lr>\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP,
    b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc.0\r\n"
    b"v: SIP/2.0/TCP client.example.com;branch=z9hG4bK-2;received=10.0.0.9\r\n"
    b"Record-Route: <sip:10.0.0.1;lr>\r\nf: <sip:a@b>;tag=1\r\nt: <sip:c@d>;tag=2\r\n"
    b"i: xyz\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    b"SIP/2.0 200\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
    b"To: <sip:c@d>\r\nCall-ID: q\r\nCSeq: 9 OPTIONS\r\n\r\n",
]


def outcome(data: bytes, stream: bool, use_c: bool):
    """Everything observable about parsing `data` (and validating it)."""
    parser.use_accelerator(use_c)
    try:
        m = parse_message(data, stream=stream)
    except BadMessage as exc:
        return ("error", exc.status, exc.headers)
    finally:
        parser.use_accelerator(True)
    via = m._via
    seen = (type(m).__name__, m.start_line(), m.headers, m.body, m.call_id, m.cseq, m.cseq_method,
            (via.transport, via.host, via.port, list(via.params.items())))
    if isinstance(m, Request):
        try:
            check_request(m)
        except BadMessage as exc:
            return seen, ("rejected", exc.status, exc.headers)
    return seen


def same_both_ways(data: bytes) -> None:
    for stream in (False, True):
        assert outcome(data, stream, True) == outcome(data, stream, False), (data[:200], stream)


def test_the_extension_writes_the_layout_the_parser_reads():
    # parser.py refuses (and parses without) an extension whose layout differs.
    assert parser._lib.bs_layout() == parser._FIXED


def test_header_ids_agree_with_the_c_table():
    names = [parser._ffi.string(parser._lib.bs_name_of(i)).decode()
             for i in range(1, len(parser._SCAN_KEYS))]
    assert names == list(parser._SCAN_KEYS[1:])
    assert parser._lib.bs_name_of(len(parser._SCAN_KEYS)) == parser._ffi.NULL


def scanned(data: bytes) -> list[int] | None:
    out = parser._ffi.new("int32_t[]", parser._SCAN_CAP)
    n = parser._lib.bs_scan(data, len(data), out, parser._SCAN_CAP)
    return parser._ffi.unpack(out, n) if n > 0 else None


@pytest.mark.parametrize("data", PLAIN, ids=["invite", "180-two-vias", "200-no-reason"])
def test_plain_messages_take_the_c_path_whole(data):
    v = scanned(data)
    assert v is not None
    assert v[10] in (1, 2), "start line read in C"
    assert v[14] == 1, "top Via read in C"
    same_both_ways(data)


def test_unusual_messages_are_left_to_python():
    base = PLAIN[0]
    for variant in (base.replace(b"Max-Forwards: 70", b"Max-Forwards: 70\r\n\t71"),  # folding
                    base.replace(b"\r\n", b"\n"),                                     # bare LF
                    base.replace(b"sipp <", "caf\u00e9 <".encode()),                # non-ASCII
                    base.replace(b"Max-Forwards:", b"Max-Forwards :"),                # LWS before ':'
                    base.replace(b"CSeq: 1 INVITE", b"CSeq: 1 INVITE\r\nCSeq: 1 INVITE")):
        assert scanned(variant) is None
        same_both_ways(variant)


# sipp's uas answers with every Via in one line: half the messages of a relayed call.
SIPP_180 = (b"SIP/2.0 180 Ringing\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:15260;branch=z9hG4bK9c6d.f5f1, SIP/2.0/UDP 127.0.0.1:15261;branch=z9hG4bK-1-1-0\r\n"
            b"From: sipp <sip:sipp@127.0.0.1:15261>;tag=1SIPpTag001\r\n"
            b"To: service <sip:service@127.0.0.1:15260>;tag=2SIPpTag011\r\n"
            b"Call-ID: 1-1@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
            b"Contact: <sip:127.0.0.1:15290;transport=UDP>\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("data", [
    SIPP_180,
    PLAIN[0].replace(b";rport", b";rport, SIP/2.0/UDP h2"),                          # request
    PLAIN[1].replace(b";branch=z9hG4bKabc.0", b";branch=z9hG4bKabc.0, SIP/2.0/UDP h3"),  # list below a plain Via
    SIPP_180.replace(b", SIP/2.0/UDP 127.0.0.1:15261", b",, SIP/2.0/UDP 127.0.0.1:15261"),  # empty element
    SIPP_180.replace(b", SIP/2.0/UDP 127.0.0.1:15261", b", SIP/2.0/UDP 127.0.0.1:"),      # bad second Via
    SIPP_180.replace(b";branch=z9hG4bK9c6d.f5f1", b";x=\"a,b\";branch=z9hG4bK9c6d.f5f1"),  # quoted comma
    SIPP_180.replace(b"SIP/2.0/UDP 127.0.0.1:15260;", b"SIP/2.0/UDP [::1;"),             # bad top Via
], ids=["sipp-180", "request", "below-plain", "empty-element", "bad-second", "quoted-comma", "bad-top"])
def test_via_lists_are_scanned_and_checked_like_the_python_path(data):
    v = scanned(data)
    assert v is not None
    assert v[9] in (parser._SCAN_VIA_LIST, parser._SCAN_VIA_LIST_CHECKED)
    same_both_ways(data)


def test_sipp_via_list_is_read_whole_in_c():
    v = scanned(SIPP_180)
    assert v[14] == 1, "top Via read in C"
    assert v[9] == parser._SCAN_VIA_LIST_CHECKED, "second Via checked in C"
    m = parse_message(SIPP_180)
    assert (m.via.host, m.via.port, m.via.branch) == ("127.0.0.1", 15260, "z9hG4bK9c6d.f5f1")


@pytest.mark.parametrize("edit", [b"SIP/2.0/UDP 127.0.0.1:15261;branch", b"SIP/2.0/UDP [::1]:15261;branch",
                                  b"SIP/2.0/XYZ 127.0.0.1:15261;branch", b"SIP/2.0/UDP 127.0.0.1:99999;branch",
                                  b"SIP/2.0/UDP host_1:15261;branch", b"SIP/2.0/UDP 127.0.0.1:15261 ;branch",
                                  b"SIP/2.0/UDP 127.0.0.1:15261;;branch", b"SIP/2.0/UDP 127.0.0.1:;branch"])
def test_second_via_of_a_list_checked_the_same_both_ways(edit):
    data = SIPP_180.replace(b"SIP/2.0/UDP 127.0.0.1:15261;branch", edit)
    same_both_ways(data)
    same_both_ways(data.replace(b", SIP/2.0/UDP", b", SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx, SIP/2.0/UDP"))
    same_both_ways(data.replace(b"Via: SIP/2.0/UDP 127.0.0.1:15260;branch=z9hG4bK9c6d.f5f1, ",
                                b"Via: SIP/2.0/UDP 127.0.0.1:15260;branch=z9hG4bK9c6d.f5f1\r\nVia: "))


def test_via_list_mutations_same_both_ways():
    rng = random.Random(5060)
    for _ in range(3000):
        same_both_ways(_mutate(rng, SIPP_180))


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_same_result_both_paths(path):
    same_both_ways(path.read_bytes())


def test_corpus_valid_messages_mostly_take_the_c_path():
    taken = sum(scanned(p.read_bytes().lstrip(b"\r\n")) is not None
                for p in sorted((CORPUS / "valid").glob("*.sip")))
    assert taken >= 15


def test_mutations_same_result_both_paths():
    rng = random.Random(4475)
    seeds = PLAIN + [p.read_bytes() for p in FILES if p.stat().st_size < 4000]
    for _ in range(3000):
        same_both_ways(_mutate(rng, rng.choice(seeds)))


def test_targeted_edits_of_plain_messages_same_both_ways():
    # Single-byte edits at every position of the plain INVITE head: each
    # edit lands in a different check of the scanner (start line, names,
    # Via host/port/params, CSeq, Content-Length).
    base = PLAIN[0]
    head_len = base.index(b"\r\n\r\n")
    for pos in range(0, head_len, 3):
        for byte in (b" ", b":", b";", b"-", b"0", b"A", b"\t", b",", b"["):
            same_both_ways(base[:pos] + byte + base[pos + 1:])


def test_parser_works_without_the_c_module():
    # As on a machine without a compiler: the import fails, Python does it all.
    import subprocess
    import sys
    code = ("import sys; sys.modules['host.sip._speedups'] = None\n"
            "from host.sip import parser\n"
            "assert not parser.accelerated()\n"
            "m = parser.parse_message(sys.stdin.buffer.read())\n"
            "print(m.via.branch, m.cseq_method)")
    done = subprocess.run([sys.executable, "-c", code], input=PLAIN[0], capture_output=True,
                          timeout=30, cwd=pathlib.Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [b"z9hG4bK-1-1-0", b"INVITE"]


# --- responses kept as received (scanned.py) --------------------------------

def relayed(data: bytes, use_c: bool, pop_via: bool):
    """What a relay sends for `data`, read back by the reference parser."""
    parser.use_accelerator(use_c)
    try:
        m = parse_message(data)
    except BadMessage:
        return "unparsed"
    finally:
        parser.use_accelerator(True)
    if pop_via:
        popped = m.pop_first("via")
        if popped is None:
            return "no via"
    wire = m.serialize()
    parser.use_accelerator(False)
    try:
        again = parse_message(wire, stream=True)
    except BadMessage as exc:
        return ("unreadable", exc.status, popped if pop_via else None)
    finally:
        parser.use_accelerator(True)
    return (again.start_line(), again.headers, again.body, popped if pop_via else None)


def same_relayed(data: bytes) -> None:
    for pop_via in (True, False):
        assert relayed(data, True, pop_via) == relayed(data, False, pop_via), (data[:200], pop_via)


RESPONSES = [PLAIN[1], PLAIN[2], SIPP_180] + [p.read_bytes() for p in FILES
                                              if p.read_bytes().lstrip(b"\r\n").startswith(b"SIP/")]


@pytest.mark.parametrize("data", RESPONSES, ids=range(len(RESPONSES)))
def test_responses_relay_the_same_kept_as_received(data):
    same_relayed(data)


def test_response_mutations_relay_the_same_kept_as_received():
    rng = random.Random(1816)
    for _ in range(3000):
        same_relayed(_mutate(rng, rng.choice(RESPONSES)))


def test_a_relayed_sipp_response_is_spliced_not_rebuilt():
    m = parse_message(SIPP_180)
    assert m._head is not None, "kept as received"
    assert m.pop_first("via") == "SIP/2.0/UDP 127.0.0.1:15260;branch=z9hG4bK9c6d.f5f1"
    wire = m.serialize()
    assert m._head is not None, "no header list was built"
    assert wire == SIPP_180.replace(b"SIP/2.0/UDP 127.0.0.1:15260;branch=z9hG4bK9c6d.f5f1, ", b"")
    assert m.via.branch == "z9hG4bK-1-1-0"   # the next Via, once asked for


def test_a_via_line_of_its_own_is_cut_whole():
    data = SIPP_180.replace(b"z9hG4bK9c6d.f5f1, SIP", b"z9hG4bK9c6d.f5f1\r\nVia: SIP")
    m = parse_message(data)
    assert m._head is not None
    m.pop_first("via")
    assert m.serialize() == data.replace(b"Via: SIP/2.0/UDP 127.0.0.1:15260;branch=z9hG4bK9c6d.f5f1\r\n", b"")


def test_edits_beyond_the_via_leave_the_received_head():
    m = parse_message(SIPP_180)
    m.body = b"v=0\r\n"          # Content-Length no longer fits: the rows are written
    assert b"Content-Length: 5\r\n\r\nv=0\r\n" in m.serialize()
    m = parse_message(SIPP_180)
    m.headers = [h for h in m.headers if h[0] != "contact"]
    assert m._head is None and b"Contact" not in m.serialize()
    m = parse_message(SIPP_180.replace(b"Content-Length: 0\r\n", b""))
    assert m.serialize().endswith(b"\r\nContent-Length: 0\r\n\r\n")


def test_unusual_responses_get_their_header_list_at_once():
    for data in (SIPP_180.replace(b"Contact: <sip:127.0.0.1:15290;transport=UDP>",
                                  b"Contact: <sip:a@h1>, <sip:b@h2>"),             # a Contact list
                 SIPP_180.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 0"),  # repeated
                 SIPP_180.replace(b", SIP/2.0/UDP 127.0.0.1:15261", b",, SIP/2.0/UDP 127.0.0.1:15261")):
        v = scanned(data)
        assert v is None or not v[scanned_mod.REGULAR]
        try:
            m = parse_message(data)
        except BadMessage:
            continue
        assert m._head is None


FIELDS = ["To", "t", "from", "Record-Route", "contact", "Content-Length", "call-id", "CSeq",
          "x-unknown", "Via", "v", "Max-Forwards", "Server"]


@pytest.mark.parametrize("data", RESPONSES, ids=range(len(RESPONSES)))
def test_fields_of_a_kept_head_read_as_from_the_rows(data):
    try:
        reference = outcome_message(data, use_c=False)
    except BadMessage:
        return
    for name in FIELDS:
        for read in ("header", "header_values", "has_header"):
            kept = outcome_message(data, use_c=True)
            assert getattr(kept, read)(name) == getattr(reference, read)(name), (name, read)


def test_reading_a_field_keeps_the_head():
    m = parse_message(SIPP_180)
    assert m.to_tag == "2SIPpTag011" and m.header_values("record-route") == []
    assert m.has_header("contact") and not m.has_header("route")
    assert m._head is not None
    assert m.header("via") == "SIP/2.0/UDP 127.0.0.1:15260;branch=z9hG4bK9c6d.f5f1"   # needs the rows
    assert m._head is None


def outcome_message(data: bytes, use_c: bool):
    parser.use_accelerator(use_c)
    try:
        return parse_message(data)
    finally:
        parser.use_accelerator(True)
