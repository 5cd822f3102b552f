"""DialogMirror (host/services/dialogs.py): the core's DialogChange actions
written to the store in order, profiles counted in on "trying" and out on
"ended"; and KeepaliveService (host/services/keepalive.py): which bindings it
follows, its pings, and the bindings it removes when a flow stops answering."""

from __future__ import annotations

import pytest
import trio

from host.services.dialogs import UNLIMITED_TTL, DialogMirror
from host.services.keepalive import MISSES, KeepaliveService
from host.sip.actions import DialogChange
from host.sip.registrar import Binding
from host.storage.memory import MemoryStore

CALLER = "sip:alice@example.com"


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def record(dialog_id: str, state: str, **extra) -> dict:
    return {"id": dialog_id, "state": state, "call_id": dialog_id + "@x", "from": CALLER, **extra}


async def drained(mirror: DialogMirror, timeout: float = 2.0) -> None:
    with trio.fail_after(timeout):
        while mirror.queued:
            await trio.sleep(0.001)
        await trio.sleep(0.001)   # the last change is taken off the queue before it is applied


async def test_profiles_counted_in_then_out_and_records_follow_the_call():
    clock = Clock()
    store = MemoryStore(clock=clock)
    mirror = DialogMirror(store)
    profiles = {"caller": CALLER, "trunk": "t1"}
    async with trio.open_nursery() as nursery:
        await nursery.start(mirror.run)
        mirror.submit(DialogChange("trying", record("d1", "trying"), profiles))
        mirror.submit(DialogChange("trying", record("d2", "trying"), {"caller": CALLER}))
        await drained(mirror)
        assert await store.profile_count("caller", CALLER) == 2
        assert await store.profile_count("trunk", "t1") == 1
        assert sorted(r["id"] for r in await store.dialogs()) == ["d1", "d2"]

        # Later states rewrite the record and never count the call twice.
        mirror.submit(DialogChange("early", record("d1", "early"), profiles))
        mirror.submit(DialogChange("confirmed", record("d1", "confirmed"), profiles))
        await drained(mirror)
        assert await store.profile_count("caller", CALLER) == 2
        assert (await store.get_dialog("d1"))["state"] == "confirmed"

        mirror.submit(DialogChange("ended", record("d1", "ended"), profiles))
        await drained(mirror)
        assert await store.profile_count("caller", CALLER) == 1
        assert await store.profile_count("trunk", "t1") == 0
        assert [r["id"] for r in await store.dialogs()] == ["d2"]
        assert await store.get_dialog("d1") is None

        mirror.submit(DialogChange("ended", record("d2", "ended"), {"caller": CALLER}))
        await drained(mirror)
        assert await store.profile_count("caller", CALLER) == 0
        assert await store.dialogs() == []
        assert mirror.statistics() == {"queued": 0, "dropped": 0, "errors": 0, "coalesced": 1}
        nursery.cancel_scope.cancel()


async def test_a_batch_writes_each_dialog_once_and_a_call_over_within_it_not_at_all():
    store = MemoryStore(clock=Clock())
    mirror = DialogMirror(store)
    profiles = {"caller": CALLER}
    async with trio.open_nursery() as nursery:
        await nursery.start(mirror.run)
        # One batch: d1 rings and is answered, d2 begins and ends, d3 begins.
        for dialog_id, state in [("d1", "trying"), ("d2", "trying"), ("d1", "early"),
                                 ("d2", "ended"), ("d1", "confirmed"), ("d3", "trying")]:
            mirror.submit(DialogChange(state, record(dialog_id, state), profiles))
        await drained(mirror)
        assert sorted(r["id"] for r in await store.dialogs()) == ["d1", "d3"]
        assert (await store.get_dialog("d1"))["state"] == "confirmed"
        assert await store.get_dialog("d2") is None
        assert await store.profile_count("caller", CALLER) == 2   # d1 and d3, once each
        assert mirror.statistics()["coalesced"] == 4

        # A dialog written in an earlier batch is still removed when it ends.
        mirror.submit(DialogChange("ended", record("d1", "ended"), profiles))
        await drained(mirror)
        assert [r["id"] for r in await store.dialogs()] == ["d3"]
        assert await store.profile_count("caller", CALLER) == 1
        nursery.cancel_scope.cancel()


async def test_a_call_whose_end_is_never_seen_heals_after_its_ttl():
    clock = Clock()
    store = MemoryStore(clock=clock)
    mirror = DialogMirror(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(mirror.run)
        mirror.submit(DialogChange("trying", record("lim", "trying", max_duration=2), {"caller": CALLER}))
        mirror.submit(DialogChange("trying", record("free", "trying"), {"caller": "sip:bob@x"}))
        await drained(mirror)
        # A limited call is kept its limit + 600 s; an unlimited one 12 h.
        clock.t += 2 + 600 - 1
        assert await store.profile_count("caller", CALLER) == 1
        clock.t += 2
        assert await store.profile_count("caller", CALLER) == 0
        assert [r["id"] for r in await store.dialogs()] == ["free"]
        clock.t += UNLIMITED_TTL
        assert await store.profile_count("caller", "sip:bob@x") == 0
        assert await store.dialogs() == []
        nursery.cancel_scope.cancel()


class FailingStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.fail = True

    async def put_dialog(self, dialog_id, record, ttl):
        if self.fail:
            raise ConnectionError("store down")
        await super().put_dialog(dialog_id, record, ttl)


async def test_a_failing_store_is_counted_and_the_next_change_goes_through():
    store = FailingStore()
    mirror = DialogMirror(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(mirror.run)
        mirror.submit(DialogChange("trying", record("d1", "trying"), {"caller": CALLER}))
        await drained(mirror)
        assert mirror.errors == 1 and await store.dialogs() == []
        store.fail = False
        mirror.submit(DialogChange("confirmed", record("d1", "confirmed"), {"caller": CALLER}))
        await drained(mirror)
        assert [r["state"] for r in await store.dialogs()] == ["confirmed"]
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ keepalive

LOCAL = ("udp", "192.0.2.1", 5060)
AOR = "sip:alice@example.com"


def binding(contact: str, source, *, nat: bool, core: str = "core-A") -> Binding:
    return Binding(contact, 2e9, 1.0, "c@ua", 1, source, (), "ua", "", 0, core, 1.0, nat)


def service(interval: float = 30.0, store=None):
    sent = []
    ka = KeepaliveService(interval, MemoryStore() if store is None else store, lambda data, *flow: sent.append((data, flow)),
                          core="core-A", local=LOCAL)
    return ka, sent


async def test_bindings_changed_follows_only_natted_udp_flows_of_this_core():
    ka, _ = service()
    natted = binding("sip:alice@10.0.0.5", ("udp", "203.0.113.7", 40000), nat=True)
    public = binding("sip:alice@192.0.2.10", ("udp", "192.0.2.10", 5060), nat=False)
    tcp = binding("sip:alice@10.0.0.6;transport=tcp", ("tcp", "203.0.113.8", 40001), nat=True)
    other_core = binding("sip:alice@10.0.0.7", ("udp", "203.0.113.9", 40002), nat=True, core="core-B")
    ka.bindings_changed(AOR, [], [natted, public, tcp, other_core])
    assert len(ka.schedule) == 1
    assert natted.source in ka.schedule
    for b in (public, tcp, other_core):
        assert b.source not in ka.schedule
    # The binding goes away (de-registered): its flow is no longer pinged.
    ka.bindings_changed(AOR, [natted, public, tcp, other_core], [public])
    assert len(ka.schedule) == 0


async def test_pings_go_to_the_flow_and_a_silent_flow_loses_its_binding(autojump_clock):
    store = MemoryStore()
    flow = ("udp", "203.0.113.7", 40000)
    natted = binding("sip:alice@10.0.0.5", flow, nat=True)
    kept = binding("sip:alice@192.0.2.10", ("udp", "192.0.2.10", 5060), nat=False)
    await store.update_bindings(AOR, lambda cur: ([natted, kept], None))
    ka, sent = service(interval=10.0, store=store)
    async with trio.open_nursery() as nursery:
        await nursery.start(ka.run)
        ka.bindings_changed(AOR, [], [natted, kept])
        await trio.sleep(10.5)
        assert sent, "no ping within one interval"
        data, to = sent[0]
        assert to == flow
        assert data.startswith(b"OPTIONS sip:alice@10.0.0.5 SIP/2.0\r\n")
        # Nobody answers: after MISSES unanswered pings the binding is removed.
        await trio.sleep(10.0 * (MISSES + 1))
        assert [b.contact for b in await store.bindings(AOR)] == ["sip:alice@192.0.2.10"]
        assert ka.dropped == 1 and len(ka.schedule) == 0
        nursery.cancel_scope.cancel()


async def test_an_answering_flow_keeps_its_binding(autojump_clock):
    import re

    store = MemoryStore()
    flow = ("udp", "203.0.113.7", 40000)
    natted = binding("sip:alice@10.0.0.5", flow, nat=True)
    await store.update_bindings(AOR, lambda cur: ([natted], None))
    ka, sent = service(interval=10.0, store=store)
    async with trio.open_nursery() as nursery:
        await nursery.start(ka.run)
        ka.bindings_changed(AOR, [], [natted])
        answered = 0
        for _ in range(MISSES + 3):
            await trio.sleep(10.0)
            while answered < len(sent):
                branch = re.search(rb"branch=([^;\r\n]+)", sent[answered][0]).group(1).decode()
                ka.answered(branch)
                answered += 1
        assert answered >= MISSES + 1
        assert [b.contact for b in await store.bindings(AOR)] == ["sip:alice@10.0.0.5"]
        assert ka.dropped == 0 and flow in ka.schedule
        nursery.cancel_scope.cancel()


# Two AoRs registered over one NATed flow (a phone with two lines behind one
# NAT mapping): the schedule holds one entry per flow, keyed by flow only.

async def test_flow_shared_by_two_aors_is_still_pinged_when_one_deregisters():
    ka, _ = service()
    flow = ("udp", "203.0.113.7", 40000)
    line1 = binding("sip:alice@10.0.0.5", flow, nat=True)
    line2 = binding("sip:bob@10.0.0.5", flow, nat=True)
    ka.bindings_changed("sip:alice@example.com", [], [line1])
    ka.bindings_changed("sip:bob@example.com", [], [line2])
    assert flow in ka.schedule
    # bob de-registers; alice's binding on the same flow is still there.
    ka.bindings_changed("sip:bob@example.com", [line2], [])
    assert flow in ka.schedule


async def test_dead_flow_shared_by_two_aors_drops_both_bindings(autojump_clock):
    store = MemoryStore()
    flow = ("udp", "203.0.113.7", 40000)
    line1 = binding("sip:alice@10.0.0.5", flow, nat=True)
    line2 = binding("sip:bob@10.0.0.5", flow, nat=True)
    await store.update_bindings("sip:alice@example.com", lambda cur: ([line1], None))
    await store.update_bindings("sip:bob@example.com", lambda cur: ([line2], None))
    ka, _ = service(interval=10.0, store=store)
    async with trio.open_nursery() as nursery:
        await nursery.start(ka.run)
        ka.bindings_changed("sip:alice@example.com", [], [line1])
        ka.bindings_changed("sip:bob@example.com", [], [line2])
        await trio.sleep(10.0 * (MISSES + 2))
        assert await store.bindings("sip:bob@example.com") == []
        assert await store.bindings("sip:alice@example.com") == []
        nursery.cancel_scope.cancel()
