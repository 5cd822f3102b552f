"""The shell's flood guard (host/shell/flood.py): what a blocked source gets."""

from host.shell.flood import FloodGuard
from host.sip.pike import SourceLimiter

INVITE = (b"INVITE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
          b"From: <sip:a@x>;tag=1\r\nTo: <sip:bob@example.test>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
          b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
ACK = INVITE.replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
RESPONSE = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK9\r\nContent-Length: 0\r\n\r\n"


def guard(action):
    passed, replies = [], []
    g = FloodGuard(SourceLimiter(rate=1, burst=2), action=action, retry_after=7, clock=lambda: 0.0)
    return g, g.wrap(lambda d, s: passed.append(d), lambda d, h, p: replies.append((d, h, p))), passed, replies


def test_503_with_retry_after_once_over_the_limit_and_responses_pass():
    g, on, passed, replies = guard("503")
    src = ("192.0.2.1", 5060)
    for _ in range(4):
        on(INVITE, src)
    on(ACK, src)
    for _ in range(10):
        on(RESPONSE, src)
    assert passed.count(INVITE) == 2 and passed.count(RESPONSE) == 10 and ACK not in passed
    assert len(replies) == 2            # the ACK is never answered
    data, host, port = replies[0]
    assert data.startswith(b"SIP/2.0 503 ") and b"\r\nRetry-After: 7\r\n" in data
    assert b"Call-ID: c1" in data and data.endswith(b"Content-Length: 0\r\n\r\n")
    assert (host, port) == src
    assert g.statistics()["answered_503"] == 2 and g.statistics()["dropped"] == 1


def test_drop_sends_nothing():
    g, on, passed, replies = guard("drop")
    for _ in range(5):
        on(INVITE, ("192.0.2.1", 5060))
    assert len(passed) == 2 and replies == [] and g.dropped == 3
