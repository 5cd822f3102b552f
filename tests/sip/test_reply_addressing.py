"""Where the proxy core sends answers (RFC 3261 §18.2.1-18.2.2, RFC 3581):
always to the request's real source, on the transport it arrived on — never
to a host a Via names, a forged `received`, or a Via a downstream hop rewrote.
Sans-IO: each case checks every Transmit the core returns."""

import pytest

from host.sip.decision import Decision
from host.sip.proxy import REPLY_MARGIN, ProxyCore
from host.sip.actions import Consult, Transmit

LISTEN = [("udp", "127.0.0.1", 5060), ("tcp", "127.0.0.1", 5060)]
SRC = ("127.0.0.1", 40000)
VICTIM = "192.0.2.53"


def core(**kw):
    ids = iter(range(1, 10**6))
    return ProxyCore(LISTEN, new_id=lambda: f"id{next(ids)}", **kw)


def request(via=f"SIP/2.0/UDP {VICTIM};branch=z9hG4bKatk1", *, method="OPTIONS",
            ruri="sip:bob@127.0.0.1:5090", version="SIP/2.0", extra=(), drop=(), cseq=None,
            body=b"", length=None):
    headers = [("Via", via), ("From", "<sip:a@example.com>;tag=1"), ("To", "<sip:bob@example.com>"),
               ("Call-ID", "atk-1"), ("CSeq", cseq or f"1 {method}"), ("Max-Forwards", "70"),
               *extra, ("Content-Length", str(len(body) if length is None else length))]
    lines = [f"{method} {ruri} {version}"] + [f"{k}: {v}" for k, v in headers if k not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def transmits(actions):
    return [a for a in actions if isinstance(a, Transmit)]


def status_of(t: Transmit) -> int:
    return int(t.data.split(b" ", 2)[1])


MALFORMED = {
    "missing Call-ID": dict(drop=("Call-ID",)),
    "bad CSeq": dict(cseq="x OPTIONS"),
    "Content-Length larger than the body": dict(length=40),
    "SIP/7.0": dict(version="SIP/7.0"),
    "unknown URI scheme": dict(ruri="gopher:bob@127.0.0.1"),
    "Proxy-Require": dict(extra=(("Proxy-Require", "foo"),)),
}
EXPECTED = {"missing Call-ID": 400, "bad CSeq": 400, "Content-Length larger than the body": 400,
            "SIP/7.0": 505, "unknown URI scheme": 416, "Proxy-Require": 420}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("via", [f"SIP/2.0/UDP {VICTIM}", f"SIP/2.0/UDP {VICTIM}:5099;branch=z9hG4bKx",
                                 "SIP/2.0/UDP victim.example.com;branch=z9hG4bKx",
                                 f"SIP/2.0/TCP {VICTIM};branch=z9hG4bKx"])
def test_refused_requests_are_answered_at_their_source_only(case, via):
    out = transmits(core().receive(request(via, **MALFORMED[case]), "udp", SRC))
    assert [(t.transport, t.host, t.port, status_of(t)) for t in out] == [("udp", *SRC, EXPECTED[case])]


def test_forged_received_is_overwritten_and_the_answer_goes_to_the_source():
    via = f"SIP/2.0/UDP 127.0.0.1:5099;received={VICTIM};branch=z9hG4bKo1"
    out = transmits(core().receive(request(via, ruri="sip:127.0.0.1:5060"), "udp", SRC))
    assert [(t.transport, t.host, t.port, status_of(t)) for t in out] == [("udp", "127.0.0.1", 5099, 200)]
    assert VICTIM.encode() not in out[0].data


def test_rport_sends_the_answer_to_the_source_port():
    via = "SIP/2.0/UDP 127.0.0.1:5099;rport;branch=z9hG4bKo2"
    out = transmits(core().receive(request(via, ruri="sip:127.0.0.1:5060"), "udp", SRC))
    assert [(t.host, t.port) for t in out] == [SRC]
    assert b"rport=40000" in out[0].data


def test_udp_request_with_a_tcp_via_is_answered_over_udp():
    via = f"SIP/2.0/TCP {VICTIM}:5060;branch=z9hG4bKo3"
    out = transmits(core().receive(request(via, ruri="sip:127.0.0.1:5060"), "udp", SRC))
    assert [(t.transport, t.host, status_of(t)) for t in out] == [("udp", "127.0.0.1", 200)]


def test_stream_answers_use_the_connection_and_fall_back_to_the_source_address():
    via = f"SIP/2.0/TCP {VICTIM}:5077;branch=z9hG4bKo4"
    out = transmits(core().receive(request(via, ruri="sip:127.0.0.1:5060"), "tcp", SRC))
    assert [(t.transport, t.host, t.port, t.alt) for t in out] == [("tcp", *SRC, ("127.0.0.1", 5077))]


def test_oversized_request_is_not_reflected():
    vias = ", ".join(f"SIP/2.0/UDP {VICTIM}:{5000 + i}" for i in range(1800))
    data = request(vias, method="REGISTER", ruri="sip:127.0.0.1")
    assert 50_000 < len(data) < 65_535
    out = transmits(core().receive(data, "udp", SRC))
    assert all((t.host, t.port) == SRC for t in out)
    assert [status_of(t) for t in out] == [513]
    assert len(out[0].data) < 1024


@pytest.mark.parametrize("case", sorted(MALFORMED) + ["oversized", "valid OPTIONS", "retransmission"])
def test_no_answer_is_larger_than_the_request_plus_a_margin(case):
    c = core()
    if case == "oversized":
        data = request(", ".join(f"SIP/2.0/UDP 10.0.0.{i % 250}" for i in range(300)))
    elif case in MALFORMED:
        data = request(**MALFORMED[case])
    else:
        data = request("SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKsz", ruri="sip:127.0.0.1:5060")
    out = transmits(c.receive(data, "udp", SRC))
    if case == "retransmission":
        out = transmits(c.receive(data, "udp", SRC))
    assert out and all(len(t.data) <= len(data) + REPLY_MARGIN for t in out)


def test_unreadable_top_via_gets_no_answer_at_all():
    for via in ("SIP/2.0/UDP", "junk", f"SIP/2.0/UDP {VICTIM}:99999"):
        assert transmits(core().receive(request(via), "udp", SRC)) == []


@pytest.mark.parametrize("via", ["SIP/2.0/UDP 192.0.2.15;;,;,,", "SIP/2.0/UDP 192.0.2.15;branch=z9hG4bK1;;x",
                                 "SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK1,,SIP/2.0/UDP 10.0.0.1",
                                 "SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK1, junk"])
def test_broken_via_lists_get_400_and_are_never_relayed(via):
    c = core(relay_to="sip:127.0.0.1:5090")
    out = transmits(c.receive(request(via, method="INVITE"), "udp", SRC))
    assert [(t.host, t.port, status_of(t)) for t in out] == [(*SRC, 400)]


def test_relayed_answers_go_to_the_caller_even_if_downstream_rewrites_its_via():
    c = core()
    actions = c.receive(request("SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKcall1", method="INVITE"),
                        "udp", SRC)
    consult = next(a for a in actions if isinstance(a, Consult))
    relayed = transmits(c.decided(consult.token, Decision()))
    assert [(t.host, t.port) for t in relayed] == [("127.0.0.1", 5090)]
    lines = relayed[0].data.decode().split("\r\n")
    ours = next(l for l in lines if l.startswith("Via: SIP/2.0/UDP 127.0.0.1:5060"))
    forged = f"Via: SIP/2.0/UDP {VICTIM}:5099;received={VICTIM};branch=z9hG4bKcall1"
    head = [l for l in lines[1:] if l.split(":")[0] in ("From", "To", "Call-ID", "CSeq")]
    resp = "\r\n".join(["SIP/2.0 180 Ringing", ours, forged, *head, "Content-Length: 0", "", ""])
    out = transmits(c.receive(resp.encode(), "udp", ("127.0.0.1", 5090)))
    assert [(t.host, t.port, status_of(t)) for t in out] == [("127.0.0.1", 5099, 180)]
