"""UDP transport: one non-blocking socket, drained after each wake-up.

FACTS.md: one `await recvfrom()` per datagram tops out near 40k packets/s;
waiting once for readability and then draining the socket reaches the speed of
a blocking loop. A full send buffer drops the datagram, which SIP over UDP
already tolerates through retransmission.

Sends are held and written together at the end of the pass that made them:
the drain of one wake-up, or one scheduler batch of the other tasks (a route
worker's answers, timers). On a loaded server a burst of datagrams then wakes
its peer once, not once per datagram; waking a peer is most of what a
loopback `sendto` costs, and those per-datagram wake-ups (ours and the
peer's) are what tipped a loaded relay into retransmission storms
(bench: 1,500 calls/s failed before, passed after). `FLUSH_AT` bounds what a
long drain holds back. Order is kept: everything goes through one queue.

With `stun=True` the transport also answers STUN Binding requests that UAs
send to the SIP port as NAT keep-alives (RFC 5626 §4.4.2, RFC 5389): a SIP
message starts with a letter, a STUN message with 0x00 or 0x01, so one byte
tells them apart and the SIP core never sees STUN. Binding requests are
answered here, other STUN messages dropped; both are counted.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Callable

import trio

from host.sip.stun import binding_response, is_stun

log = logging.getLogger("babelsip.transport")

DRAIN_MAX = 256           # datagrams per wake-up before yielding to other tasks
RECV_SIZE = 65535
FLUSH_AT = 32             # datagrams held before they go out anyway, mid-drain


def open_udp_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound UDP socket with room for bursts; `reuse_port` joins a
    SO_REUSEPORT group, whose members the kernel spreads datagrams over."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class UdpTransport:
    name = "udp"

    def __init__(self, host: str, port: int, on_datagram: Callable[[bytes, tuple[str, int]], None],
                 *, stun: bool = False, sock: socket.socket | None = None):
        self.host, self.port = host, port
        self._bound = sock   # bound already (by the parent of --workers N)
        self._on_datagram = on_datagram
        self.stun = stun
        self._sock: socket.socket | None = None
        self._held: list[tuple[bytes, tuple[str, int]]] | None = None  # waiting for the pass's end
        self._flush_wake: trio.Event | None = None   # set while serve() runs: sends are held
        self._draining = False   # the drain loop flushes what it made itself
        self.sent = self.received = self.send_errors = 0
        self.stun_answered = self.stun_dropped = 0

    def bind(self) -> tuple[str, int]:
        sock = self._bound
        if sock is None:
            sock = open_udp_socket(self.host, self.port)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        return self.host, self.port

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self._sock is None:
            self.bind()
        try:
            async with trio.open_nursery() as nursery:
                self._flush_wake = trio.Event()
                nursery.start_soon(self._flush_held)
                task_status.started((self.host, self.port))
                await self._receive()
        finally:
            self._flush_wake = None
            self.flush()
            self._sock.close()

    async def _receive(self) -> None:
        sock = self._sock
        recvfrom = sock.recvfrom
        deliver = self._on_datagram
        stun = self.stun
        while True:
            await trio.lowlevel.wait_readable(sock)
            self._draining = True
            try:
                for _ in range(DRAIN_MAX):
                    try:
                        data, addr = recvfrom(RECV_SIZE)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # ICMP errors surface here on Linux
                        log.debug("udp receive error: %s", exc)
                        continue
                    self.received += 1
                    # No SIP message starts with a control character.
                    if stun and data[:1] < b"\x20" and is_stun(data):
                        self._answer_stun(data, addr[:2])
                        continue
                    deliver(data, addr[:2])
            finally:
                self._draining = False
                self.flush()
            await trio.lowlevel.checkpoint()

    async def _flush_held(self) -> None:
        """Write what other tasks held, once their scheduler batch is over
        (a task woken now runs after the batch's other tasks)."""
        while True:
            await self._flush_wake.wait()
            self._flush_wake = trio.Event()
            self.flush()

    def _answer_stun(self, data: bytes, source: tuple[str, int]) -> None:
        answer = binding_response(data, source)
        if answer is None:  # a response, an indication, a bad FINGERPRINT...
            self.stun_dropped += 1
        elif self.send(answer, *source):
            self.stun_answered += 1

    def statistics(self) -> dict:
        stats = {"received": self.received, "sent": self.sent, "send_errors": self.send_errors}
        if self.stun:
            stats.update(stun_answered=self.stun_answered, stun_dropped=self.stun_dropped)
        return stats

    def send(self, data: bytes, host: str, port: int) -> bool:
        """Send one datagram: at once outside serve(), else at the end of
        this pass (True then means queued; a failure is counted at the write)."""
        held = self._held
        if held is None:
            if self._flush_wake is None:
                return self._write(data, (host, port))
            held = self._held = []
            if not self._draining:
                self._flush_wake.set()
        held.append((data, (host, port)))
        if len(held) >= FLUSH_AT:
            self.flush()
        return True

    def flush(self) -> None:
        """Write every held datagram now, in the order they were sent."""
        held, self._held = self._held, None
        if held:
            for data, addr in held:
                self._write(data, addr)

    def _write(self, data: bytes, addr: tuple[str, int]) -> bool:
        try:
            self._sock.sendto(data, addr)
            self.sent += 1
            return True
        except OSError as exc:
            self.send_errors += 1
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.debug("udp send to %s:%s failed: %s", addr[0], addr[1], exc)
            return False
