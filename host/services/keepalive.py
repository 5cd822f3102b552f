"""Keeping NATed UDP bindings reachable: the trio side of host/sip/keepalive.py.

A UA behind a NAT is reachable over UDP only while the NAT keeps its
mapping, which it drops after some idle seconds. The core that owns such a
binding's flow pings it with OPTIONS (spread over the interval by the
schedule), which keeps the mapping open; a flow that stops answering is
gone, and its bindings are removed so calls do not ring into nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import trio

from host.sip.keepalive import KeepaliveSchedule
from host.storage import Store

log = logging.getLogger("babelsip.keepalive")

MISSES = 3   # pings unanswered in a row before a flow counts as gone


class KeepaliveService:
    def __init__(self, interval: float, store: Store, send: Callable[[bytes, str, str, int], None], *,
                 core: str, local: tuple[str, str, int]):
        self.store = store
        self.send = send
        self.core = core
        self.schedule = KeepaliveSchedule(interval, MISSES, clock=trio.current_time, local=local,
                                          from_uri=f"sip:keepalive@{local[1]}",
                                          salt=os.urandom(4).hex())
        self._wake = trio.Event()
        self.pings = self.answers = self.dropped = 0

    def bindings_changed(self, aor: str, before: list, after: list) -> None:
        """The location service saved `aor`: follow its NATed UDP flows that
        this core owns (the others are pinged by their own core)."""
        schedule = self.schedule
        kept = {}
        for b in after:
            if b.nat and b.source[0] == "udp" and b.core == self.core:
                kept[b.source] = b
        for b in before:
            if b.source not in kept and b.source in schedule:
                schedule.remove(b.source)
        for flow, b in kept.items():
            schedule.add(flow, aor, b.contact)
        self._wake.set()

    def answered(self, branch: str) -> None:
        self.answers += 1
        self.schedule.answered(branch)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        schedule = self.schedule
        while True:
            now = trio.current_time()
            for ping in schedule.due(now):
                self.pings += 1
                self.send(ping.request, *ping.flow)
            for flow, aor, contact in schedule.dead():
                await self._drop(flow, aor, contact)
            next_due = schedule.next_due()
            self._wake = trio.Event()
            with trio.move_on_at(next_due if next_due is not None else now + schedule.interval):
                await self._wake.wait()

    async def _drop(self, flow, aor: str, contact: str) -> None:
        def without(current):
            kept = [b for b in current if not (b.source == flow and b.contact == contact)]
            return kept, len(current) - len(kept)
        try:
            removed = await self.store.update_bindings(aor, without)
        except Exception:
            log.exception("keepalive: cannot drop %s of %s", contact, aor)
            return
        if removed:
            self.dropped += removed
            log.info("keepalive: %s of %s stopped answering at %s:%s:%d; binding removed",
                     contact, aor, *flow)

    def statistics(self) -> dict:
        return {"flows": len(self.schedule), "pings": self.pings, "answers": self.answers,
                "dropped": self.dropped}
