"""host/fleet/ownership.py: which worker owns a message, and the frames."""

from __future__ import annotations

import zlib

import pytest

from host.fleet import ownership as o
from host.sip.keepalive import KeepaliveSchedule

INVITE = (b"INVITE sip:bob@example.com SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
          b"CALL-id:  a84b4c76e66710@pc33 \r\n"
          b"CSeq: 1 INVITE\r\n\r\n"
          b"v=0\r\ni: not-a-header\r\n")


def test_the_call_id_is_found_whatever_its_case_and_spacing():
    assert o.call_id_of(INVITE) == b"a84b4c76e66710@pc33"


def test_the_compact_form_counts_and_the_body_does_not():
    compact = INVITE.replace(b"CALL-id:  a84b4c76e66710@pc33 ", b"i:xyz")
    assert o.call_id_of(compact) == b"xyz"
    no_header = INVITE.replace(b"CALL-id:  a84b4c76e66710@pc33 \r\n", b"")
    assert o.call_id_of(no_header) is None   # the body's "i:" line is not a header
    assert o.owner_of(no_header, 4) is None


def test_every_message_of_a_call_has_one_owner_spread_over_the_workers():
    owners = {o.owner_of(INVITE.replace(b"a84b4c76e66710@pc33", f"call-{n}".encode()), 3)
              for n in range(300)}
    assert owners == {0, 1, 2}
    response = b"SIP/2.0 200 OK\r\nCall-ID: a84b4c76e66710@pc33\r\nCSeq: 1 INVITE\r\n\r\n"
    assert o.owner_of(response, 3) == o.owner_of(INVITE, 3) == zlib.crc32(b"a84b4c76e66710@pc33") % 3


@pytest.mark.parametrize("worker", [0, 1, 5])
def test_a_keepalive_ping_comes_back_to_the_worker_that_sent_it(worker):
    schedule = KeepaliveSchedule(25, 3, clock=lambda: 0.0, local=("udp", "127.0.0.1", 5060),
                                 from_uri="sip:ka@127.0.0.1", salt=o.keepalive_salt(worker) + "beef")
    schedule.add(("udp", "192.0.2.9", 4000), "sip:a@x", "<sip:a@192.0.2.9:4000>")
    (ping,) = schedule.due(1000.0)
    data = ping.request
    assert o.owner_of(data, 8) == worker
    answer = b"SIP/2.0 200 OK\r\n" + data.split(b"\r\n", 1)[1]
    assert o.owner_of(answer, 8) == worker


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls", "ws", "wss"])
def test_frames_carry_kind_transport_source_and_bytes(transport):
    datagram = o.frame(o.MESSAGE, transport, "::1", 5062, INVITE)
    assert o.unframe(datagram) == (o.MESSAGE, transport, "::1", 5062, INVITE)
    assert o.unframe(o.frame(o.HOLDS, transport, "192.0.2.1", 40000)) == (o.HOLDS, transport, "192.0.2.1", 40000, b"")
    assert o.unframe(o.frame(o.HELLO)) == (o.HELLO, "udp", "", 0, b"")


@pytest.mark.parametrize("bad", [b"", b"M\x00", b"M\x07\x00\x00\x00", b"M\x00\x09\x13\xc4abc"])
def test_a_malformed_frame_is_refused(bad):
    with pytest.raises(ValueError):
        o.unframe(bad)
