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
                 core: str, local: tuple[str, str, int], salt: str = ""):
        self.store = store
        self.send = send
        self.core = core
        self.schedule = KeepaliveSchedule(interval, MISSES, clock=trio.current_time, local=local,
                                          from_uri=f"sip:keepalive@{local[1]}",
                                          salt=salt + os.urandom(4).hex())
        self._wake = trio.Event()
        # Who registered over each flow: a phone with two lines behind one
        # NAT mapping has two AoRs on one flow, pinged once, dropped together.
        self._owners: dict[tuple, set[tuple[str, str]]] = {}
        self.pings = self.answers = self.dropped = 0

    def bindings_changed(self, aor: str, before: list, after: list) -> None:
        """The location service saved `aor`: follow its NATed UDP flows that
        this core owns (the others are pinged by their own core)."""
        schedule, owners = self.schedule, self._owners
        new = {(b.source, b.contact) for b in after
               if b.nat and b.source[0] == "udp" and b.core == self.core}
        for flow, contact in new:   # first, so a refreshed flow keeps its phase
            owners.setdefault(flow, set()).add((aor, contact))
            schedule.add(flow, aor, contact)
        for flow, contact in {(b.source, b.contact) for b in before} - new:
            users = owners.get(flow)
            if users is not None:
                users.discard((aor, contact))
                if not users:
                    del owners[flow]
                    schedule.remove(flow)
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
            for flow, _, _ in schedule.dead():
                for aor, contact in sorted(self._owners.pop(flow, ())):
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
