"""The registry's records: one per route, one per loaded generation, and the
frozen views it hands out (errors, statistics).

Plain data shared by the registry (which loads, swaps and restarts) and the
route handles (which count events and decisions on them); neither layer
keeps its own copy of a counter.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from host.routes.runtime import Runtime, RuntimeSpec
from host.routes.settings import RouteSettings

# Route states, as `status()` reports them.
OK, LOADING, RESTARTING, FAILED, ABSENT = "ok", "loading", "restarting", "failed", "absent"
# Decision.verb values counted per route ("none": the script decided nothing).
DECISION_KINDS = ("reply", "relay", "redirect", "drop", "none")


# Upper bounds (seconds) of the event latency buckets: from an in-process Lua
# decision (tens of microseconds) to the default deadline of 1 s and beyond.
LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 2.5)


class LatencyHistogram:
    """Event latencies of one route in fixed buckets (bounded memory, a
    bisect and two additions per event): what Prometheus's histogram and
    the status page's latency graph read."""

    __slots__ = ("counts", "total", "count")

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)   # the last one: above every bound
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def snapshot(self) -> dict:
        """Cumulative counts per upper bound, as Prometheus wants them."""
        buckets, running = [], 0
        for bound, n in zip(LATENCY_BOUNDS + ("+Inf",), self.counts):
            running += n
            buckets.append([bound, running])
        return {"buckets": buckets, "sum": self.total, "count": self.count}


@dataclass(frozen=True)
class RouteError:
    file: str
    line: int | None
    message: str
    kind: str          # load | config | error | budget | memory | crash | protocol | timeout
    at: float          # wall clock, time.time()


class Generation:
    """One loaded version of one route file, with the counts that decide when
    it may be closed."""

    __slots__ = ("route", "number", "runtime", "spec", "digest", "loaded_at", "inflight",
                 "handles", "retired_at", "damaged", "closing", "overruns")

    def __init__(self, route: str, number: int, runtime: Runtime, spec: RuntimeSpec, digest: bytes):
        self.route, self.number, self.runtime, self.spec, self.digest = route, number, runtime, spec, digest
        self.loaded_at = time.time()
        self.inflight = 0          # events running on it now
        self.handles = 0           # RouteHandles pinning it
        self.retired_at: float | None = None
        self.damaged = False
        self.closing = False
        self.overruns = 0          # deadline overruns in a row

    def __repr__(self) -> str:
        return f"<Generation {self.route}#{self.number} {self.spec.runtime}>"

    @property
    def usable(self) -> bool:
        return not (self.damaged or self.closing)

    def closable(self, now: float, linger: float) -> bool:
        if self.retired_at is None or self.closing or self.inflight:
            return False
        return self.damaged or self.handles == 0 or now - self.retired_at >= linger


@dataclass(eq=False)
class RouteRecord:
    """Everything the registry knows about one route name."""

    name: str
    settings: RouteSettings
    state: str = LOADING
    current: Generation | None = None
    path: Path | None = None
    last_number: int = 0
    load_error: RouteError | None = None
    last_error: RouteError | None = None
    history: tuple = ()          # recent restart times (host.supervision.plan_restart)
    retry_at: float | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    lock: trio.Lock = field(default_factory=trio.Lock)
    events: int = 0
    decisions: dict = field(default_factory=lambda: dict.fromkeys(DECISION_KINDS, 0))
    fallbacks: int = 0
    errors: int = 0
    timeouts: int = 0
    restarts: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    logged_at: float = float("-inf")
    unlogged: int = 0

    def usable_generation(self, pinned: Generation | None) -> Generation | None:
        """The generation an event runs on: the pinned one while usable,
        else the current one if usable, else None."""
        if pinned is not None and pinned.usable:
            return pinned
        gen = self.current
        return gen if gen is not None and gen.usable else None

    def statistics(self) -> RouteStatistics:
        g = self.current
        return RouteStatistics(
            route=self.name, state=self.state, file=str(self.path) if self.path else None,
            runtime=g.spec.runtime if g else None, generation=g.number if g else None,
            loaded_at=g.loaded_at if g else None, events=self.events, decisions=dict(self.decisions),
            fallbacks=self.fallbacks, errors=self.errors, timeouts=self.timeouts, restarts=self.restarts,
            inflight=g.inflight if g else 0, last_error=self.last_error, load_error=self.load_error,
            latency=self.latency.snapshot())


@dataclass(frozen=True)
class RouteStatistics:
    route: str
    state: str
    file: str | None
    runtime: str | None
    generation: int | None
    loaded_at: float | None
    events: int
    decisions: dict
    fallbacks: int
    errors: int
    timeouts: int
    restarts: int
    inflight: int
    last_error: RouteError | None
    load_error: RouteError | None
    latency: dict | None = None   # LatencyHistogram.snapshot()
