"""Restart policy as data, decided by one pure function (as in Erlang/OTP).

OTP's supervisor gives up on a child that restarts more than `intensity` times
within `period` seconds: a crash that repeats that fast is not transient, and
restarting it forever only burns CPU and floods the log (uvicorn's
restart-forever loop is the counter-example). babelsip keeps OTP's rule for one
route's runtime, and adds what a server that must stay up needs: a route that
gave up is not dead for good, it is retried slowly (`retry_every`) and on its
next file change, answering its fallback meanwhile. Granted restarts after the
first in a window wait a little (`backoff`, doubling up to `max_backoff`), so a
runtime that dies at start does not spend its whole budget in a millisecond.

The same policy and the same `plan_restart` drive both supervisors: the route
registry over a route's generations, and the worker pool of the line-JSON
runtimes over its workers and logic-server connections (with its own
`RestartPolicy` instance, as each OTP supervisor has its own intensity).

Everything here is pure: times are plain floats from whatever clock the caller
uses (the registry passes `trio.current_time()`), so tests need no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    RESTART = "restart"   # start a fresh runtime now
    GIVE_UP = "give_up"   # budget spent: mark the route failed, retry slowly


RESTART = Verdict.RESTART
GIVE_UP = Verdict.GIVE_UP


@dataclass(frozen=True)
class RestartPolicy:
    """At most `intensity` restarts within any `period` seconds; after that the
    route is failed and retried every `retry_every` seconds. The n-th restart
    in a window (n >= 2) waits `backoff * 2**(n-2)` seconds, at most
    `max_backoff`; the first is immediate (a one-off crash costs nothing).

    Defaults follow OTP's order of magnitude (OTP: 1 in 5 s; we allow a burst
    of 5 in 10 s because one bad call can damage a Lua state and a route
    serves many calls per second). 50 ms of backoff is a few Lua state or
    worker starts: 5 restarts in a row then span about 0.75 s, not 1 ms, and
    events waiting for the restart (within their own deadline, 1 s by
    default) are not held longer than one deadline by the 1 s cap, which only
    a larger intensity reaches.
    """

    intensity: int = 5
    period: float = 10.0
    retry_every: float = 30.0
    backoff: float = 0.05
    max_backoff: float = 1.0

    def __post_init__(self):
        if isinstance(self.intensity, bool) or not isinstance(self.intensity, int) or self.intensity < 0:
            raise ValueError(f"restart intensity must be an integer >= 0, got {self.intensity!r}")
        if isinstance(self.backoff, bool) or not isinstance(self.backoff, (int, float)) or self.backoff < 0:
            raise ValueError(f"restart backoff must be a number of seconds >= 0, got {self.backoff!r}")
        for name in ("period", "retry_every", "max_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"restart {name} must be a positive number of seconds, got {value!r}")


def decide_restart(policy: RestartPolicy, history: tuple[float, ...],
                   now: float) -> tuple[Verdict, tuple[float, ...]]:
    """Decide whether one more restart at `now` fits the policy.

    `history` holds the times of earlier restarts (any order). Returns the
    verdict and the history to keep: restarts older than `period` are
    forgotten, and a granted restart is recorded. A refused one is not
    recorded, so a route that gave up and is later retried starts from the
    restarts still inside the window, not from an ever-growing list.
    """
    recent = tuple(t for t in history if now - t < policy.period)
    if len(recent) >= policy.intensity:
        return GIVE_UP, recent
    return RESTART, recent + (now,)


def backoff_delay(policy: RestartPolicy, earlier: int) -> float:
    """Seconds to wait before a restart that follows `earlier` restarts still
    inside the window: none after none, then `backoff` doubling, capped."""
    if earlier <= 0:
        return 0.0
    return min(policy.backoff * 2 ** (earlier - 1), policy.max_backoff)


@dataclass(frozen=True)
class RestartPlan:
    """What a supervisor does after a child ended: `verdict`, the `history`
    to keep, and how long to wait before the next attempt (`delay`: the
    backoff for a granted restart, `retry_every` once the budget is spent)."""

    verdict: Verdict
    history: tuple[float, ...]
    delay: float


def plan_restart(policy: RestartPolicy, history: tuple[float, ...], now: float) -> RestartPlan:
    """`decide_restart` with the wait that goes with its verdict."""
    verdict, kept = decide_restart(policy, history, now)
    if verdict is GIVE_UP:
        return RestartPlan(GIVE_UP, kept, policy.retry_every)
    return RestartPlan(RESTART, kept, backoff_delay(policy, len(kept) - 1))


def next_retry(policy: RestartPolicy, failed_at: float) -> float:
    """When a failed route is tried again (besides on its next file change)."""
    return failed_at + policy.retry_every
