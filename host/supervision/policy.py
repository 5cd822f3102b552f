"""Restart policy as data, decided by one pure function (as in Erlang/OTP).

OTP's supervisor gives up on a child that restarts more than `intensity` times
within `period` seconds: a crash that repeats that fast is not transient, and
restarting it forever only burns CPU and floods the log (uvicorn's
restart-forever loop is the counter-example). babelsip keeps OTP's rule for one
route's runtime, and adds what a server that must stay up needs: a route that
gave up is not dead for good, it is retried slowly (`retry_every`) and on its
next file change, answering its fallback meanwhile.

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
    route is failed and retried every `retry_every` seconds.

    Defaults follow OTP's order of magnitude (OTP: 1 in 5 s; we allow a burst
    of 5 in 10 s because one bad call can damage a Lua state and a route
    serves many calls per second).
    """

    intensity: int = 5
    period: float = 10.0
    retry_every: float = 30.0

    def __post_init__(self):
        if isinstance(self.intensity, bool) or not isinstance(self.intensity, int) or self.intensity < 0:
            raise ValueError(f"restart intensity must be an integer >= 0, got {self.intensity!r}")
        for name in ("period", "retry_every"):
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


def next_retry(policy: RestartPolicy, failed_at: float) -> float:
    """When a failed route is tried again (besides on its next file change)."""
    return failed_at + policy.retry_every
