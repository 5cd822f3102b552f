"""A worker's side of the handoff: socket pairs to every other worker.

The parent made one AF_UNIX datagram socket pair per pair of workers and
keeps its ends, so a restarted worker gets the same sockets back. A
connected pair is bounded by its buffer in bytes, not by the kernel's
short queue of unconnected datagrams (net.unix.max_dgram_qlen), and each
datagram is one whole frame. A frame that does not fit (the peer is not
reading) is dropped and counted, as a full UDP socket would drop it: SIP
retransmits.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Callable

import trio

from .ownership import DROPS, HELLO, HOLDS, MESSAGE, SEND, frame, unframe

log = logging.getLogger("babelsip.fleet")

DRAIN_MAX = 256
FRAME_MAX = 256 * 1024   # above any SIP message the transports accept


class Handoff:
    """`on_message(data, transport, src)` processes a message handed over;
    `on_send(data, transport, host, port)` sends on a stream connection this
    worker holds; `held()` lists the connections it holds, as (transport,
    host, port), told to a restarted peer. A connection is known by its
    transport and remote address together (ownership.py)."""

    def __init__(self, index: int, peers: dict[int, socket.socket], *,
                 on_message: Callable[[bytes, str, tuple[str, int]], None],
                 on_send: Callable[[bytes, str, str, int], None],
                 held: Callable[[], list[tuple[str, str, int]]]):
        self.index = index
        self.peers = peers
        self._on_message, self._on_send, self._held = on_message, on_send, held
        self.holders: dict[tuple[str, str, int], int] = {}   # (transport, host, port) -> worker holding it
        self.handed = self.received = self.dropped = self.bad_frames = 0
        self.sent_via = self.sends_received = 0

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for peer, sock in self.peers.items():
                sock.setblocking(False)
                nursery.start_soon(self._receive, peer, sock)
            for peer in self.peers:
                self._send(peer, frame(HELLO))
            task_status.started()

    # ----------------------------------------------------------- sending
    def hand(self, owner: int, data: bytes, transport: str, src: tuple[str, int]) -> None:
        self.handed += 1
        self._send(owner, frame(MESSAGE, transport, src[0], src[1], data))

    def send_via(self, holder: int, data: bytes, transport: str, host: str, port: int) -> None:
        self.sent_via += 1
        self._send(holder, frame(SEND, transport, host, port, data))

    def holding(self, transport: str, remote: tuple[str, int], held: bool) -> None:
        """This worker opened or lost a connection: tell the others."""
        message = frame(HOLDS if held else DROPS, transport, remote[0], remote[1])
        for peer in self.peers:
            self._send(peer, message)

    def holder(self, transport: str, host: str, port: int) -> int | None:
        return self.holders.get((transport, host, port))

    def _send(self, peer: int, datagram: bytes) -> None:
        try:
            self.peers[peer].send(datagram)
        except OSError as exc:
            self.dropped += 1
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED):
                log.debug("handoff to worker %d failed: %s", peer, exc)

    # --------------------------------------------------------- receiving
    async def _receive(self, peer: int, sock: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(DRAIN_MAX):
                try:
                    datagram = sock.recv(FRAME_MAX)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    log.debug("handoff from worker %d: %s", peer, exc)
                    break
                self._dispatch(peer, datagram)
            await trio.lowlevel.checkpoint()

    def _dispatch(self, peer: int, datagram: bytes) -> None:
        try:
            kind, transport, host, port, data = unframe(datagram)
        except (ValueError, UnicodeDecodeError):
            self.bad_frames += 1
            return
        if kind == MESSAGE:
            self.received += 1
            self._on_message(data, transport, (host, port))
        elif kind == SEND:
            self.sends_received += 1
            self._on_send(data, transport, host, port)
        elif kind == HOLDS:
            self.holders[(transport, host, port)] = peer
        elif kind == DROPS:
            if self.holders.get((transport, host, port)) == peer:
                del self.holders[(transport, host, port)]
        elif kind == HELLO:
            # The peer restarted: what it held died with its old process.
            for remote in [r for r, w in self.holders.items() if w == peer]:
                del self.holders[remote]
            for transport, host, port in self._held():
                self._send(peer, frame(HOLDS, transport, host, port))
        else:
            self.bad_frames += 1

    def statistics(self) -> dict:
        return {"handed": self.handed, "received": self.received, "dropped": self.dropped,
                "sent_via": self.sent_via, "sends_received": self.sends_received,
                "bad_frames": self.bad_frames, "remote_connections": len(self.holders)}
