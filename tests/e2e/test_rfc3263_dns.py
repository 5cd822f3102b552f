"""End to end: `babelsip run --relay-to sip:example.test` finds its next hop
through RFC 3263 (NAPTR, SRV, A) asked of a DNS server the test runs on a
loopback port (tests/e2e/dns_server.py; never the system resolver), fails
over to the second SRV target (§4.3), and caches answers for their TTL. The
ACK for a 2xx, relayed without a transaction, is located the same way."""

from __future__ import annotations

import pytest

from tests.e2e import routes_support as rs
from tests.e2e import sipp
from tests.e2e.dns_server import ZoneServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None, reason="sipp is not installed (sip-tester)"),
]

CALLS = 5
TIMEOUT = 30.0


def proxy(port: int, dns_port: int):
    return sipp.start_babelsip([
        "run", "--listen", f"udp:{sipp.LOCALHOST}:{port}", "--listen", f"tcp:{sipp.LOCALHOST}:{port}",
        "--relay-to", "sip:example.test", "--dns-server", f"127.0.0.1:{dns_port}"])


def uac(workdir, proxy_port: int) -> sipp.SippResult:
    return sipp.run_sipp("uac", workdir, name="uac", port=sipp.free_port(),
                         remote=(sipp.LOCALHOST, proxy_port), calls=CALLS, rate=5, limit=1,
                         timeout=TIMEOUT)


def test_srv_failover_from_a_503_target_and_ttl_caching(tmp_path):
    busy_port, uas_port, proxy_port = sipp.free_port(), sipp.free_port(), sipp.free_port()
    zone = {("_sip._udp.example.test", "SRV"): (300, [f"10 0 {busy_port} first.example.test.",
                                                      f"20 0 {uas_port} second.example.test."]),
            ("first.example.test", "A"): (300, ["127.0.0.1"]),
            ("second.example.test", "A"): (300, ["127.0.0.1"]),
            ("example.test", "SOA"): (300, ["ns.example.test. admin.example.test. 1 60 60 60 60"])}
    with ZoneServer(zone) as dns_server, \
            sipp.start_sipp_server("uas_overloaded", tmp_path, name="busy", port=busy_port,
                                   timeout=TIMEOUT + 30) as busy, \
            sipp.start_sipp_server("uas", tmp_path, name="uas", port=uas_port, timeout=TIMEOUT + 30) as uas, \
            proxy(proxy_port, dns_server.address[1]) as server:
        result = uac(tmp_path, proxy_port)
        busy_result = busy.stop()
        log = server.log()
    why = f"{result.summary()}\n{log[-3000:]}"
    assert result.successful == CALLS and result.failed == 0, why
    assert "cannot resolve" not in log, why
    # Every call went to the priority-10 target first, then to the second
    # (only the second target answers 200)
    assert busy_result.successful == CALLS, why
    # One query per record set for all the calls: the TTL (300 s) holds them
    # (no NAPTR: the SRV of UDP then TCP, §4.1; the TCP one answers nothing).
    assert dns_server.queries == {("example.test", "NAPTR"): 1, ("_sip._udp.example.test", "SRV"): 1,
                                  ("_sip._tcp.example.test", "SRV"): 1,
                                  ("first.example.test", "A"): 1, ("second.example.test", "A"): 1}, why


def test_naptr_chooses_tcp_and_a_refused_connection_fails_over(tmp_path):
    dead_port, uas_port, proxy_port = sipp.free_port(), sipp.free_port(), sipp.free_port()
    zone = {("example.test", "NAPTR"): (60, ['10 10 "s" "SIP+D2T" "" _sip._tcp.example.test.',
                                            '20 10 "s" "SIP+D2U" "" _sip._udp.example.test.']),
            ("_sip._tcp.example.test", "SRV"): (60, [f"10 0 {dead_port} dead.example.test.",
                                                     f"20 0 {uas_port} live.example.test."]),
            ("dead.example.test", "A"): (60, ["127.0.0.1"]),
            ("live.example.test", "A"): (60, ["127.0.0.1"])}
    with ZoneServer(zone) as dns_server, \
            sipp.start_sipp_server("uas", tmp_path, name="uas", port=uas_port, transport="tcp",
                                   timeout=TIMEOUT + 30) as uas, \
            proxy(proxy_port, dns_server.address[1]) as server:
        result = uac(tmp_path, proxy_port)
        log = server.log()
    why = f"{result.summary()}\n{log[-3000:]}"
    assert result.successful == CALLS and result.failed == 0, why
    # NAPTR first, then the SRV of the service it put first (TCP).
    assert list(dns_server.queries)[:2] == [("example.test", "NAPTR"), ("_sip._tcp.example.test", "SRV")], why


def test_an_unresolvable_next_hop_is_refused_and_logged_once(tmp_path):
    proxy_port = sipp.free_port()
    with ZoneServer({}) as dns_server, proxy(proxy_port, dns_server.address[1]) as server:
        result = sipp.run_sipp("uac", tmp_path, name="uac", port=sipp.free_port(),
                               remote=(sipp.LOCALHOST, proxy_port), calls=3, rate=5, limit=1,
                               timeout=10.0)
        log = server.log()
    assert result.returncode != 0 and result.successful == 0
    assert log.count("cannot resolve next hop example.test") == 1, log[-2000:]
    # NXDOMAIN is cached too: the name was asked once.
    assert dns_server.queries[("example.test", "NAPTR")] == 1


def uas_needing_the_ack(workdir):
    """The route-set aware uas, with the ACK of its 200 required: a call whose
    ACK never arrives fails (sipp meets the BYE where it expects the ACK)."""
    path = workdir / "uas_needs_ack.xml"
    text = rs.quick_uas_rr(workdir).read_text()
    strict = text.replace('<recv request="ACK" optional="true"', '<recv request="ACK"')
    assert strict != text
    path.write_text(strict)
    return str(path)


def test_the_stateless_ack_for_a_2xx_follows_naptr_to_tcp_from_the_cache(tmp_path):
    uas_port, proxy_port = sipp.free_port(), sipp.free_port()
    # Only NAPTR names the transport (TCP): an ACK sent where a bare
    # A/AAAA lookup, or the UDP SRV, would send it finds nobody.
    zone = {("example.test", "NAPTR"): (300, ['10 10 "s" "SIP+D2T" "" _sip._tcp.example.test.']),
            ("_sip._tcp.example.test", "SRV"): (300, [f"10 0 {uas_port} live.example.test."]),
            ("live.example.test", "A"): (300, ["127.0.0.1"])}
    with ZoneServer(zone) as dns_server, \
            sipp.start_sipp_server(uas_needing_the_ack(tmp_path), tmp_path, name="uas", port=uas_port,
                                   transport="tcp", timeout=TIMEOUT + 30) as uas, \
            proxy(proxy_port, dns_server.address[1]) as server:
        result = uac(tmp_path, proxy_port)
        uas_result = uas.stop()
        log = server.log()
    why = f"{result.summary()}\n{uas_result.summary()}\n{log[-3000:]}"
    # The built-in uac ignores Record-Route: its ACKs come to us with no
    # Route and go on statelessly to --relay-to, located like the INVITE.
    assert result.successful == CALLS and result.failed == 0, why
    assert uas_result.successful == CALLS and uas_result.failed == 0, why
    # INVITE, ACK and BYE of every call from one answer per record set.
    assert dns_server.queries == {("example.test", "NAPTR"): 1, ("_sip._tcp.example.test", "SRV"): 1,
                                  ("live.example.test", "A"): 1}, why
