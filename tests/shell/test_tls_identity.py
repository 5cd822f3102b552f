"""Certificate pins and certificate names (host/shell/tls_identity.py),
without sockets: parsing `--tls-pin`, matching a certificate's DER against
the pins of a host, and the subjectAltName check used on connection reuse."""

import hashlib

import pytest

from host.shell.tls_identity import (Pin, PinError, PinSet, fingerprint, names_domain, normalize_host,
                                     parse_pin, show)

DER_A = b"\x30\x82certificate A"
DER_B = b"\x30\x82certificate B"
HEX_A = hashlib.sha256(DER_A).hexdigest()


def test_a_pin_is_host_equals_sha256_hex_in_any_case_with_or_without_colons():
    colons = ":".join(HEX_A[i:i + 2] for i in range(0, 64, 2)).upper()
    for text in (f"trunk.example=sha256:{HEX_A}", f"TRUNK.example.=SHA256:{colons}",
                 f" trunk.example = sha256:{HEX_A} "):
        assert parse_pin(text) == Pin("trunk.example", bytes.fromhex(HEX_A)), text
    assert parse_pin(f"[::1]=sha256:{HEX_A}").host == "::1"


@pytest.mark.parametrize("text, why", [
    ("trunk.example", "expected HOST=sha256:HEX"),
    (f"=sha256:{HEX_A}", "expected HOST=sha256:HEX"),
    (f"trunk.example={HEX_A}", "only sha256:HEX"),
    (f"trunk.example=sha1:{HEX_A[:40]}", "only sha256:HEX"),
    (f"trunk.example=sha256:{HEX_A[:-2]}", "64 hex digits .*got 62"),
    (f"trunk.example=sha256:{HEX_A[:-1]}g", "64 hex digits"),
])
def test_a_bad_pin_is_refused_with_the_flag_and_the_reason(text, why):
    with pytest.raises(PinError, match=f"--tls-pin .*{why}"):
        parse_pin(text)


def test_a_pinned_host_accepts_only_its_certificates_and_several_pins_allow_a_rollover():
    pins = PinSet([Pin("trunk.example", fingerprint(DER_A)), Pin("trunk.example", fingerprint(DER_B)),
                   Pin("10.0.0.1", fingerprint(DER_A))])
    assert pins.matches("trunk.example", DER_A) and pins.matches("Trunk.Example.", DER_B)
    assert not pins.matches("trunk.example", b"another certificate")
    assert not pins.matches("trunk.example", None)          # no certificate at all
    assert pins.matches("10.0.0.1", DER_A) and not pins.matches("10.0.0.1", DER_B)
    assert not pins.matches("other.example", DER_A)         # not pinned: not accepted by a pin
    assert "trunk.example" in pins and "other.example" not in pins and None not in pins
    assert not PinSet() and pins


def test_fingerprints_are_shown_as_the_flag_takes_them():
    assert show(fingerprint(DER_A)) == f"sha256:{HEX_A}"
    assert parse_pin(f"h={show(fingerprint(DER_A))}").fingerprint == fingerprint(DER_A)


CERT = {"subject": ((("commonName", "ignored.example"),),),
        "subjectAltName": (("DNS", "sip.example.test"), ("DNS", "*.trunks.example"),
                           ("IP Address", "192.0.2.7"), ("IP Address", "2001:DB8:0:0:0:0:0:1"))}


@pytest.mark.parametrize("name, named", [
    ("sip.example.test", True), ("SIP.Example.Test.", True),
    ("example.test", False), ("other.sip.example.test", False),
    ("a.trunks.example", True), ("trunks.example", False), ("a.b.trunks.example", False),
    ("192.0.2.7", True), ("192.0.2.8", False), ("[2001:db8::1]", True),
    ("ignored.example", False),            # the subject's CN is not a name (RFC 6125 §6.4.4)
])
def test_a_certificate_names_a_domain_by_its_subject_alt_names(name, named):
    assert names_domain(CERT, name) is named


def test_an_unverified_certificate_names_nothing_and_bad_wildcards_match_nothing():
    assert not names_domain({}, "sip.example.test")          # getpeercert() of an unverified peer
    assert not names_domain(None, "sip.example.test")
    odd = {"subjectAltName": (("DNS", "*.com"), ("DNS", "a*.example"), ("DNS", "*.*.example"),
                              ("IP Address", "not an address"))}
    for name in ("x.com", "ab.example", "a.b.example", "192.0.2.1"):
        assert not names_domain(odd, name), name


def test_hosts_are_compared_without_case_dots_or_brackets():
    assert normalize_host(" [2001:DB8::1] ") == "2001:db8::1"
    assert normalize_host("Sip.Example.") == "sip.example"
