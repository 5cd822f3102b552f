"""The UDP transport holds its sends until the end of the pass that made
them (host/shell/udp.py): a loopback sendto delivers at once, so a reply the
peer cannot read yet was held, and one it can read was written."""

import socket

import trio
import trio.testing

from host.shell import udp as udp_module
from host.shell.udp import FLUSH_AT, UdpTransport


def _peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _readable(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(100))
        except BlockingIOError:
            return got


async def _wait_for(sock: socket.socket, count: int) -> list[bytes]:
    got = []
    with trio.fail_after(5):
        while len(got) < count:
            got += _readable(sock)
            await trio.sleep(0.005)
    return got


async def test_replies_made_in_one_drain_go_out_together_at_its_end_in_order():
    peer = _peer()
    seen_early = []

    def on_datagram(data, source):
        # Every earlier reply of this drain is still held: the peer has none.
        seen_early.extend(_readable(peer))
        udp.send(b"re:" + data, *source)

    udp = UdpTransport("127.0.0.1", 0, on_datagram)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(udp.serve)
        for i in range(10):   # queued before the transport wakes: one drain
            peer.sendto(b"%d" % i, (host, port))
        got = await _wait_for(peer, 10)
        nursery.cancel_scope.cancel()
    assert seen_early == []
    assert got == [b"re:%d" % i for i in range(10)]
    assert udp.sent == 10
    peer.close()


async def test_a_long_drain_writes_every_flush_at_datagrams():
    peer = _peer()
    readable_before = []

    def on_datagram(data, source):
        readable_before.append(len(_readable(peer)))
        udp.send(data, *source)

    udp = UdpTransport("127.0.0.1", 0, on_datagram)
    total = 3 * FLUSH_AT + 5
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(udp.serve)
        for i in range(total):
            peer.sendto(b"%d" % i, (host, port))
        with trio.fail_after(5):
            while len(readable_before) < total:
                await trio.sleep(0.005)
        rest = await _wait_for(peer, total - sum(readable_before))
        nursery.cancel_scope.cancel()
    # The peer could read FLUSH_AT replies at once, right after each
    # FLUSH_AT-th datagram of the drain, and nothing in between.
    assert [n for n in readable_before if n] == [FLUSH_AT] * 3
    assert [i for i, n in enumerate(readable_before) if n] == [FLUSH_AT, 2 * FLUSH_AT, 3 * FLUSH_AT]
    assert sum(readable_before) + len(rest) == total


async def test_sends_of_other_tasks_go_out_when_their_batch_is_over():
    peer = _peer()
    udp = UdpTransport("127.0.0.1", 0, lambda data, source: None)
    target = peer.getsockname()
    async with trio.open_nursery() as nursery:
        await nursery.start(udp.serve)
        assert udp.send(b"one", *target)
        assert udp.send(b"two", *target)
        assert _readable(peer) == []          # held: this task has not yielded
        await trio.testing.wait_all_tasks_blocked()
        assert _readable(peer) == [b"one", b"two"]
        nursery.cancel_scope.cancel()
    peer.close()


async def test_held_datagrams_are_written_when_the_transport_stops():
    peer = _peer()
    udp = UdpTransport("127.0.0.1", 0, lambda data, source: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(udp.serve)
        udp.send(b"last words", *peer.getsockname())
        nursery.cancel_scope.cancel()
    assert _readable(peer) == [b"last words"]
    peer.close()


def test_outside_serve_a_send_is_written_at_once_and_reports_failure():
    peer = _peer()
    udp = UdpTransport("127.0.0.1", 0, lambda data, source: None)
    udp.bind()
    assert udp.send(b"now", *peer.getsockname())
    assert _readable(peer) == [b"now"]
    assert not udp.send(b"x" * 70000, *peer.getsockname())   # larger than a datagram
    assert (udp.sent, udp.send_errors) == (1, 1)
    udp._sock.close()
    peer.close()


async def test_a_failed_held_write_is_counted_and_the_rest_still_go():
    assert udp_module.FLUSH_AT > 3   # the three sends below are held as one batch
    peer = _peer()
    udp = UdpTransport("127.0.0.1", 0, lambda data, source: None)
    target = peer.getsockname()
    async with trio.open_nursery() as nursery:
        await nursery.start(udp.serve)
        udp.send(b"before", *target)
        udp.send(b"x" * 70000, *target)   # EMSGSIZE at the write
        udp.send(b"after", *target)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert _readable(peer) == [b"before", b"after"]
    assert (udp.sent, udp.send_errors) == (2, 1)
    peer.close()
