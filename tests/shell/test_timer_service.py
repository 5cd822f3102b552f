"""The timer service fires keys in deadline order, on trio's clock."""

import weakref

import trio
import trio.testing

from host.shell import timers
from host.shell.timers import TimerService


async def test_timers_fire_in_deadline_order_even_when_added_out_of_order(autojump_clock):
    fired = []
    service = TimerService(lambda key: fired.append((key, trio.current_time())))
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        start = trio.current_time()
        service.start(5.0, "late")
        service.start(0.5, "early")      # sooner than the one being waited for
        service.start(2.0, "middle")
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [k for k, _ in fired] == ["early", "middle", "late"]
    assert [round(t - start, 3) for _, t in fired] == [0.5, 2.0, 5.0]


async def test_a_timer_started_while_firing_is_kept(autojump_clock):
    fired = []

    def fire(key):
        fired.append(key)
        if key == "first":
            service.start(1.0, "second")

    service = TimerService(fire)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        service.start(1.0, "first")
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert fired == ["first", "second"]
    assert len(service) == 0


async def test_many_timers_at_once_all_fire(autojump_clock):
    fired = []
    service = TimerService(fired.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        for i in range(2000):
            service.start(1.0 + (i % 7) * 0.1, i)
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert sorted(fired) == list(range(2000))


async def test_a_cancelled_timer_never_fires_and_a_restarted_key_fires_once(autojump_clock):
    fired = []
    service = TimerService(lambda key: fired.append((key, trio.current_time())))
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        start = trio.current_time()
        service.start(1.0, "cancelled")
        service.start(5.0, "restarted")
        service.start(2.0, "restarted")    # replaces the 5 s one
        service.start(3.0, "kept")
        service.cancel("cancelled")
        service.cancel("never armed")       # unknown keys are ignored
        assert len(service) == 2
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [(k, round(t - start, 3)) for k, t in fired] == [("restarted", 2.0), ("kept", 3.0)]
    assert len(service) == 0 and service.heap_size == 0


async def test_cancelled_timers_hold_no_key_and_do_not_pile_up(autojump_clock):
    """Timer C runs 180 s: a call that ends cancels it, and the heap must
    not keep 180 s worth of cancelled entries (issue 7 §5)."""
    fired = []
    service = TimerService(fired.append)

    class Call:  # stands in for call state a key must not keep alive
        pass

    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        calls = [Call() for _ in range(20_000)]
        refs = [weakref.ref(c) for c in calls]
        for i, call in enumerate(calls):
            key = ("branch", i, call)
            service.start(180.0, key)
            service.start(0.5, ("live", i)) if i % 10 == 0 else None
            service.cancel(key)
        del calls, call, key
        assert len(service) == 2_000
        # Cancelled entries never outnumber live ones.
        assert service.heap_size <= 2 * len(service)
        await trio.sleep(0.1)  # trio's cancel() of the sleeper holds start()'s frame till it wakes
        assert [i for i, r in enumerate(refs) if r() is not None] == []
        await trio.sleep(1)
        assert len(fired) == 2_000 and len(service) == 0
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    assert len(fired) == 2_000 and service.heap_size == 0


async def test_memory_is_released_as_a_burst_of_timers_ends_and_not_for_small_ones(autojump_clock, monkeypatch):
    released = []
    monkeypatch.setattr(timers, "release_memory", lambda: released.append(len(service)) or 0.0)
    service = TimerService(lambda key: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        peak = timers.RELEASE_MIN_PEAK
        for i in range(peak):
            service.start(180.0, i)
        for i in range(peak - peak // timers.RELEASE_FRACTION):
            service.cancel(i)
        assert released == []              # not yet below 1/8 of the peak
        service.cancel(peak - 1)
        assert released == [peak // timers.RELEASE_FRACTION - 1]
        # The rest of the burst ending: again at each further fall by 8, and
        # at the end.
        for i in range(peak - peak // timers.RELEASE_FRACTION, peak - 1):
            service.cancel(i)
        assert released == [1023, 127, 15, 1, 0]
        # A small burst is not worth a full collection.
        for i in range(1000):
            service.start(1.0, ("small", i))
        await trio.sleep(2)
        assert len(service) == 0 and len(released) == 5
        nursery.cancel_scope.cancel()
