"""Timer durations derive from T1/T2/T4 as RFC 3261 §17 / Appendix A and RFC 6026 say."""

import __future__

import pytest

import host.sip.timers as timers_module
from host.sip.timers import DEFAULT_TIMERS, TimerConfig


def test_defaults_match_rfc_table():
    c = TimerConfig()
    assert (c.t1, c.t2, c.t4) == (0.5, 4.0, 5.0)
    assert c.a() == 0.5
    assert c.b() == 32.0
    assert c.timer_c() == 180.0
    assert c.d(reliable=False) == 32.0 and c.d(reliable=True) == 0.0
    assert c.e() == 0.5
    assert c.f() == 32.0
    assert c.g() == 0.5
    assert c.h() == 32.0
    assert c.i(reliable=False) == 5.0 and c.i(reliable=True) == 0.0
    assert c.j(reliable=False) == 32.0 and c.j(reliable=True) == 0.0
    assert c.k(reliable=False) == 5.0 and c.k(reliable=True) == 0.0
    assert c.l() == 32.0
    assert c.m() == 32.0
    assert DEFAULT_TIMERS == c


def test_durations_follow_t1_t2_t4():
    c = TimerConfig(t1=0.1, t2=0.3, t4=2.0)
    assert c.b() == c.f() == c.h() == c.l() == c.m() == pytest.approx(6.4)
    assert c.j(False) == pytest.approx(6.4)
    assert c.i(False) == c.k(False) == 2.0
    assert c.e_proceeding() == 0.3
    # Timer D is a fixed floor (">= 32 s"), not a multiple of T1.
    assert c.d(False) == 32.0


@pytest.mark.parametrize("timer, expected", [
    # A doubles without a cap (Timer B bounds it).
    ("A", (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)),
    # E and G double, capped at T2.
    ("E", (0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0)),
    ("G", (0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0)),
])
def test_retransmit_schedules(timer, expected):
    assert TimerConfig().retransmit_schedule(timer, 7) == expected


def test_schedule_cap_follows_t2():
    assert TimerConfig(t1=1.0, t2=2.5).retransmit_schedule("E", 4) == (1.0, 2.0, 2.5, 2.5)


def test_frozen():
    c = TimerConfig()
    with pytest.raises(AttributeError):
        c.t1 = 1.0
    with pytest.raises(AttributeError):
        c.new_field = 1
    with pytest.raises(AttributeError):
        del c.t2
    assert c.t1 == 0.5


@pytest.mark.parametrize("kwargs", [dict(t1=0), dict(t1=1.0, t2=0.5), dict(t4=-1), dict(c=0)])
def test_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        TimerConfig(**kwargs)


def test_equality_and_hash():
    assert TimerConfig(t1=0.2) == TimerConfig(t1=0.2)
    assert TimerConfig(t1=0.2) != TimerConfig(t1=0.3)
    assert len({TimerConfig(), TimerConfig(), TimerConfig(t4=1.0)}) == 2


def test_no_module_level_mutable_state():
    immutable = (str, int, float, tuple, frozenset, type(None), TimerConfig)
    for name, value in vars(timers_module).items():
        if name.startswith("__") or callable(value) or isinstance(value, __future__._Feature):
            continue
        assert isinstance(value, immutable), f"{name} is a mutable module global"
