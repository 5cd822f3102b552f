"""Messages the proxy writes itself (host/sip/answers.py)."""

from host.sip.answers import ack_for, cancel_for, salvage_reply
from host.sip.parser import parse_message

INVITE = (b"INVITE sip:bob@127.0.0.1:5090 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ours\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-uac;received=127.0.0.1;rport=5061\r\n"
          b"Route: <sip:next.example;lr>\r\nMax-Forwards: 69\r\n"
          b"From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\n"
          b"Call-ID: c-1\r\nCSeq: 7 INVITE\r\nContact: <sip:alice@127.0.0.1:5061>\r\n"
          b"Content-Length: 0\r\n\r\n")


def test_cancel_keeps_the_branch_route_and_cseq_number():
    cancel = parse_message(cancel_for(parse_message(INVITE)).serialize())
    assert cancel.method == "CANCEL" and cancel.uri == "sip:bob@127.0.0.1:5090"
    assert cancel.header_values("via") == ["SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ours"]
    assert cancel.header("route") == "<sip:next.example;lr>"
    assert (cancel.cseq, cancel.cseq_method, cancel.call_id) == (7, "CANCEL", "c-1")
    assert cancel.header("contact") is None


def test_ack_for_a_failure_takes_the_to_tag_of_the_response():
    inv = parse_message(INVITE)
    busy = parse_message(INVITE.replace(b"INVITE sip:bob@127.0.0.1:5090 SIP/2.0", b"SIP/2.0 486 Busy Here")
                         .replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=b"))
    ack = parse_message(ack_for(inv, busy).serialize())
    assert ack.method == "ACK" and ack.to_tag == "b" and ack.from_tag == "a"
    assert (ack.cseq, ack.cseq_method) == (7, "ACK")
    assert len(ack.header_values("via")) == 1 and ack.header("route") == "<sip:next.example;lr>"


def test_salvage_reply_answers_a_request_with_one_broken_header():
    broken = INVITE.replace(b"Content-Length: 0", b"Content-Length: x")
    reply, via = salvage_reply(broken, 400, "Bad Request")
    assert reply.startswith(b"SIP/2.0 400 Bad Request\r\n")
    assert b"Call-ID: c-1" in reply and b"CSeq: 7 INVITE" in reply and b"Contact" not in reply
    assert via.branch == "z9hG4bK-ours"
    assert reply.endswith(b"Content-Length: 0\r\n\r\n")


def test_salvage_reply_gives_up_without_a_via():
    assert salvage_reply(b"INVITE sip:b@x SIP/2.0\r\nCall-ID: 1\r\n\r\n", 400, "Bad Request") is None
    assert salvage_reply(b"INVITE sip:b@x SIP/2.0\r\nVia: garbage\r\n\r\n", 400, "Bad Request") is None
