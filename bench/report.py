"""What bench/run.py measures, as records, and how it prints and summarises them.

Three kinds of step run through the same sipp uac -> proxy -> uas path:
the ladder (`Step`: does the system sustain this rate, at what CPU per call),
the latency step at half a system's maximum (`LatencyRun`, beside a direct
uac -> uas step at the same rate, optionally with route reloads), and the
sustained memory step (`RssRun`). The summary holds the ratios issue 12 names
and checks them against its targets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bench.sipp_stats import Latency

DIRECT = "direct"   # no proxy: a baseline, not a system to rank
LUA = "babelsip-lua"
RELAY = "babelsip"
EXTERNAL_RUNTIMES = ("babelsip-python", "babelsip-perl", "babelsip-java")


@dataclass
class Step:
    system: str
    rate: int
    calls: int
    successful: int
    failed: int              # calls - successful (sipp's failed, and calls it never completed)
    retransmissions: int     # uac + uas
    cpu_us_per_call: float
    response_ms: float | None  # sipp's mean INVITE -> 200 time
    wall_s: float
    passed: bool
    note: str = ""


@dataclass
class LatencyRun:
    """INVITE -> 200 through a system, and directly uac -> uas just before and
    after it at the same rate."""

    system: str
    step: Step
    latency: Latency | None
    direct: Latency | None           # the baseline: the direct run with the lower p99
    direct_runs: list[Latency] = field(default_factory=list)
    reloads: int = 0                 # route rewrites during the step
    reloads_logged: int | None = None  # generation loads the server logged (None: not a route system)

    @property
    def added_p99_ms(self) -> float | None:
        if self.latency is None or self.direct is None:
            return None
        return round(self.latency.p99_ms - self.direct.p99_ms, 3)


@dataclass
class RssRun:
    """The tree RSS every second through one sustained step and after it."""

    system: str
    step: Step
    samples: list[tuple[float, float]] = field(repr=False)   # (s since the first call, MiB)

    def at(self, t: float) -> float:
        """The sample nearest to `t` seconds."""
        return min(self.samples, key=lambda s: abs(s[0] - t))[1]

    @property
    def calls_end_s(self) -> float:
        return self.step.wall_s

    def growth_last_half_mb(self) -> float:
        """RSS at the end of the calls minus RSS halfway through them: near 0
        when memory follows the calls in progress (a steady load), positive
        when it follows the calls seen."""
        return round(self.at(self.calls_end_s) - self.at(self.calls_end_s / 2), 1)


def as_json(record) -> dict:
    out = asdict(record)
    if isinstance(record, LatencyRun):
        out["added_p99_ms"] = record.added_p99_ms
    if isinstance(record, RssRun):
        out["growth_last_half_mb"] = record.growth_last_half_mb()
    return out


# --------------------------------------------------------------------------
# printing as it goes

STEP_HEADER = (f"{'system':<16} {'rate':>6} {'calls':>7} {'ok':>9} {'retrans':>8} "
               f"{'CPU us/c':>9} {'resp ms':>8} {'wall':>6}")


def print_step(step: Step) -> None:
    ok = 100.0 * step.successful / step.calls
    re = 100.0 * step.retransmissions / step.calls
    resp = "-" if step.response_ms is None else f"{step.response_ms:.2f}"
    print(f"{step.system:<16} {step.rate:>6} {step.calls:>7} {ok:>8.2f}% {re:>7.2f}% "
          f"{step.cpu_us_per_call:>9.1f} {resp:>8} {step.wall_s:>6.1f}  "
          f"{'pass' if step.passed else 'FAIL'} {step.note}", flush=True)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


LATENCY_HEADER = (f"{'system':<16} {'rate':>6} {'measured':>8} {'failed':>6} {'p50 ms':>7} "
                  f"{'p99 ms':>7} {'max ms':>7} {'direct p99':>10} {'added p99':>9}  reloads")


def print_latency(run: LatencyRun) -> None:
    lat = run.latency
    reloads = "" if run.reloads_logged is None else f"{run.reloads} written, {run.reloads_logged} logged"
    print(f"{run.system:<16} {run.step.rate:>6} {lat.calls if lat else 0:>8} {run.step.failed:>6} "
          f"{_ms(lat and lat.p50_ms):>7} {_ms(lat and lat.p99_ms):>7} {_ms(lat and lat.max_ms):>7} "
          f"{_ms(run.direct and run.direct.p99_ms):>10} {_ms(run.added_p99_ms):>9}  {reloads}"
          f"{'' if run.step.passed else '  FAIL ' + run.step.note}", flush=True)


def curve_every(seconds: float, points: int = 12) -> int:
    """A sampling step for the printed curve: at most about `points` values."""
    return next((every for every in (1, 2, 5, 10, 15, 30, 60, 120, 300) if seconds / every <= points), 600)


def print_rss(run: RssRun) -> None:
    end = run.calls_end_s
    every = curve_every(end)
    curve = "  ".join(f"t={t}:{run.at(t):.0f}" for t in range(0, int(end) + 1, every))
    last_t, last_mb = run.samples[-1]
    print(f"{run.system:<16} {run.step.rate:>6}/s  MB {curve}  | end of calls {run.at(end):.0f}, "
          f"+{last_t - end:.0f} s after {last_mb:.0f}; last half {run.growth_last_half_mb():+.1f} MB; "
          f"failed {run.step.failed}", flush=True)


# --------------------------------------------------------------------------
# the summary


def best_steps(steps: list[Step], systems: list[str]) -> dict[str, Step | None]:
    """Each system's highest passing ladder step."""
    best: dict[str, Step | None] = {}
    for name in systems:
        passing = [s for s in steps if s.system == name and s.passed]
        best[name] = max(passing, key=lambda s: s.rate) if passing else None
    return best


def compare(steps: list[Step], best: dict[str, Step | None], name: str, other: str) -> dict | None:
    """`name` against `other`: max rate ratio, and CPU per call ratio at the
    highest rate both passed (the same load). None if either never passed."""
    mine, theirs = best.get(name), best.get(other)
    if mine is None or theirs is None:
        return None
    passed = {(s.system, s.rate): s for s in steps if s.passed}
    common = [rate for (system, rate) in passed if system == name and (other, rate) in passed]
    cpu_ratio, at = None, None
    if common:
        at = max(common)
        if passed[(other, at)].cpu_us_per_call > 0:
            cpu_ratio = round(passed[(name, at)].cpu_us_per_call / passed[(other, at)].cpu_us_per_call, 2)
    return {"rate": round(mine.rate / theirs.rate, 3), "cpu_per_call": cpu_ratio, "cpu_compared_at": at}


@dataclass(frozen=True)
class Target:
    """One of issue 12's targets, as measured in this run."""

    what: str
    value: float | None
    limit: float
    at_least: bool    # True: value >= limit is met; False: value <= limit

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.at_least else self.value <= self.limit


def targets(ratios: dict, vs_lua: dict, latency: list[LatencyRun]) -> list[Target]:
    out = []
    kam = ratios.get(LUA)
    if kam is not None:
        out.append(Target(f"{LUA} rate / kamailio rate", kam["rate"], 0.5, True))
        out.append(Target(f"{LUA} CPU per call / kamailio's (at {kam['cpu_compared_at']}/s)",
                          kam["cpu_per_call"], 2.0, False))
    for name, ratio in vs_lua.items():
        limit = 1.0 if name == RELAY else 0.7
        out.append(Target(f"{name} rate / {LUA} rate", ratio["rate"], limit, True))
    for run in latency:
        out.append(Target(f"{run.system} added p99 ms at {run.step.rate}/s", run.added_p99_ms, 5.0, False))
        if run.reloads:
            out.append(Target(f"{run.system} failed calls with {run.reloads} reloads", run.step.failed, 0, False))
    return out


def summarize(steps: list[Step], systems: list[str], reference: str | None,
              latency: list[LatencyRun] = (), rss: list[RssRun] = ()) -> dict:
    best = best_steps(steps, systems)
    print("\nmax sustained (>= 99.9 % ok, <= 1 % retransmissions):")
    print(f"{'system':<16} {'calls/s':>8} {'CPU us/call':>12}")
    for name in systems:
        b = best[name]
        print(f"{name:<16} {b.rate if b else 0:>8} {b.cpu_us_per_call if b else float('nan'):>12.1f}")

    ratios = {}
    if reference is not None and best.get(reference) is not None:
        print(f"\nratios against {reference} (same run):")
        for name in systems:
            ratio = compare(steps, best, name, reference) if name not in (reference, DIRECT) else None
            if ratio is None:
                continue
            ratios[name] = ratio
            cpu_text = (f"{ratio['cpu_per_call']:.2f}x CPU per call at {ratio['cpu_compared_at']} calls/s"
                        if ratio["cpu_per_call"] is not None else "no common passing rate for CPU")
            print(f"  {name}: {ratio['rate']:.2f}x the rate, {cpu_text}")

    vs_lua = {}
    for name in (RELAY, *EXTERNAL_RUNTIMES):
        ratio = compare(steps, best, name, LUA) if name in systems else None
        if ratio is not None:
            vs_lua[name] = ratio
    if vs_lua:
        print(f"\nratios against {LUA} (same run):")
        for name, ratio in vs_lua.items():
            cpu = "-" if ratio["cpu_per_call"] is None else f"{ratio['cpu_per_call']:.2f}x"
            print(f"  {name}: {ratio['rate']:.2f}x the rate, {cpu} CPU per call")

    if latency:
        print("\nINVITE->200 at half the max rate (added = p99 - the lower p99 of a direct run "
              "before and after, same rate):")
        print(LATENCY_HEADER)
        for run in latency:
            print_latency(run)
    if rss:
        print("\ntree RSS through a sustained step (MB at t seconds since the first call):")
        for run in rss:
            print_rss(run)

    checks = targets(ratios, vs_lua, list(latency))
    if checks:
        print("\ntargets (issue 12):")
        for t in checks:
            value = "-" if t.value is None else f"{t.value:g}"
            verdict = {True: "met", False: "MISSED", None: "not measured"}[t.met]
            print(f"  {t.what:<58} {value:>8}  ({'>=' if t.at_least else '<='} {t.limit:g})  {verdict}")
    return {"best": {k: (asdict(v) if v else None) for k, v in best.items()},
            "ratios": ratios, "ratios_vs_lua": vs_lua,
            "latency": [as_json(r) for r in latency], "rss": [as_json(r) for r in rss],
            "targets": [{**asdict(t), "met": t.met} for t in checks]}
