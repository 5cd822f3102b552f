"""UDP and TCP transports on 127.0.0.1: delivery, draining, framing, reuse."""

import socket

import trio

from host.shell.tcp import TcpTransport
from host.shell.udp import UdpTransport

MSG = (b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK1\r\n"
       b"From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
       b"Content-Length: 4\r\n\r\nbody")


async def test_udp_delivers_a_burst_and_sends_back():
    got = []
    udp = UdpTransport("127.0.0.1", 0, lambda data, src: got.append((data, src)))
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(udp.serve)
        peer = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await peer.bind(("127.0.0.1", 0))
        for i in range(500):  # more than one drain round
            await peer.sendto(b"x%d" % i, (host, port))
        with trio.fail_after(5):
            while len(got) < 500:
                await trio.sleep(0.01)
        assert got[0][1] == peer.getsockname()
        assert udp.send(b"reply", *peer.getsockname())
        with trio.fail_after(5):
            data, _ = await peer.recvfrom(100)
        assert data == b"reply"
        assert udp.received == 500
        nursery.cancel_scope.cancel()


async def test_tcp_frames_split_and_coalesced_messages_and_reuses_the_connection():
    got = []
    tcp = TcpTransport("127.0.0.1", 0, lambda data, src: got.append((data, src)))
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(tcp.serve)
        client = await trio.open_tcp_stream(host, port)
        await client.send_all(MSG[:30])
        await trio.sleep(0.05)
        await client.send_all(MSG[30:] + MSG + MSG[:10])
        await trio.sleep(0.05)
        await client.send_all(MSG[10:])
        with trio.fail_after(5):
            while len(got) < 3:
                await trio.sleep(0.01)
        assert [d for d, _ in got] == [MSG, MSG, MSG]
        remote = got[0][1]
        # A message to the client's address goes back on its own connection.
        assert tcp.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", *remote)
        with trio.fail_after(5):
            reply = await client.receive_some(1000)
        assert reply.startswith(b"SIP/2.0 200 OK")
        assert tcp.statistics()["connections"] == 1
        nursery.cancel_scope.cancel()


async def test_tcp_garbage_closes_only_that_connection():
    got = []
    tcp = TcpTransport("127.0.0.1", 0, lambda data, src: got.append(data))
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(tcp.serve)
        bad = await trio.open_tcp_stream(host, port)
        good = await trio.open_tcp_stream(host, port)
        await bad.send_all(b"X" * 70000)  # no header end within the size cap
        with trio.fail_after(5):
            try:  # closed by the server: EOF, or a reset since our bytes were unread
                assert await bad.receive_some(10) == b""
            except trio.BrokenResourceError:
                pass
        await good.send_all(MSG)
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.01)
        assert got == [MSG] and tcp.framing_errors == 1
        nursery.cancel_scope.cancel()


async def test_tcp_connects_out_when_no_connection_exists():
    received = []
    listener_sock = trio.socket.socket()
    await listener_sock.bind(("127.0.0.1", 0))
    listener_sock.listen()
    peer_port = listener_sock.getsockname()[1]
    tcp = TcpTransport("127.0.0.1", 0, lambda data, src: received.append(data))
    async with trio.open_nursery() as nursery:
        await nursery.start(tcp.serve)
        assert tcp.send(MSG, "127.0.0.1", peer_port)
        with trio.fail_after(5):
            conn, _ = await listener_sock.accept()
            data = b""
            while len(data) < len(MSG):
                data += await conn.recv(4096)
        assert data == MSG
        # The peer answers on the same connection: it reaches the core.
        await conn.send(MSG)
        with trio.fail_after(5):
            while not received:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    conn.close()
    listener_sock.close()
