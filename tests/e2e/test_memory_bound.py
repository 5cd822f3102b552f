"""End to end: the server's memory is bounded by the calls in progress (issue 7 §5).

sipp sends floods of INVITEs that nobody answers (the proxy relays them to a
UDP port where nothing listens) to a server running in this process, so its
counters and objects can be read directly. The proxy runs with a small T1
(50 ms) so Timer B and the 408's Timer H/I tails take seconds, not a minute;
Timer C keeps its 180 s, which is the point: before the fix every call left
its 180 s Timer C entry, holding the branch, its context and its messages,
for three minutes after the call was over.

After each flood's transactions are gone: no timer is pending, none of the
call objects is alive (freed by reference counting: the cycle collector is
not needed), and a second flood leaves the process no bigger than the first.
bench/memory.py is the full-size version (20,000 INVITEs at 1,000/s).
"""

from __future__ import annotations

import functools
import gc
import sys
import weakref
from pathlib import Path

import pytest
import trio

from host.shell import server as server_module
from host.shell.server import Server, ServerConfig
from host.sip import transaction as tx
from host.sip.context import Branch, ResponseContext
from host.sip.proxy import ProxyCore
from host.sip.timers import TimerConfig
from tests.e2e import sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None,
                       reason="sipp is not installed (Debian package sip-tester; `make test` installs it)"),
]

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from memory import FLOOD_SCENARIO  # noqa: E402  (one scenario for the bench and this test)

CALLS = 3_000
RATE = 1_000
# 64*T1 = 3.2 s for Timers B and H; T4 (Timer I after the ACK) 0.5 s.
FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.5)
SETTLE = 30.0     # seconds a flood's transactions may take to end on a loaded machine
CALL_KINDS = (ResponseContext, Branch, tx.ServerTransaction, tx.ClientTransaction)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def call_objects() -> int:
    """Live proxy call objects (gc tracks them, dead or alive, until freed)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, CALL_KINDS))


async def test_an_unanswered_flood_leaves_no_timer_no_call_and_a_second_one_no_growth(
        tmp_path, monkeypatch):
    monkeypatch.setattr(server_module, "ProxyCore", functools.partial(ProxyCore, timers=FAST))
    dead = sipp.free_port()
    server = Server(ServerConfig(listen=[("udp", sipp.LOCALHOST, 0)],
                                 relay_to=f"sip:{sipp.LOCALHOST}:{dead}"))
    scenario = tmp_path / "uac_unanswered.xml"
    scenario.write_text(FLOOD_SCENARIO)
    figures = []

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        port = bound[0][2]
        core = server.core
        seen: list = []

        async def watch_one_call():
            # A weak reference to one call's context while it is in progress.
            while not seen:
                for txn in list(core.server_txns.values()):
                    if txn.context is not None and txn.request.method == "INVITE":
                        seen.append(weakref.ref(txn.context))
                        break
                await trio.sleep(0.05)

        before = call_objects()
        nursery.start_soon(watch_one_call)
        for n in (1, 2):
            result = await trio.to_thread.run_sync(functools.partial(
                sipp.run_sipp, str(scenario), tmp_path, name=f"flood{n}", port=sipp.free_port(),
                remote=(sipp.LOCALHOST, port), calls=CALLS, rate=RATE, limit=CALLS, timeout=90))
            assert result.successful == CALLS, result.summary()
            with trio.move_on_after(SETTLE):
                while core.server_txns or core.client_txns:
                    await trio.sleep(0.1)
            stats = server.statistics()
            assert stats["server_transactions"] == 0 and stats["client_transactions"] == 0, stats
            # Every call's Timer C (180 s) was cancelled with its call.
            assert stats["timers"] == 0, stats
            # ... and no cancelled entry is left in the heap to pin memory.
            assert server.timers.heap_size == 0, server.timers.heap_size
            # Freed by reference counting: nothing of the calls is left, and
            # no gc.collect() was needed for that.
            assert call_objects() == before
            figures.append((rss_mb(), sys.getallocatedblocks()))
        assert seen and seen[0]() is None
        nursery.cancel_scope.cancel()

    (rss1, blocks1), (rss2, blocks2) = figures
    # Before the fix each unanswered call kept ~7 KB (~80 blocks) for 180 s:
    # a second flood of 3,000 added ~20 MB and ~250,000 blocks.
    assert blocks2 - blocks1 < 20_000, (blocks1, blocks2)
    assert rss2 - rss1 < 8.0, (rss1, rss2)


async def test_answered_calls_leave_no_timer_and_no_call_once_their_transactions_end(
        tmp_path, monkeypatch):
    """sipp uac -> proxy -> sipp uas, INVITE/180/200/ACK/BYE/200: each call's
    Timer C is cancelled at the 200, not left to run its 180 s."""
    monkeypatch.setattr(server_module, "ProxyCore", functools.partial(ProxyCore, timers=FAST))
    uas_port = sipp.free_port()
    with sipp.start_sipp_server("uas", tmp_path, port=uas_port, timeout=90):
        server = Server(ServerConfig(listen=[("udp", sipp.LOCALHOST, 0)],
                                     relay_to=f"sip:{sipp.LOCALHOST}:{uas_port}"))
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.run)
            core = server.core
            before = call_objects()
            result = await trio.to_thread.run_sync(functools.partial(
                sipp.run_sipp, "uac", tmp_path, name="answered", port=sipp.free_port(),
                remote=(sipp.LOCALHOST, bound[0][2]), calls=1_000, rate=250, timeout=60))
            assert result.successful == 1_000, result.summary()
            with trio.move_on_after(SETTLE):
                while core.server_txns or core.client_txns:
                    await trio.sleep(0.1)
            stats = server.statistics()
            assert stats["server_transactions"] == 0 and stats["client_transactions"] == 0, stats
            assert stats["timers"] == 0, stats
            assert call_objects() == before
            nursery.cancel_scope.cancel()
