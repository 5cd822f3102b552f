"""Hostile TCP peers against a real server (issue 7 §1).

Each test plays one class of peer — resets at every stage of a connection,
descriptor exhaustion, a peer that never reads, slowloris, too many
connections — and then checks the server still answers an OPTIONS over UDP
and over a fresh TCP connection. The server runs in-process on the test's
trio loop (an escaping error fails the test with that error), except where
the process itself is the subject (descriptor limit, memory): there it is a
`babelsip run` subprocess.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import socket
import struct
import subprocess
import sys
import time

import pytest
import trio

from host.shell.server import Server, ServerConfig

LINGER_RESET = struct.pack("ii", 1, 0)   # SO_LINGER on, 0 s: close() sends RST
_ids = itertools.count(1)


def options(port: int, transport: str = "UDP") -> bytes:
    """An OPTIONS addressed to the proxy itself: it answers 200 on its own."""
    n = next(_ids)
    return (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 127.0.0.1:9;branch=z9hG4bK-hostile{n};rport\r\n"
            f"From: <sip:probe@x>;tag=p{n}\r\nTo: <sip:proxy@x>\r\nCall-ID: hostile-{n}\r\n"
            f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


@contextlib.asynccontextmanager
async def running_server(**tcp):
    """A Server on UDP and TCP (ephemeral ports); `tcp` lowers TcpTransport limits."""
    config = ServerConfig(listen=[("udp", "127.0.0.1", 0), ("tcp", "127.0.0.1", 0)],
                          relay_to="sip:127.0.0.1:9", extra={"tcp": tcp})
    server = Server(config)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        ports = {transport: port for transport, _, port in bound}
        yield server, ports["udp"], ports["tcp"]
        nursery.cancel_scope.cancel()


async def receive_reply(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, "connection closed before the reply"
        data += chunk
    return data


async def assert_still_serving(udp_port: int, tcp_port: int) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        await sock.sendto(options(udp_port), ("127.0.0.1", udp_port))
        with trio.fail_after(10):
            reply, _ = await sock.recvfrom(65535)
    assert reply.startswith(b"SIP/2.0 200"), reply[:80]
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", tcp_port)
        async with stream:
            await stream.send_all(options(tcp_port, "TCP"))
            reply = await receive_reply(stream)
    assert reply.startswith(b"SIP/2.0 200"), reply[:80]


def reset(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    stream.socket.close()


async def wait_closed(stream: trio.SocketStream, timeout: float) -> None:
    """Until the server closes `stream` (EOF or RST); replies read on the way
    are dropped. Fails after `timeout` seconds."""
    with trio.fail_after(timeout):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass


# ------------------------------------------------- resets at every stage
async def test_resets_before_accept_do_not_end_the_server():
    async with running_server() as (server, udp_port, tcp_port):
        # Blocking calls without a checkpoint: the server cannot run, so every
        # connection is completed by the kernel, reset, and left in the backlog
        # for accept() to find already dead (getpeername() -> ENOTCONN).
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", tcp_port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            s.close()
        await trio.sleep(0.2)
        await assert_still_serving(udp_port, tcp_port)


async def test_reset_of_an_idle_connection_after_its_answer():
    async with running_server() as (server, udp_port, tcp_port):
        streams = []
        for _ in range(5):
            stream = await trio.open_tcp_stream("127.0.0.1", tcp_port)
            await stream.send_all(options(tcp_port, "TCP"))
            with trio.fail_after(10):
                assert (await receive_reply(stream)).startswith(b"SIP/2.0 200")
            streams.append(stream)
        for stream in streams:
            reset(stream)
        await trio.sleep(0.2)
        await assert_still_serving(udp_port, tcp_port)


async def test_reset_in_the_middle_of_a_message():
    async with running_server() as (server, udp_port, tcp_port):
        message = options(tcp_port, "TCP")
        for cut in (1, 20, len(message) // 2, len(message) - 1):
            stream = await trio.open_tcp_stream("127.0.0.1", tcp_port)
            await stream.send_all(message[:cut])
            await trio.sleep(0.05)  # the server has read the partial message
            reset(stream)
        await trio.sleep(0.2)
        await assert_still_serving(udp_port, tcp_port)


async def test_reset_while_the_server_is_writing():
    # The queue bound is raised so this test is about the reset, not the
    # slow reader (that is the next test).
    async with running_server(max_queued_bytes=64 << 20) as (server, udp_port, tcp_port):
        raw = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A tiny receive window: the answers cannot all fit in flight.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await raw.connect(("127.0.0.1", tcp_port))
        stream = trio.SocketStream(raw)
        await stream.send_all(b"".join(options(tcp_port, "TCP") for _ in range(3000)))
        tcp = server.transports["tcp"]
        # Precondition: answers are waiting in the server for our window.
        with trio.fail_after(10):
            while not any(conn.queued for conn in tcp._conns.values()):
                await trio.sleep(0.02)
        reset(stream)
        await trio.sleep(0.2)
        await assert_still_serving(udp_port, tcp_port)
        assert tcp.statistics()["internal_errors"] == 0


# ------------------------------------------------------ peers that abuse
async def test_a_peer_that_never_reads_is_closed_and_its_queue_stays_bounded():
    limit = 64 * 1024
    async with running_server(max_queued_bytes=limit) as (server, udp_port, tcp_port):
        raw = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await raw.connect(("127.0.0.1", tcp_port))
        stream = trio.SocketStream(raw)
        tcp = server.transports["tcp"]
        most = 0
        # Pipeline requests and never read: the server must reset us. Each
        # round is bounded, so a server that never closes fails here.
        with trio.fail_after(20):
            with pytest.raises(trio.BrokenResourceError):
                while True:
                    await stream.send_all(b"".join(options(tcp_port, "TCP") for _ in range(50)))
                    most = max([most] + [c.queued for c in tcp._conns.values()])
        assert most <= limit
        assert tcp.statistics()["slow_readers_closed"] == 1
        await assert_still_serving(udp_port, tcp_port)


async def test_slowloris_and_silent_connections_are_cut_after_the_header_timeout():
    # 2 s: short for the test, yet far above any stall of a loaded machine,
    # so the legitimate peer below is never late.
    async with running_server(header_timeout=2.0) as (server, udp_port, tcp_port):
        message = options(tcp_port, "TCP")
        slow = [await trio.open_tcp_stream("127.0.0.1", tcp_port) for _ in range(3)]
        silent = await trio.open_tcp_stream("127.0.0.1", tcp_port)
        # A legitimate peer: its message arrives in two parts, well in time.
        good = await trio.open_tcp_stream("127.0.0.1", tcp_port)
        await good.send_all(message[:40])
        await trio.sleep(0.1)
        await good.send_all(message[40:])
        with trio.fail_after(10):
            assert (await receive_reply(good)).startswith(b"SIP/2.0 200")
        closed = []

        async def trickle(stream):
            # One byte every 0.25 s: bytes keep coming, the message never ends.
            try:
                for byte in message[:-1]:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.25)
            except trio.BrokenResourceError:
                closed.append(stream)

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                for stream in slow:
                    nursery.start_soon(trickle, stream)
                await wait_closed(silent, 15)
        # The trickle lasts ~90 s for a server without a header timeout.
        assert len(closed) == 3
        stats = server.transports["tcp"].statistics()
        assert stats["header_timeouts"] == 4
        # A connection between messages is idle, not late: still open.
        await good.send_all(options(tcp_port, "TCP"))
        with trio.fail_after(10):
            assert (await receive_reply(good)).startswith(b"SIP/2.0 200")
        await assert_still_serving(udp_port, tcp_port)


async def test_an_idle_connection_is_closed_after_the_idle_timeout():
    async with running_server(idle_timeout=0.5) as (server, udp_port, tcp_port):
        stream = await trio.open_tcp_stream("127.0.0.1", tcp_port)
        await stream.send_all(options(tcp_port, "TCP"))
        with trio.fail_after(10):
            assert (await receive_reply(stream)).startswith(b"SIP/2.0 200")
        await wait_closed(stream, 10)
        assert server.transports["tcp"].statistics()["idle_closed"] == 1


@pytest.mark.parametrize("limits", [{"max_per_source": 3}, {"max_connections": 3}])
async def test_connections_beyond_the_limit_are_refused(limits):
    async with running_server(**limits) as (server, udp_port, tcp_port):
        admitted = [await trio.open_tcp_stream("127.0.0.1", tcp_port) for _ in range(3)]
        for stream in admitted:  # each is served, so each is admitted
            await stream.send_all(options(tcp_port, "TCP"))
            with trio.fail_after(10):
                assert (await receive_reply(stream)).startswith(b"SIP/2.0 200")
        extra = [await trio.open_tcp_stream("127.0.0.1", tcp_port) for _ in range(2)]
        for stream in extra:
            await wait_closed(stream, 10)
        assert server.transports["tcp"].statistics()["rejected"] == 2
        # The admitted ones are untouched; one closing frees a place.
        await admitted[0].send_all(options(tcp_port, "TCP"))
        with trio.fail_after(10):
            assert (await receive_reply(admitted[0])).startswith(b"SIP/2.0 200")
        await admitted[1].aclose()
        with trio.fail_after(10):
            while server.transports["tcp"].statistics()["connections"] > 2:
                await trio.sleep(0.02)
        await assert_still_serving(udp_port, tcp_port)


# ---------------------------------------------- the process as a subject
def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@contextlib.contextmanager
def babelsip_process(tmp_path, nofile: int | None = None):
    port = _free_port()

    def lower_limit():
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log_path = tmp_path / "babelsip.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "host", "run", "--listen", f"udp:127.0.0.1:{port}",
             "--listen", f"tcp:127.0.0.1:{port}", "--relay-to", "sip:127.0.0.1:9"],
            stdout=subprocess.DEVNULL, stderr=log_file, preexec_fn=lower_limit)
    try:
        deadline = time.monotonic() + 20
        while not _udp_answers(port, timeout=0.5):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server did not start"
        yield proc, port, log_path
    finally:
        proc.kill()
        proc.wait(10)


def _udp_answers(port: int, timeout: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(options(port), ("127.0.0.1", port))
        try:
            return s.recv(65535).startswith(b"SIP/2.0 200")
        except socket.timeout:
            return False


def _tcp_answers(sock: socket.socket, port: int) -> bool:
    sock.sendall(options(port, "TCP"))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        data += chunk
    return data.startswith(b"SIP/2.0 200")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_more_connections_than_descriptors_in_a_subprocess(tmp_path):
    """Under RLIMIT_NOFILE 64 (soft = hard, so it cannot be raised), 100 TCP
    connections: the process stays up, keeps answering UDP and the connection
    it already had, and says what it refused."""
    with babelsip_process(tmp_path, nofile=64) as (proc, port, log_path):
        existing = socket.create_connection(("127.0.0.1", port), timeout=10)
        flood = []
        try:
            assert _tcp_answers(existing, port)
            for _ in range(100):
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            time.sleep(1.0)  # the server works through its backlog
            assert proc.poll() is None, log_path.read_text()
            assert _udp_answers(port, timeout=10)
            assert _tcp_answers(existing, port)
            # Every admitted connection is served and the rest were closed:
            # none of the 100 is left hanging in the backlog.
            assert proc.poll() is None
        finally:
            existing.close()
            for s in flood:
                s.close()
        text = log_path.read_text()
        assert "refusing 127.0.0.1" in text, text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_peer_that_never_reads_does_not_grow_the_process(tmp_path):
    with babelsip_process(tmp_path) as (proc, port, log_path):
        before = _rss_kib(proc.pid)
        peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.settimeout(2)
        peer.connect(("127.0.0.1", port))
        batch = b"".join(options(port, "TCP") for _ in range(200))
        most, closed = before, False
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline:
                try:
                    peer.sendall(batch)
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
                except socket.timeout:
                    pass  # the server is not reading fast enough right now
                most = max(most, _rss_kib(proc.pid))
        finally:
            peer.close()
        grown_mib = (most - before) / 1024
        assert closed, f"never closed; the server grew by {grown_mib:.0f} MiB"
        # The queue bound is 1 MiB; the rest is the interpreter's own churn.
        assert grown_mib < 40, grown_mib
        assert _udp_answers(port, timeout=10)
        assert "bytes unread" in log_path.read_text()
