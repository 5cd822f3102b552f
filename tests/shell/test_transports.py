"""UDP and TCP transports on 127.0.0.1: delivery, draining, framing, reuse;
the TCP transport's own defences (tests/shell/test_tcp_hostile.py drives them
through a whole server)."""

import errno
import logging
import os
import resource
import socket
import subprocess
import sys

import trio

from host.shell.tcp import Admission, RateLimit, TcpTransport, connection_cap, read_deadline
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


# ------------------------------------------------------- TCP defences
def test_connection_cap_keeps_descriptors_for_the_rest_of_the_process():
    assert connection_cap(2048, None) == 2048
    assert connection_cap(2048, 1_048_576) == 2048
    assert connection_cap(2048, 1024) == 1024 - 128      # an eighth kept free
    assert connection_cap(2048, 64) == 64 - 32           # at least 32 kept free
    assert connection_cap(2048, 16) == 1


def test_read_deadline_times_a_started_message_and_otherwise_the_idle_time():
    assert read_deadline(None, 100.0, 10.0, 300.0) == 400.0
    assert read_deadline(95.0, 100.0, 10.0, 300.0) == 105.0   # bytes since 95 do not extend it
    assert read_deadline(95.0, 100.0, 10.0, 2.0) == 102.0


def test_admission_counts_per_source_and_in_total():
    adm = Admission(max_total=3, max_per_source=2)
    adm.add("10.0.0.1"), adm.add("10.0.0.1")
    assert "from 10.0.0.1" in adm.refuse("10.0.0.1")
    assert adm.refuse("10.0.0.2") is None and adm.refuse(None) is None
    adm.add(None)  # outbound: counts in the total only
    assert "3 connections open" in adm.refuse("10.0.0.2")
    adm.remove("10.0.0.1"), adm.remove(None)
    assert adm.refuse("10.0.0.1") is None and adm.per_source == {"10.0.0.1": 1}


def test_rate_limit_passes_one_event_per_interval_and_counts_the_rest():
    limit = RateLimit(10.0)
    assert limit.allow(0.0) == 0
    assert limit.allow(1.0) is None and limit.allow(9.9) is None
    assert limit.allow(10.0) == 2


class FlakyListener:
    """A listening socket whose accept() first fails with the given errnos."""

    def __init__(self, sock):
        self.sock, self.errors = sock, []

    async def accept(self):
        if self.errors:
            await trio.lowlevel.checkpoint()
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return await self.sock.accept()

    def close(self):
        self.sock.close()


async def test_tcp_accept_survives_exhaustion_and_aborted_connections(caplog):
    got = []
    tcp = TcpTransport("127.0.0.1", 0, lambda data, src: got.append(src), accept_backoff=0.01)
    host, port = await tcp.bind()
    flaky = tcp._sock = FlakyListener(tcp._sock)
    flaky.errors = [errno.ECONNABORTED, errno.EPROTO, errno.EMFILE, errno.ENFILE]
    caplog.set_level(logging.WARNING, "babelsip.transport")
    async with trio.open_nursery() as nursery:
        await nursery.start(tcp.serve)
        idle = await trio.open_tcp_stream(host, port)
        await idle.send_all(MSG)
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.01)
        stats = tcp.statistics()
        assert stats["accept_errors"] == 2 and stats["out_of_descriptors"] == 2
        assert stats["shed"] == 0  # nothing was open then
        assert "Too many open files" in caplog.text
        # Out of descriptors again with an idle connection open: it is shed
        # to give the process a descriptor back.
        flaky.errors = [errno.EMFILE]
        newcomer = await trio.open_tcp_stream(host, port)
        with trio.fail_after(5):
            assert await idle.receive_some(10) == b""
        assert tcp.statistics()["shed"] == 1
        await newcomer.send_all(MSG)
        with trio.fail_after(5):
            while len(got) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_tcp_a_failing_message_handler_costs_that_message_only():
    got = []

    def on_message(data, src):
        if b"boom" in data:
            raise RuntimeError("a bug in the core")
        got.append(data)

    tcp = TcpTransport("127.0.0.1", 0, on_message)
    boom = MSG.replace(b"Call-ID: c", b"Call-ID: boom")
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(tcp.serve)
        first = await trio.open_tcp_stream(host, port)
        other = await trio.open_tcp_stream(host, port)
        await first.send_all(boom + MSG)
        await other.send_all(MSG)
        with trio.fail_after(5):
            while len(got) < 2:
                await trio.sleep(0.01)
        await first.send_all(MSG)  # the connection that met the bug still works
        with trio.fail_after(5):
            while len(got) < 3:
                await trio.sleep(0.01)
        assert tcp.statistics()["callback_errors"] == 1
        assert tcp.statistics()["connections"] == 2
        nursery.cancel_scope.cancel()


async def test_tcp_send_never_queues_more_than_the_bound():
    tcp = TcpTransport("127.0.0.1", 0, lambda data, src: None, max_queued_bytes=1000)
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    peer = listener.getsockname()
    async with trio.open_nursery() as nursery:
        await nursery.start(tcp.serve)
        # Queued before the connection is even up: nothing is written yet.
        assert tcp.send(b"x" * 600, *peer)
        assert not tcp.send(b"x" * 600, *peer)      # over the bound: refused, and the
        assert not tcp.send(b"x", *peer)            # connection is being closed
        assert not tcp.has_connection(*peer)
        assert tcp.statistics()["slow_readers_closed"] == 1
        nursery.cancel_scope.cancel()
    listener.close()


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one():
    def lower():
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    code = ("import resource; from host.shell.limits import raise_nofile_limit; "
            "got = raise_nofile_limit(); soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
            "print(got, soft, hard)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, preexec_fn=lower, check=True).stdout.split()
    got, soft, hard = (int(v) for v in out)
    assert soft == hard == got
