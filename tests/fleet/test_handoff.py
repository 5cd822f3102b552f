"""host/fleet/handoff.py over real socket pairs, in one trio loop."""

from __future__ import annotations

import socket

import trio

from host.fleet.handoff import Handoff


class Worker:
    def __init__(self, index: int, peers: dict[int, socket.socket], holds=()):
        self.messages, self.sends = [], []
        self.holds = list(holds)
        self.handoff = Handoff(index, peers, on_message=lambda *m: self.messages.append(m),
                               on_send=lambda *s: self.sends.append(s), held=lambda: self.holds)


async def settle(condition) -> None:
    with trio.fail_after(2):
        while not condition():
            await trio.sleep(0.005)


async def test_messages_sends_and_connections_go_between_two_workers():
    a_end, b_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a, b = Worker(0, {1: a_end}), Worker(1, {0: b_end}, holds=[("tcp", "10.0.0.7", 5070)])
    async with trio.open_nursery() as nursery:
        await nursery.start(a.handoff.run)
        await nursery.start(b.handoff.run)
        # Both said hello: each told the other what it holds.
        await settle(lambda: a.handoff.holder("tcp", "10.0.0.7", 5070) == 1)

        a.handoff.hand(1, b"INVITE sip:x SIP/2.0\r\n\r\n", "tcp", ("192.0.2.1", 40000))
        await settle(lambda: b.messages)
        assert b.messages == [(b"INVITE sip:x SIP/2.0\r\n\r\n", "tcp", ("192.0.2.1", 40000))]

        a.handoff.holding("tcp", ("192.0.2.1", 40000), True)
        await settle(lambda: b.handoff.holder("tcp", "192.0.2.1", 40000) == 0)
        b.handoff.send_via(0, b"SIP/2.0 200 OK\r\n\r\n", "tcp", "192.0.2.1", 40000)
        await settle(lambda: a.sends)
        assert a.sends == [(b"SIP/2.0 200 OK\r\n\r\n", "tcp", "192.0.2.1", 40000)]

        a.handoff.holding("tcp", ("192.0.2.1", 40000), False)
        await settle(lambda: b.handoff.holder("tcp", "192.0.2.1", 40000) is None)
        nursery.cancel_scope.cancel()
    assert a.handoff.statistics()["handed"] == 1 and b.handoff.statistics()["received"] == 1
    assert b.handoff.statistics()["sent_via"] == 1 and a.handoff.statistics()["sends_received"] == 1


async def test_connections_are_known_by_transport_and_address_together():
    """A TLS and a TCP connection from one address and port are two flows:
    each is sent through its own holder, and one ending leaves the other."""
    a_end, b_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a_end2, c_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a = Worker(0, {1: a_end, 2: a_end2})
    b = Worker(1, {0: b_end}, holds=[("tls", "192.0.2.9", 5061)])
    c = Worker(2, {0: c_end}, holds=[("tcp", "192.0.2.9", 5061)])
    async with trio.open_nursery() as nursery:
        for worker in (a, b, c):
            await nursery.start(worker.handoff.run)
        await settle(lambda: a.handoff.holder("tls", "192.0.2.9", 5061) == 1
                     and a.handoff.holder("tcp", "192.0.2.9", 5061) == 2)
        assert a.handoff.holder("ws", "192.0.2.9", 5061) is None
        a.handoff.send_via(1, b"over tls", "tls", "192.0.2.9", 5061)
        a.handoff.send_via(2, b"over tcp", "tcp", "192.0.2.9", 5061)
        await settle(lambda: b.sends and c.sends)
        assert b.sends == [(b"over tls", "tls", "192.0.2.9", 5061)]
        assert c.sends == [(b"over tcp", "tcp", "192.0.2.9", 5061)]
        # The TLS one ends; the TCP one is still held where it was.
        b.handoff.holding("tls", ("192.0.2.9", 5061), False)
        await settle(lambda: a.handoff.holder("tls", "192.0.2.9", 5061) is None)
        assert a.handoff.holder("tcp", "192.0.2.9", 5061) == 2
        # WebSocket flows travel the same way.
        c.handoff.holding("wss", ("198.51.100.4", 40001), True)
        await settle(lambda: a.handoff.holder("wss", "198.51.100.4", 40001) == 2)
        nursery.cancel_scope.cancel()


async def test_a_restarted_worker_is_forgotten_what_it_held_and_told_what_others_hold():
    a_end, b_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b = Worker(1, {0: b_end}, holds=[("ws", "10.0.0.8", 5080)])
    async with trio.open_nursery() as nursery:
        await nursery.start(b.handoff.run)
        first = Worker(0, {1: a_end})
        async with trio.open_nursery() as inner:
            await inner.start(first.handoff.run)
            first.handoff.holding("tls", ("192.0.2.2", 1234), True)
            await settle(lambda: b.handoff.holder("tls", "192.0.2.2", 1234) == 0)
            inner.cancel_scope.cancel()
        # The same socket end, a new process: its hello clears the old holdings.
        again = Worker(0, {1: a_end})
        await nursery.start(again.handoff.run)
        await settle(lambda: b.handoff.holder("tls", "192.0.2.2", 1234) is None)
        await settle(lambda: again.handoff.holder("ws", "10.0.0.8", 5080) == 1)
        nursery.cancel_scope.cancel()


async def test_garbage_on_the_pair_is_counted_not_fatal():
    a_end, b_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b = Worker(1, {0: b_end})
    async with trio.open_nursery() as nursery:
        await nursery.start(b.handoff.run)
        a_end.send(b"\x00")
        a_end.send(b"Z\x00\x00\x00\x00")
        await settle(lambda: b.handoff.statistics()["bad_frames"] == 2)
        nursery.cancel_scope.cancel()
