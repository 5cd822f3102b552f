"""TCP transport with connection reuse (RFC 3261 §18).

Connections are kept by remote address, whoever opened them: a response goes
back on the connection its request came in on (the Via received/rport equal
that connection's remote address), and requests to a peer reuse an open
connection. Each connection has a reader task that frames the stream and a
writer task fed through an unbounded queue, so the SIP core never waits on a
socket.
"""

from __future__ import annotations

import logging
import socket
from typing import Callable

import trio

from host.sip.errors import BadMessage
from host.sip.parser import StreamFramer

log = logging.getLogger("babelsip.transport")

IDLE_TIMEOUT = 300.0      # seconds without traffic before we close a connection
CONNECT_TIMEOUT = 5.0


class _Connection:
    __slots__ = ("remote", "stream", "queue_send", "queue_recv", "last_used", "scope")

    def __init__(self, remote):
        self.remote = remote
        self.stream: trio.SocketStream | None = None
        self.queue_send, self.queue_recv = trio.open_memory_channel(float("inf"))
        self.last_used = trio.current_time()
        self.scope = trio.CancelScope()


class TcpTransport:
    name = "tcp"

    def __init__(self, host: str, port: int,
                 on_message: Callable[[bytes, tuple[str, int]], None],
                 on_error: Callable[[tuple[str, int]], None] | None = None):
        self.host, self.port = host, port
        self._on_message = on_message
        self._on_error = on_error
        self._conns: dict[tuple[str, int], _Connection] = {}
        self._nursery: trio.Nursery | None = None
        self._listener: trio.SocketListener | None = None
        self.framing_errors = 0

    async def bind(self) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind((self.host, self.port))
        sock.listen(1024)
        self._listener = trio.SocketListener(sock)
        self.port = sock.getsockname()[1]
        return self.host, self.port

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self._listener is None:
            await self.bind()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._reap_idle)
            task_status.started((self.host, self.port))
            try:
                while True:
                    stream = await self._listener.accept()
                    addr = stream.socket.getpeername()[:2]
                    conn = _Connection(addr)
                    conn.stream = stream
                    self._conns[addr] = conn
                    nursery.start_soon(self._run, conn)
            finally:
                await self._listener.aclose()

    def has_connection(self, host: str, port: int) -> bool:
        return (host, port) in self._conns

    def send(self, data: bytes, host: str, port: int) -> bool:
        remote = (host, port)
        conn = self._conns.get(remote)
        if conn is None:
            if self._nursery is None:
                return False
            conn = _Connection(remote)
            self._conns[remote] = conn
            self._nursery.start_soon(self._run, conn)
        conn.queue_send.send_nowait(data)
        return True

    async def _run(self, conn: _Connection) -> None:
        with conn.scope:
            try:
                if conn.stream is None:
                    with trio.fail_after(CONNECT_TIMEOUT):
                        conn.stream = await trio.open_tcp_stream(*conn.remote)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, conn)
                    await self._read(conn)
                    nursery.cancel_scope.cancel()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
                log.debug("tcp connection %s:%s ended: %r", *conn.remote, exc)
                if self._on_error is not None and conn.queue_recv.statistics().current_buffer_used:
                    self._on_error(conn.remote)
            finally:
                if self._conns.get(conn.remote) is conn:
                    del self._conns[conn.remote]
                if conn.stream is not None:
                    with trio.CancelScope(shield=True):
                        await conn.stream.aclose()

    async def _read(self, conn: _Connection) -> None:
        framer = StreamFramer()
        deliver = self._on_message
        while True:
            data = await conn.stream.receive_some(65536)
            if not data:
                return
            conn.last_used = trio.current_time()
            try:
                messages = framer.feed(data)
            except BadMessage as exc:
                # The stream cannot be re-synchronised: close it (§18.3).
                self.framing_errors += 1
                log.info("closing tcp %s:%s: %s", *conn.remote, exc.reason)
                return
            for raw in messages:
                deliver(raw, conn.remote)

    async def _write(self, conn: _Connection) -> None:
        async for data in conn.queue_recv:
            # Coalesce what is queued into one write.
            chunks = [data]
            while True:
                try:
                    chunks.append(conn.queue_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            await conn.stream.send_all(b"".join(chunks))
            conn.last_used = trio.current_time()

    async def _reap_idle(self) -> None:
        while True:
            await trio.sleep(IDLE_TIMEOUT / 4)
            cutoff = trio.current_time() - IDLE_TIMEOUT
            for conn in list(self._conns.values()):
                if conn.last_used < cutoff:
                    conn.scope.cancel()

    def statistics(self) -> dict:
        return {"connections": len(self._conns), "framing_errors": self.framing_errors}

