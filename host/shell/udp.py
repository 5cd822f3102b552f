"""UDP transport: one non-blocking socket, drained after each wake-up.

FACTS.md: one `await recvfrom()` per datagram tops out near 40k packets/s;
waiting once for readability and then draining the socket reaches the speed of
a blocking loop. Sends go straight to the kernel; a full send buffer drops the
datagram, which SIP over UDP already tolerates through retransmission.

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
        sock = self._sock
        task_status.started((self.host, self.port))
        recvfrom = sock.recvfrom
        deliver = self._on_datagram
        stun = self.stun
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
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
                await trio.lowlevel.checkpoint()
        finally:
            sock.close()

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
        try:
            self._sock.sendto(data, (host, port))
            self.sent += 1
            return True
        except OSError as exc:
            self.send_errors += 1
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.debug("udp send to %s:%s failed: %s", host, port, exc)
            return False
