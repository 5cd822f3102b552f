"""STUN Binding for keep-alives (host/sip/stun.py), with the RFC 5769 vectors."""

import struct

import pytest

from host.sip import stun

# RFC 5769 §2.1 Sample Request (SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
# MESSAGE-INTEGRITY, FINGERPRINT).
RFC5769_REQUEST = bytes.fromhex(
    "00010058" "2112a442" "b7e7a701bc34d686fa87dfae"
    "80220010" "5354554e" "20746573" "7420636c" "69656e74"
    "00240004" "6e0001ff"
    "80290008" "932ff9b1" "51263b36"
    "00060009" "6576746a" "3a683676" "59202020"
    "00080014" "9aeaa70c" "bfd8cb56" "781ef2b5" "b2d3f249" "c1b571a2"
    "80280004" "e57a3bcf")
# RFC 5769 §2.2 Sample IPv4 Response: mapped address 192.0.2.1 port 32853.
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c" "2112a442" "b7e7a701bc34d686fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"
    "00200008" "0001a147" "e112a643"
    "00080014" "2b91f599" "fd9e90c3" "8c7489f9" "2af9ba53" "f06be7d7"
    "80280004" "c07d4c96")
# RFC 5769 §2.3 Sample IPv6 Response: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "01010048" "2112a442" "b7e7a701bc34d686fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"
    "00200014" "0002a147" "0113a9fa" "a5d3f179" "bc25f4b5" "bed2b9d9"
    "00080014" "a382954e" "4be67bf1" "1784c97c" "8292c275" "bfe3ed41"
    "80280004" "c8fb0b4c")
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")


def request(kind=0x0001, attrs=b"", txid=TXID, fingerprint=False):
    length = len(attrs) + (8 if fingerprint else 0)
    msg = struct.pack("!HHI", kind, length, stun.MAGIC_COOKIE) + txid + attrs
    if fingerprint:
        msg += struct.pack("!HH", 0x8028, 4) + stun._fingerprint(msg)
    return msg


def attributes(msg):
    out, pos = {}, 20
    while pos < len(msg):
        kind, length = struct.unpack_from("!HH", msg, pos)
        out[kind] = msg[pos + 4:pos + 4 + length]
        pos += 4 + ((length + 3) & ~3)
    return out


def test_rfc5769_vectors_are_stun_and_their_fingerprints_check():
    for vector in (RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE):
        assert stun.is_stun(vector)
        assert vector[-4:] == stun._fingerprint(vector[:-8])


@pytest.mark.parametrize("vector, source", [
    (RFC5769_IPV4_RESPONSE, ("192.0.2.1", 32853)),
    (RFC5769_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
])
def test_xor_mapped_address_matches_rfc5769(vector, source):
    answer = stun.binding_response(RFC5769_REQUEST, source)
    assert attributes(answer)[0x0020] == attributes(vector)[0x0020]


def test_rfc5769_request_answered_with_txid_and_fingerprint():
    answer = stun.binding_response(RFC5769_REQUEST, ("192.0.2.1", 32853))
    assert answer[:2] == b"\x01\x01"
    assert answer[8:20] == TXID
    assert stun.is_stun(answer)
    assert list(attributes(answer)) == [0x0020, 0x8028]
    assert answer[-4:] == stun._fingerprint(answer[:-8])
    # An answer is never answered: no loop between two STUN speakers.
    assert stun.binding_response(answer, ("192.0.2.1", 32853)) is None


def test_plain_request_gets_plain_answer():
    answer = stun.binding_response(request(), ("10.0.0.7", 5060))
    assert answer is not None and len(answer) == 32
    assert struct.unpack_from("!HH", answer) == (0x0101, 12)
    assert list(attributes(answer)) == [0x0020]


def test_bracketed_ipv6_source_accepted():
    answer = stun.binding_response(request(), ("[::1]", 5060))
    assert len(attributes(answer)[0x0020]) == 20


@pytest.mark.parametrize("name, data", [
    ("empty", b""),
    ("sip", b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"),
    ("crlf keep-alive", b"\r\n\r\n"),
    ("short header", request()[:19]),
    ("top bits set", b"\x40" + request()[1:]),
    ("wrong cookie", request()[:4] + b"\x00\x00\x00\x00" + request()[8:]),
    ("length not multiple of 4", request()[:2] + b"\x00\x03" + request()[4:] + b"abc"),
    ("length larger than datagram", request()[:2] + b"\x00\x08" + request()[4:]),
])
def test_not_stun(name, data):
    assert not stun.is_stun(data)
    assert stun.binding_response(data, ("10.0.0.1", 1)) is None


@pytest.mark.parametrize("name, data", [
    ("binding success response", request(kind=0x0101)),
    ("binding error response", request(kind=0x0111)),
    ("binding indication", request(kind=0x0011)),
    ("allocate request (TURN)", request(kind=0x0003)),
    ("attribute overruns body", request(attrs=b"\x80\x22\x00\x08abcd")),
    ("bad fingerprint", RFC5769_REQUEST[:-1] + b"\x00"),
    ("fingerprint not last", request(attrs=RFC5769_REQUEST[-8:] + b"\x80\x22\x00\x00")),
])
def test_not_answered(name, data):
    assert stun.binding_response(data, ("10.0.0.1", 1)) is None


def test_unknown_attributes_ignored():
    data = request(attrs=b"\x7f\x00\x00\x03abc\x00", fingerprint=True)
    answer = stun.binding_response(data, ("10.0.0.1", 1))
    assert list(attributes(answer)) == [0x0020, 0x8028]


def test_non_ip_source_not_answered():
    assert stun.binding_response(request(), ("example.com", 1)) is None
