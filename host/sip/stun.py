"""STUN Binding on the SIP port, for NAT keep-alives (RFC 5389; RFC 5626 §4.4.2).

A UA behind NAT keeps its UDP binding open by sending STUN Binding requests
to the proxy's SIP port and learns its public address from the answer
(XOR-MAPPED-ADDRESS). Only that is implemented: a Binding request gets a
Binding success response; nothing else is ever answered, so two STUN
speakers cannot answer each other's answers in a loop.

Deliberate limits, since this usage has no credentials (RFC 5389 §14 lets a
keep-alive usage run without authentication):
- USERNAME / MESSAGE-INTEGRITY are not checked and not sent back, and
  unknown attributes are ignored rather than answered with 420: a request
  we cannot fully honour still gets the mapped address, which is all it asks.
- A FINGERPRINT that is present must be right and last, or the datagram is
  not taken for STUN (§7.3: it is how STUN is told apart from other traffic
  on a shared port); when the request had one, the response has one.

Pure: bytes in, bytes out, no sockets.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib

__all__ = ["MAGIC_COOKIE", "is_stun", "binding_response"]

MAGIC_COOKIE = 0x2112A442
HEADER = 20
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E   # "STUN", §15.5
_FAMILY_IPV4, _FAMILY_IPV6 = 0x01, 0x02
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)


def is_stun(data: bytes) -> bool:
    """Whether `data` is shaped like a STUN message (§6): the two top bits
    zero, the magic cookie, and a length that is a multiple of 4 and counts
    exactly the bytes after the 20-byte header."""
    if len(data) < HEADER or data[0] & 0xC0 or data[4:8] != _COOKIE_BYTES:
        return False
    length = (data[2] << 8) | data[3]
    return length % 4 == 0 and length == len(data) - HEADER


def _attributes(data: bytes) -> list[tuple[int, int, int]] | None:
    """(type, value start, value length) of each attribute, or None when the
    attributes do not tile the body exactly (with their 4-byte padding)."""
    out = []
    pos, end = HEADER, len(data)
    while pos < end:
        if end - pos < 4:
            return None
        kind, length = struct.unpack_from("!HH", data, pos)
        start = pos + 4
        pos = start + ((length + 3) & ~3)
        if pos > end:
            return None
        out.append((kind, start, length))
    return out


def _fingerprint(message: bytes) -> bytes:
    """FINGERPRINT value over `message`: everything before the FINGERPRINT
    attribute, whose header length already counts that attribute's 8 bytes
    (§15.5)."""
    return struct.pack("!I", (zlib.crc32(message) ^ FINGERPRINT_XOR) & 0xFFFFFFFF)


def _has_valid_fingerprint(data: bytes, attrs: list[tuple[int, int, int]]) -> bool | None:
    """True/False for a present FINGERPRINT that is right/wrong (or not
    last), None when there is none."""
    where = [i for i, (kind, _, _) in enumerate(attrs) if kind == FINGERPRINT]
    if not where:
        return None
    i = where[0]
    kind, start, length = attrs[i]
    if i != len(attrs) - 1 or length != 4:
        return False
    return data[start:start + 4] == _fingerprint(data[:start - 4])


def _xor_mapped_address(source: tuple[str, int], txid: bytes) -> bytes | None:
    try:
        addr = ipaddress.ip_address(source[0].strip("[]").split("%")[0])
    except ValueError:
        return None
    port = source[1] ^ (MAGIC_COOKIE >> 16)
    raw = addr.packed
    if addr.version == 4:
        family, key = _FAMILY_IPV4, _COOKIE_BYTES
    else:
        family, key = _FAMILY_IPV6, _COOKIE_BYTES + txid
    xored = bytes(a ^ b for a, b in zip(raw, key))
    value = struct.pack("!BBH", 0, family, port) + xored
    return struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value


def binding_response(data: bytes, source: tuple[str, int]) -> bytes | None:
    """The Binding success response to a Binding request from `source`
    (ip, port), or None for anything else: other methods or classes
    (responses and indications are never answered), malformed messages, a
    wrong FINGERPRINT, or a source that is not an IP address."""
    if not is_stun(data):
        return None
    kind = (data[0] << 8) | data[1]
    if kind != BINDING_REQUEST:
        return None
    attrs = _attributes(data)
    if attrs is None:
        return None
    fingerprint = _has_valid_fingerprint(data, attrs)
    if fingerprint is False:
        return None
    txid = data[8:20]
    mapped = _xor_mapped_address(source, txid)
    if mapped is None:
        return None
    body_len = len(mapped) + (8 if fingerprint else 0)
    message = struct.pack("!HH", BINDING_SUCCESS, body_len) + _COOKIE_BYTES + txid + mapped
    if fingerprint:
        message += struct.pack("!HH", FINGERPRINT, 4) + _fingerprint(message)
    return message
