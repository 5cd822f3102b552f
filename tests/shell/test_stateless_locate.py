"""The shell's side of RFC 3263 for requests relayed without a transaction
(the ACK for a 2xx): with the resolver's cache warm, the ACK leaves in the
same call that received it (no task, no DNS query); with a cold cache it is
sent once the answers arrive. DNS comes from the test's own server on a
loopback port (tests/e2e/dns_server.py)."""

import socket

import trio

from host.shell.server import Server, ServerConfig
from host.sip.locate import Target
from tests.e2e.dns_server import ZoneServer


def zone(port):
    return {("example.test", "NAPTR"): (300, ['10 10 "s" "SIP+D2U" "" _sip._udp.example.test.']),
            ("_sip._udp.example.test", "SRV"): (300, [f"10 0 {port} uas.example.test."]),
            ("uas.example.test", "A"): (300, ["127.0.0.1"])}


def ack(port, branch):
    return (f"ACK sip:bob@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:1;branch={branch};rport\r\n"
            f"From: <sip:a@x>;tag=f1\r\nTo: <sip:bob@x>;tag=t1\r\nCall-ID: ack-1\r\n"
            f"CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


async def test_a_stateless_ack_is_sent_at_once_from_a_warm_cache_and_later_from_a_cold_one():
    sink = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # the uas the SRV names
    await sink.bind(("127.0.0.1", 0))
    sink_port = sink.getsockname()[1]
    with ZoneServer(zone(sink_port)) as dns:
        server = Server(ServerConfig(listen=[("udp", "127.0.0.1", 0)], relay_to="sip:example.test",
                                     extra={"dns_servers": [("127.0.0.1", dns.address[1])]}))
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.run)
            port = bound[0][2]
            udp = server.transports["udp"]
            sent = []
            real_send = udp.send
            udp.send = lambda data, host, p: (sent.append((data, host, p)), real_send(data, host, p))

            # Cold: the ACK waits for NAPTR, SRV, A, then goes.
            server._receive(ack(port, "z9hG4bK-cold"), "udp", ("127.0.0.1", 1))
            assert sent == []
            with trio.fail_after(5):
                data, _ = await sink.recvfrom(65535)
            assert data.startswith(b"ACK ") and b"SIP/2.0/UDP 127.0.0.1:" in data
            asked = dict(dns.queries)
            assert asked == {("example.test", "NAPTR"): 1, ("_sip._udp.example.test", "SRV"): 1,
                             ("uas.example.test", "A"): 1}

            # Warm: sent before _receive returns, with no query.
            sent.clear()
            server._receive(ack(port, "z9hG4bK-warm"), "udp", ("127.0.0.1", 1))
            assert [(host, p) for _, host, p in sent] == [("127.0.0.1", sink_port)]
            assert dict(dns.queries) == asked
            assert server.core.stats.stateless_unlocated == 0
            nursery.cancel_scope.cancel()


async def test_the_resolver_answers_from_its_cache_without_waiting():
    with ZoneServer(zone(5999)) as dns:
        server = Server(ServerConfig(listen=[("udp", "127.0.0.1", 0)],
                                     extra={"dns_servers": [("127.0.0.1", dns.address[1])]}))
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            resolver, args = server.resolver, ("sip", "example.test", None, None, frozenset({"udp"}), ("A",))
            assert resolver.locate_nowait(*args) is None      # nothing cached yet
            assert await resolver.locate(*args) == [Target("udp", "127.0.0.1", 5999)]
            assert resolver.locate_nowait(*args) == [Target("udp", "127.0.0.1", 5999)]
            assert sum(dns.queries.values()) == 3
            nursery.cancel_scope.cancel()
