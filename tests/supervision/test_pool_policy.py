"""The worker pool's restart decisions, through its RestartPolicy (no processes).

`runtimes.jsonline.pool` restarts each worker or logic-server connection with
`plan_restart(WORKER_RESTART, history, now)`; these tests replay the
situations its slot loop meets and check what the policy makes it do.
"""

from host.supervision.policy import GIVE_UP, RESTART, RestartPolicy, plan_restart
from runtimes.jsonline.pool import WORKER_RESTART, PooledRuntime, restart_delay


def replay(policy, times):
    """(verdict, delay) for a slot whose session ends at each of `times`."""
    history, out = (), []
    for t in times:
        plan = plan_restart(policy, history, t)
        history = plan.history
        out.append((plan.verdict, plan.delay))
    return out


def test_the_pool_supervises_with_the_worker_policy():
    assert PooledRuntime.restart_policy is WORKER_RESTART
    assert isinstance(WORKER_RESTART, RestartPolicy)


def test_a_worker_killed_once_restarts_at_once():
    assert replay(WORKER_RESTART, [100.0]) == [(RESTART, 0.0)]


def test_a_worker_dying_at_start_backs_off_then_fails_the_route():
    # each start dies at once: the slot loop ends again right after each wait
    t, times, history = 0.0, [], ()
    for _ in range(WORKER_RESTART.intensity + 2):
        times.append(t)
        plan = plan_restart(WORKER_RESTART, history, t)
        history = plan.history
        t += plan.delay + 0.01
    assert replay(WORKER_RESTART, times) == [
        (RESTART, 0.0), (RESTART, 0.05), (RESTART, 0.1), (RESTART, 0.2), (RESTART, 0.4),
        (GIVE_UP, 5.0), (GIVE_UP, 5.0)]


def test_a_down_endpoint_is_probed_every_retry_after_the_burst():
    # a connection refused every time: past the budget, one try per retry_every
    # until the burst leaves the window, then the budget is there again
    times, t, history = [], 0.0, ()
    while t < 30.0:
        times.append(t)
        plan = plan_restart(WORKER_RESTART, history, t)
        history = plan.history
        t += plan.delay
    attempts_per_window = sum(1 for x in times if x < WORKER_RESTART.period)
    assert attempts_per_window <= WORKER_RESTART.intensity + WORKER_RESTART.period / WORKER_RESTART.retry_every
    assert len(times) < 30   # never a busy loop


def test_a_worker_that_outlives_the_period_starts_from_a_fresh_budget():
    period = WORKER_RESTART.period
    times = [i * (period + 1) for i in range(3 * WORKER_RESTART.intensity)]
    assert set(replay(WORKER_RESTART, times)) == {(RESTART, 0.0)}


def test_a_worker_crashing_every_second_is_a_crash_loop():
    verdicts = [v for v, _ in replay(WORKER_RESTART, [float(i) for i in range(8)])]
    assert verdicts[:WORKER_RESTART.intensity] == [RESTART] * WORKER_RESTART.intensity
    assert verdicts[WORKER_RESTART.intensity] is GIVE_UP


def test_restart_delay_is_the_policy_backoff():
    assert restart_delay(0) == 0.0
    assert [restart_delay(n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert restart_delay(50) == WORKER_RESTART.max_backoff == 5.0
