"""NAT keep-alives on the transports: STUN Binding on the UDP SIP port
(RFC 5389, RFC 5626 §4.4.2) and CRLF ping/pong on TCP (RFC 5626 §3.5.1),
over real sockets on 127.0.0.1, plus the pure CRLF-run helpers of tcp.py."""

import socket
import struct

import pytest
import trio

from host.shell.tcp import PING, PONG, TcpTransport, crlf_pings, crlf_runs
from host.shell.udp import UdpTransport
from host.sip.stun import MAGIC_COOKIE

MSG = (b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK1\r\n"
       b"From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
       b"Content-Length: 4\r\n\r\nbody")
TXID = b"0123456789ab"


def binding(kind=0x0001):
    return struct.pack("!HHI", kind, 0, MAGIC_COOKIE) + TXID


def mapped_address(answer):
    kind, length = struct.unpack_from("!HH", answer, 20)
    assert kind == 0x0020 and length == 8
    _, family, xport = struct.unpack_from("!BBH", answer, 24)
    raw = bytes(a ^ b for a, b in zip(answer[28:32], struct.pack("!I", MAGIC_COOKIE)))
    return socket.inet_ntoa(raw), xport ^ 0x2112


# ------------------------------------------------------------------ UDP/STUN
async def udp_pair(stun):
    got = []
    udp = UdpTransport("127.0.0.1", 0, lambda data, src: got.append(data), stun=stun)
    peer = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await peer.bind(("127.0.0.1", 0))
    return udp, peer, got


async def test_udp_answers_binding_request_and_still_delivers_sip():
    udp, peer, got = await udp_pair(stun=True)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(udp.serve)
        await peer.sendto(binding(), address)
        with trio.fail_after(5):
            answer, _ = await peer.recvfrom(1000)
        assert answer[:2] == b"\x01\x01" and answer[8:20] == TXID
        assert mapped_address(answer) == peer.getsockname()
        await peer.sendto(MSG, address)
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.01)
        assert got == [MSG]          # the STUN request never reached the core
        assert udp.statistics()["stun_answered"] == 1
        nursery.cancel_scope.cancel()


async def test_udp_never_answers_stun_responses():
    udp, peer, got = await udp_pair(stun=True)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(udp.serve)
        await peer.sendto(binding(0x0101), address)   # a success response: no loop
        await peer.sendto(MSG, address)
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.01)
        assert got == [MSG] and udp.stun_dropped == 1 and udp.stun_answered == 0
        with trio.move_on_after(0.1):
            await peer.recvfrom(1000)
            pytest.fail("a STUN response was answered")
        nursery.cancel_scope.cancel()


async def test_udp_without_stun_passes_everything_to_the_core():
    udp, peer, got = await udp_pair(stun=False)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(udp.serve)
        await peer.sendto(binding(), address)
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.01)
        assert got == [binding()] and "stun_answered" not in udp.statistics()
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------- TCP CRLF pings
@pytest.mark.parametrize("name, carried, run, expected", [
    ("RFC 5626 ping", 0, b"\r\n\r\n", (1, 0)),
    ("single CRLF is no ping", 0, b"\r\n", (0, 2)),
    ("second half of a split ping", 2, b"\r\n", (1, 0)),
    ("split after CR", 3, b"\n", (1, 0)),
    ("two pings", 0, PING * 2, (2, 0)),
    ("pings do not overlap", 0, b"\r\n" * 3, (1, 2)),
    ("bare LFs are no ping", 0, b"\n\n\n\n", (0, 0)),
    ("CR CR restarts", 0, b"\r\r\n\r\n", (1, 0)),
    ("empty run keeps a begun ping", 3, b"", (0, 3)),
])
def test_crlf_pings(name, carried, run, expected):
    assert crlf_pings(carried, run) == expected


@pytest.mark.parametrize("name, data, before, messages, expected", [
    ("only CRLFs", PING, 0, [], [(0, 4)]),
    ("message then ping", MSG + PING, 0, [MSG], [(0, 0), (len(MSG), len(MSG) + 4)]),
    ("ping between messages", PING + MSG + b"\r\n" + MSG[:5], 0, [MSG],
     [(0, 4), (4 + len(MSG), 6 + len(MSG))]),
    ("end of a message begun earlier, then ping", MSG[10:] + PING, 10, [MSG],
     [(len(MSG) - 10, len(MSG) - 6)]),
    ("middle of a message", MSG[10:20], 10, [], []),
])
def test_crlf_runs(name, data, before, messages, expected):
    assert crlf_runs(data, before, messages) == expected


async def tcp_client(**options):
    got = []
    tcp = TcpTransport("127.0.0.1", 0, lambda data, src: got.append(data), **options)
    return tcp, got


async def receive_exactly(stream, n, timeout=5):
    data = b""
    with trio.fail_after(timeout):
        while len(data) < n:
            chunk = await stream.receive_some(n - len(data))
            assert chunk, "connection closed"
            data += chunk
    return data


async def nothing_more(stream, wait=0.2):
    with trio.move_on_after(wait):
        data = await stream.receive_some(100)
        return data
    return None


async def test_tcp_ping_gets_pong_and_messages_still_framed():
    tcp, got = await tcp_client()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(tcp.serve)
        client = await trio.open_tcp_stream(host, port)
        await client.send_all(MSG + PING)
        assert await receive_exactly(client, 2) == PONG
        await client.send_all(MSG)
        with trio.fail_after(5):
            while len(got) < 2:
                await trio.sleep(0.01)
        assert got == [MSG, MSG]
        assert tcp.statistics()["pongs"] == 1
        nursery.cancel_scope.cancel()


async def test_tcp_split_ping_answered_single_crlf_not():
    tcp, got = await tcp_client(pong_interval=0)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(tcp.serve)
        client = await trio.open_tcp_stream(host, port)
        await client.send_all(MSG + b"\r\n")          # a lone CRLF: no pong
        assert await nothing_more(client) is None
        await client.send_all(b"\r\n")                # ...which with this is a ping
        assert await receive_exactly(client, 2) == PONG
        await client.send_all(b"\r\n" + MSG + b"\r")  # a message between: no ping
        assert await nothing_more(client) is None
        await client.send_all(b"\n\r\n")              # ping split after CR
        assert await receive_exactly(client, 2) == PONG
        assert got == [MSG, MSG] and tcp.pings == 2
        nursery.cancel_scope.cancel()


async def test_tcp_ping_flood_gets_one_pong_per_interval():
    tcp, got = await tcp_client(pong_interval=60)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(tcp.serve)
        client = await trio.open_tcp_stream(host, port)
        await client.send_all(MSG + PING * 10000)
        assert await receive_exactly(client, 2) == PONG
        await client.send_all(PING * 10000)
        assert await nothing_more(client) is None
        assert tcp.pongs == 1 and tcp.pings == 20000
        await client.send_all(MSG)                    # the connection still works
        with trio.fail_after(5):
            while len(got) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_tcp_pings_keep_a_connection_stray_crlfs_do_not():
    tcp, got = await tcp_client(idle_timeout=0.5, pong_interval=0)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(tcp.serve)
        pinging = await trio.open_tcp_stream(host, port)
        trickling = await trio.open_tcp_stream(host, port)
        await pinging.send_all(MSG)
        await trickling.send_all(MSG)
        for _ in range(6):                            # 1.2 s, past the idle timeout
            await trio.sleep(0.2)
            await pinging.send_all(PING)
            assert await receive_exactly(pinging, 2) == PONG
            try:  # bare LFs: skipped before a start line, never a ping
                await trickling.send_all(b"\n")
            except trio.BrokenResourceError:
                pass
        assert tcp.idle_closed == 1                   # the trickler, not the pinger
        with trio.fail_after(5):
            while tcp.idle_closed < 2:                # and the pinger once it stops
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_tcp_pings_do_not_count_as_a_first_message():
    tcp, got = await tcp_client(header_timeout=0.3, pong_interval=0)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(tcp.serve)
        client = await trio.open_tcp_stream(host, port)
        with trio.fail_after(5):
            while tcp.header_timeouts == 0:
                try:
                    await client.send_all(PING)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                await trio.sleep(0.05)
        with trio.fail_after(5):
            while tcp.header_timeouts == 0:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
