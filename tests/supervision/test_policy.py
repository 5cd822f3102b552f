import itertools

import pytest

from host.supervision.policy import (GIVE_UP, RESTART, RestartPolicy, backoff_delay, decide_restart,
                                     next_retry, plan_restart)


def test_defaults_match_the_documented_budget():
    p = RestartPolicy()
    assert (p.intensity, p.period, p.retry_every) == (5, 10.0, 30.0)
    assert (p.backoff, p.max_backoff) == (0.05, 1.0)


def test_first_restart_is_granted_and_recorded():
    verdict, history = decide_restart(RestartPolicy(), (), 100.0)
    assert verdict is RESTART
    assert history == (100.0,)


def test_gives_up_when_intensity_is_reached_within_period():
    p = RestartPolicy(intensity=3, period=10.0)
    history = ()
    for t in (0.0, 1.0, 2.0):
        verdict, history = decide_restart(p, history, t)
        assert verdict is RESTART
    verdict, after = decide_restart(p, history, 3.0)
    assert verdict is GIVE_UP
    assert after == (0.0, 1.0, 2.0)   # a refused restart is not recorded


def test_old_restarts_fall_out_of_the_window():
    p = RestartPolicy(intensity=2, period=10.0)
    verdict, history = decide_restart(p, (0.0, 5.0), 10.0)   # 0.0 is exactly period old: forgotten
    assert verdict is RESTART
    assert history == (5.0, 10.0)
    verdict, _ = decide_restart(p, (0.5, 5.0), 10.0)          # 0.5 is still inside
    assert verdict is GIVE_UP


def test_zero_intensity_never_restarts():
    assert decide_restart(RestartPolicy(intensity=0), (), 0.0) == (GIVE_UP, ())


def test_history_order_does_not_matter():
    p = RestartPolicy(intensity=2, period=5.0)
    assert decide_restart(p, (4.0, 1.0), 4.5)[0] is GIVE_UP
    assert decide_restart(p, (1.0, 4.0), 4.5)[0] is GIVE_UP


def _model(intensity, period, times):
    """Brute force: a restart at t is allowed when fewer than `intensity`
    granted restarts lie in (t - period, t]."""
    granted, verdicts = [], []
    for t in times:
        if sum(1 for g in granted if t - g < period) < intensity:
            granted.append(t)
            verdicts.append(RESTART)
        else:
            verdicts.append(GIVE_UP)
    return verdicts


@pytest.mark.parametrize("intensity", [0, 1, 2, 3])
def test_agrees_with_brute_force_on_every_small_sequence(intensity):
    period = 3.0
    for times in itertools.combinations_with_replacement(range(8), 5):
        policy = RestartPolicy(intensity=intensity, period=period)
        history, verdicts = (), []
        for t in times:
            verdict, history = decide_restart(policy, history, float(t))
            verdicts.append(verdict)
            assert all(float(t) - h < period for h in history)   # only the window is kept
        assert verdicts == _model(intensity, period, times), times


def test_next_retry():
    assert next_retry(RestartPolicy(retry_every=7.5), 100.0) == 107.5


def test_backoff_is_immediate_first_then_doubles_to_the_cap():
    p = RestartPolicy(backoff=0.05, max_backoff=0.3)
    assert [backoff_delay(p, n) for n in range(6)] == [0.0, 0.05, 0.1, 0.2, 0.3, 0.3]
    assert backoff_delay(RestartPolicy(backoff=0), 3) == 0.0


def test_plan_waits_the_backoff_of_the_restarts_still_in_the_window():
    p = RestartPolicy(intensity=3, period=10.0, retry_every=30.0, backoff=0.1, max_backoff=1.0)
    plans, history = [], ()
    for t in (0.0, 1.0, 2.0, 3.0):
        plan = plan_restart(p, history, t)
        history = plan.history
        plans.append((plan.verdict, plan.delay))
    assert plans == [(RESTART, 0.0), (RESTART, 0.1), (RESTART, 0.2), (GIVE_UP, 30.0)]
    assert history == (0.0, 1.0, 2.0)
    # once the old restarts left the window, the next one is immediate again
    plan = plan_restart(p, history, 20.0)
    assert (plan.verdict, plan.delay, plan.history) == (RESTART, 0.0, (20.0,))


def test_plan_agrees_with_decide_restart():
    p = RestartPolicy(intensity=2, period=3.0)
    for times in itertools.combinations_with_replacement(range(6), 4):
        history = ()
        for t in times:
            plan = plan_restart(p, history, float(t))
            assert (plan.verdict, plan.history) == decide_restart(p, history, float(t))
            history = plan.history


@pytest.mark.parametrize("kwargs", [
    {"intensity": -1}, {"intensity": 1.5}, {"intensity": True},
    {"period": 0}, {"period": -1.0}, {"retry_every": 0}, {"retry_every": "30"},
    {"backoff": -0.1}, {"backoff": True}, {"max_backoff": 0},
])
def test_invalid_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        RestartPolicy(**kwargs)
