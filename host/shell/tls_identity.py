"""Who a TLS next hop is: certificate pins, and whether a certificate names
a SIP domain. Pure functions over certificates as the `ssl` module gives
them (DER bytes, or `getpeercert()`'s dict); host/shell/tls.py applies them.

Pins (`--tls-pin HOST=sha256:HEX`, repeatable): the SHA-256 fingerprint of
the whole certificate (DER), as `openssl x509 -noout -fingerprint -sha256`
prints it (colons and case do not matter). The certificate rather than its
public key (SPKI) because that is what operators can read off a trunk's
certificate with one standard command; the price is a new pin when the
trunk renews its certificate, so several pins per host are allowed (give
the flag once per certificate) to roll over without downtime. A pinned host
is accepted on its pin alone: the pin names the one certificate we accept,
so the CA chain and the name are not checked for it (a self-signed trunk
works). HOST is the name the next hop is reached by: the domain of the
located URI (RFC 5922 §4), or the IP address when the URI names one.

Names (RFC 5922 §7.2, as OpenSSL checks them in the handshake): the
certificate's subjectAltName DNS entries, compared without case, a `*`
allowed as the whole left-most label; IP entries for an address. Used when
a connection verified for one name is about to carry a request for another.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

PIN_FLAG = "--tls-pin"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class PinError(ValueError):
    """A `--tls-pin` value that cannot be used; the message says why."""


@dataclass(frozen=True)
class Pin:
    host: str
    fingerprint: bytes      # SHA-256 of the certificate's DER


def normalize_host(host: str) -> str:
    """A next hop's name as pins and certificates are compared: no case,
    no trailing dot, no IPv6 brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


def parse_pin(text: str) -> Pin:
    """`HOST=sha256:HEX` -> Pin; raises PinError."""
    host, sep, value = text.partition("=")
    host = normalize_host(host)
    if not sep or not host:
        raise PinError(f"{PIN_FLAG} {text!r}: expected HOST=sha256:HEX")
    algorithm, sep, digest = value.strip().partition(":")
    if not sep or algorithm.lower() != "sha256":
        raise PinError(f"{PIN_FLAG} {text!r}: only sha256:HEX fingerprints are supported")
    digest = digest.replace(":", "").lower()
    if not _HEX64.fullmatch(digest):
        raise PinError(f"{PIN_FLAG} {text!r}: a SHA-256 fingerprint is 64 hex digits "
                       f"(colons allowed), got {len(digest)} characters")
    return Pin(host, bytes.fromhex(digest))


def fingerprint(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


def show(digest: bytes) -> str:
    """A fingerprint as logs and `--tls-pin` write it."""
    return "sha256:" + digest.hex()


class PinSet:
    """The pins by host; a host may have several (certificate rollover)."""

    def __init__(self, pins=()):
        self._by_host: dict[str, frozenset[bytes]] = {}
        for pin in pins:
            self._by_host[pin.host] = self._by_host.get(pin.host, frozenset()) | {pin.fingerprint}

    def __bool__(self) -> bool:
        return bool(self._by_host)

    def __contains__(self, host) -> bool:
        return host is not None and normalize_host(host) in self._by_host

    def pinned(self, host: str) -> frozenset[bytes]:
        return self._by_host.get(normalize_host(host), frozenset())

    def matches(self, host: str, der: bytes | None) -> bool:
        return der is not None and fingerprint(der) in self.pinned(host)


def names_domain(cert: dict | None, name: str) -> bool:
    """Whether a verified peer certificate (`getpeercert()`: empty when it
    was not verified) names `name` in its subjectAltName."""
    if not cert:
        return False
    name = normalize_host(name)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    for kind, value in cert.get("subjectAltName", ()):
        if address is not None:
            if kind == "IP Address" and _same_address(value, address):
                return True
        elif kind == "DNS" and _dns_match(value, name):
            return True
    return False


def _same_address(value: str, address) -> bool:
    try:
        return ipaddress.ip_address(value.strip()) == address
    except ValueError:
        return False


def _dns_match(pattern: str, name: str) -> bool:
    pattern = normalize_host(pattern)
    if pattern == name:
        return True
    # A wildcard only as the whole left-most label, over exactly one label
    # (OpenSSL's check with partial wildcards off, which Python sets).
    if not pattern.startswith("*.") or "*" in pattern[2:]:
        return False
    head, dot, rest = name.partition(".")
    return bool(head) and bool(dot) and rest == pattern[2:] and "." in rest
