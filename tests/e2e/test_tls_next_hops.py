"""End to end: who a TLS next hop must be, with two (or three) babelsip
instances, sipp on both ends over UDP, and the test's own DNS server
(tests/e2e/dns_server.py) on a loopback port.

- A next hop found through NAPTR/SRV is verified for the SIP domain of the
  URI (RFC 5922 §4), not for its address: B's certificate names only
  `example.test`, and the calls go through; a target whose certificate
  (signed by the same trusted CA) names another domain is failed over
  (§4.3), and when it is the only one the request gets 503 (500 upstream),
  with a log line naming the domain that was checked.
- `--tls-pin` accepts a self-signed next hop by its fingerprint; another
  certificate than the pinned one gets 503 (500 upstream) and a log line with
  both fingerprints.
- Mutual TLS: B requires client certificates; A offering one gets through,
  an A without one is refused.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e import routes_support as rs
from tests.e2e import sipp
from tests.e2e.dns_server import ZoneServer
from tests.shell.tls_certs import issue, make_pki, openssl_available, openssl_fingerprint, self_signed

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None, reason="sipp is not installed (Debian package sip-tester)"),
    pytest.mark.skipif(not openssl_available(), reason="the openssl command is not installed"),
]

CALLS = 5
DOMAIN = "example.test"


@pytest.fixture(scope="module")
def pkis(tmp_path_factory):
    """A's CA (A's certificate names 127.0.0.1) and B's CA (B's names the
    SIP domain only), and a second certificate of B's CA for another domain."""
    root = tmp_path_factory.mktemp("pkis")
    a, b = make_pki(root / "a", name="A's CA"), make_pki(root / "b", name="B's CA", san=f"DNS:{DOMAIN}")
    wrong = issue(b, root / "wrong", san="DNS:elsewhere.test")
    return a, b, wrong


def babelsip(udp: int, tls: int, relay_to: str, cert, key, *extra: str):
    return sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{udp}", "--listen", f"tls:127.0.0.1:{tls}",
                                "--relay-to", relay_to, "--tls-cert", str(cert), "--tls-key", str(key),
                                "--ctl-socket", "none", *extra])


def tls_zone(*targets: tuple[int, int, str]) -> dict:
    """NAPTR of the domain -> SIPS+D2T; SRV (priority, port, target); every target 127.0.0.1."""
    zone = {(DOMAIN, "NAPTR"): (300, [f'10 10 "s" "SIPS+D2T" "" _sips._tcp.{DOMAIN}.']),
            (f"_sips._tcp.{DOMAIN}", "SRV"): (300, [f"{p} 0 {port} {t}." for p, port, t in targets])}
    for _, _, target in targets:
        zone[(target, "A")] = (300, ["127.0.0.1"])
    return zone


def calls_through(workdir: Path, a_udp: int, uas_port: int, calls: int = CALLS) -> sipp.SippResult:
    with sipp.start_sipp_server(str(rs.quick_uas_rr(workdir)), workdir, port=uas_port, timeout=30):
        return sipp.run_sipp("uac_rr", workdir, port=sipp.free_port(), remote=(sipp.LOCALHOST, a_udp),
                             calls=calls, rate=10, timeout=20)


def one_options(a_udp: int, uas_port: int) -> tuple[list[int], float]:
    """An OPTIONS through A: the status codes back and how long it took."""
    local = sipp.free_port()
    request = sipp.options_request("127.0.0.1", uas_port, local).replace(
        f"OPTIONS sip:127.0.0.1:{uas_port}".encode(), f"OPTIONS sip:bob@127.0.0.1:{uas_port}".encode())
    started = time.monotonic()
    replies = sipp.udp_exchange(a_udp, [request], local_port=local, settle=1.0, deadline=10)
    return [sipp.status_code(r) for r in replies], time.monotonic() - started


def test_a_located_tls_next_hop_is_verified_for_the_uri_domain(tmp_path, pkis):
    a_pki, b_pki, _ = pkis
    uas = sipp.free_port()
    a_udp, a_tls, b_udp, b_tls = (sipp.free_port() for _ in range(4))
    with ZoneServer(tls_zone((10, b_tls, f"b.{DOMAIN}"))) as dns_server, \
            babelsip(b_udp, b_tls, f"sip:127.0.0.1:{uas}", b_pki.cert, b_pki.key, "--tls-ca", str(a_pki.ca)) as b, \
            babelsip(a_udp, a_tls, f"sip:{DOMAIN}", a_pki.cert, a_pki.key, "--tls-ca", str(b_pki.ca),
                     "--dns-server", f"127.0.0.1:{dns_server.address[1]}") as a:
        result = calls_through(tmp_path, a_udp, uas)
        why = result.summary() + a.log()[-3000:] + b.log()[-1500:]
        # B's certificate names example.test and not 127.0.0.1: checked
        # against the address (as before RFC 5922), no call would pass.
        assert result.successful == CALLS and result.failed == 0, why
    assert "handshake" not in a.log() + b.log(), why


def test_a_target_whose_certificate_names_another_domain_is_failed_over(tmp_path, pkis):
    a_pki, b_pki, (wrong_cert, wrong_key) = pkis
    uas = sipp.free_port()
    a_udp, a_tls, b_udp, b_tls, w_udp, w_tls = (sipp.free_port() for _ in range(6))
    zone = tls_zone((10, w_tls, f"w.{DOMAIN}"), (20, b_tls, f"b.{DOMAIN}"))
    with ZoneServer(zone) as dns_server, \
            babelsip(w_udp, w_tls, f"sip:127.0.0.1:{uas}", wrong_cert, wrong_key) as w, \
            babelsip(b_udp, b_tls, f"sip:127.0.0.1:{uas}", b_pki.cert, b_pki.key, "--tls-ca", str(a_pki.ca)), \
            babelsip(a_udp, a_tls, f"sip:{DOMAIN}", a_pki.cert, a_pki.key, "--tls-ca", str(b_pki.ca),
                     "--dns-server", f"127.0.0.1:{dns_server.address[1]}") as a:
        result = calls_through(tmp_path, a_udp, uas)
        log = a.log()
    why = result.summary() + log[-3000:]
    assert result.successful == CALLS and result.failed == 0, why
    # Every call tried the priority-10 target first and was refused there.
    assert f"tls handshake with 127.0.0.1:{w_tls} (verifying {DOMAIN}) failed" in log, why
    assert "certificate verify failed" in log, why
    assert "INVITE" not in w.log()


def test_the_only_target_naming_another_domain_gets_503_at_once(tmp_path, pkis):
    a_pki, b_pki, (wrong_cert, wrong_key) = pkis
    uas = sipp.free_port()
    a_udp, a_tls, w_udp, w_tls = (sipp.free_port() for _ in range(4))
    with ZoneServer(tls_zone((10, w_tls, f"w.{DOMAIN}"))) as dns_server, \
            babelsip(w_udp, w_tls, f"sip:127.0.0.1:{uas}", wrong_cert, wrong_key) as w, \
            babelsip(a_udp, a_tls, f"sip:{DOMAIN}", a_pki.cert, a_pki.key, "--tls-ca", str(b_pki.ca),
                     "--dns-server", f"127.0.0.1:{dns_server.address[1]}") as a:
        codes, took = one_options(a_udp, uas)
        log = a.log()
    # The branch's 503 reaches the caller as 500 (§16.7), at once.
    assert codes == [500], log[-3000:]
    assert took < 5
    assert f"(verifying {DOMAIN}) failed" in log and "OPTIONS" not in w.log()


def test_a_pinned_self_signed_next_hop_is_accepted_and_another_certificate_refused(tmp_path, pkis):
    a_pki, _, _ = pkis
    trunk_cert, trunk_key = self_signed(tmp_path / "trunk")
    uas = sipp.free_port()
    a_udp, a_tls, b_udp, b_tls = (sipp.free_port() for _ in range(4))
    relay = f"sip:127.0.0.1:{b_tls};transport=tls"
    pin = f"127.0.0.1={openssl_fingerprint(trunk_cert)}"
    # A trusts only its own CA: the trunk's certificate verifies by its pin alone.
    with babelsip(b_udp, b_tls, f"sip:127.0.0.1:{uas}", trunk_cert, trunk_key), \
            babelsip(a_udp, a_tls, relay, a_pki.cert, a_pki.key, "--tls-ca", str(a_pki.ca),
                     "--tls-pin", pin) as a:
        result = calls_through(tmp_path, a_udp, uas)
        assert result.successful == CALLS and result.failed == 0, result.summary() + a.log()[-3000:]
    wrong = f"127.0.0.1={openssl_fingerprint(a_pki.cert)}"
    with babelsip(b_udp, b_tls, f"sip:127.0.0.1:{uas}", trunk_cert, trunk_key) as b, \
            babelsip(a_udp, a_tls, relay, a_pki.cert, a_pki.key, "--tls-pin", wrong) as a:
        codes, took = one_options(a_udp, uas)
        log = a.log()
    assert codes == [500] and took < 5, log[-3000:]
    presented = openssl_fingerprint(trunk_cert).partition(":")[2].replace(":", "").lower()
    pinned = openssl_fingerprint(a_pki.cert).partition(":")[2].replace(":", "").lower()
    assert (f"certificate of 127.0.0.1 does not match its pin: pinned sha256:{pinned}, "
            f"presented sha256:{presented}") in log, log[-3000:]
    assert "OPTIONS" not in b.log()


def test_mutual_tls_a_trunk_requiring_client_certificates(tmp_path, pkis):
    a_pki, _, _ = pkis
    uas = sipp.free_port()
    a_udp, a_tls, b_udp, b_tls = (sipp.free_port() for _ in range(4))
    relay = f"sips:127.0.0.1:{b_tls}"
    trust = ("--tls-ca", str(a_pki.ca))
    with babelsip(b_udp, b_tls, f"sip:127.0.0.1:{uas}", a_pki.cert, a_pki.key, *trust,
                  "--tls-require-client-cert") as b:
        with babelsip(a_udp, a_tls, relay, a_pki.cert, a_pki.key, *trust,
                      "--tls-client-cert", str(a_pki.client_cert),
                      "--tls-client-key", str(a_pki.client_key)) as a:
            result = calls_through(tmp_path, a_udp, uas)
            assert result.successful == CALLS and result.failed == 0, result.summary() + a.log()[-3000:]
        # Without a client certificate B refuses the handshake: A's branch fails.
        with babelsip(a_udp, a_tls, relay, a_pki.cert, a_pki.key, *trust) as a:
            codes, took = one_options(a_udp, uas)
            log = a.log()
        # TLS 1.3: B refuses after A's side of the handshake is done; A hears
        # it on its first read and fails the branch then, not at Timer F.
        assert codes == [500] and took < 5, log[-3000:]
        assert f"127.0.0.1:{b_tls} (verifying 127.0.0.1) refused the connection" in log, log[-3000:]
        assert "peer did not return a certificate" in b.log()
