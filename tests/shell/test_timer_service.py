"""The timer service fires keys in deadline order, on trio's clock."""

import trio
import trio.testing

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
