"""Call-rate benchmark: sipp uac -> proxy -> sipp uas on 127.0.0.1, UDP.

For each system (babelsip --relay-to, Kamailio as the equivalent stateful
record-routing proxy, ...) and each call rate in turn, sipp's built-in uac
places `rate x duration` calls (INVITE/100/180/200/ACK/BYE/200, 0 s pause)
through the proxy to sipp's built-in uas. A step passes when >= 99.9 % of the
calls succeed and sipp retransmitted for <= 1 % of them (see ANCHORS.md).
The proxy's CPU time (utime+stime of its whole process tree, from /proc) over
the step, divided by the calls, is its cost per call.

The machine is shared and noisy, so all systems run in the same invocation
and take turns at every rate (the order alternates); compare the ratios.

After the ladder: a latency step per proxy at half its max rate, beside a
direct uac -> uas step at that rate (p50/p99/max INVITE -> 200 and the p99
the proxy adds), with --reload-during the route file rewritten meanwhile;
with --rss-run a sustained step per proxy with its RSS every second. The
summary holds the ratios and targets of issue 12 (bench/README.md).

  python bench/run.py                                # babelsip vs kamailio
  python bench/run.py --systems direct,babelsip-lua,kamailio --reload-during --rss-run 500:60
  python bench/run.py --systems babelsip-lua,kamailio --rates 1000,2000
  python bench/run.py --extra 'mine=/path/proxy --port {port} --to {uas_uri}'
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.proctree import RssSampler, tree_cpu_seconds  # noqa: E402
from host.privileges.jail import ROOT_WORKERS_ENV  # noqa: E402
from bench.report import (LATENCY_HEADER, STEP_HEADER, LatencyRun, RssRun, Step, print_latency,  # noqa: E402
                          print_rss, print_step, summarize)
from bench.route_reload import COMMENT, RouteReloader, loads_logged  # noqa: E402
from bench.sipp_stats import Latency, shortmsg_latency  # noqa: E402
from tests.e2e import sipp  # noqa: E402  (the harness the e2e tests use)

ROUTES = REPO / "bench" / "routes"
DEFAULT_RATES = "500,1000,1500,2000,3000,4000,5000,6000,7000,8000,10000"
PASS_SUCCESS = 0.999   # ANCHORS.md: >= 99.9 % successful calls
PASS_RETRANS = 0.01    # ... and <= 1 % retransmissions (per call)


# --------------------------------------------------------------------------
# systems under test: a name and how to start it on (port, uas_uri, workdir)


@dataclass(frozen=True)
class Slot:
    port: int        # the proxy listens on udp:127.0.0.1:port
    uas_port: int    # the sipp uas of this system
    workdir: Path

    @property
    def uas_uri(self) -> str:
        return f"sip:{sipp.LOCALHOST}:{self.uas_port}"


@dataclass(frozen=True)
class System:
    name: str
    about: str
    start: Callable[[Slot], sipp.ProxyProcess] | None  # None: no proxy, uac -> uas
    routes: str | None = None   # the bench/routes folder it serves (hot-reloadable), if any


def route_file(slot: Slot, folder: str) -> Path:
    """The route file of the copy of bench/routes/<folder> that `slot`'s server serves."""
    copy = slot.workdir / f"routes-{folder}"
    return next(path for path in sorted(copy.iterdir()) if path.suffix in COMMENT)


def _babelsip_env() -> dict[str, str] | None:
    """Started as root, babelsip runs its route workers as nobody, who may
    not run this venv's interpreter nor read the bench's 0700 temporary
    directory: keep them root, as the test suite does (tests/conftest.py)."""
    if os.geteuid() != 0:
        return None
    return {**os.environ, ROOT_WORKERS_ENV: "1"}


def babelsip_relay(workers: int = 1) -> Callable[[Slot], sipp.ProxyProcess]:
    def start(slot: Slot) -> sipp.ProxyProcess:
        return _started(sipp.start_babelsip(
            ["run", "--listen", f"udp:{sipp.LOCALHOST}:{slot.port}", "--relay-to", slot.uas_uri,
             "--log-level", "warning", *_workers(workers)]), workers)
    return start


def _workers(workers: int) -> list[str]:
    return ["--workers", str(workers)] if workers > 1 else []


def _started(proxy: sipp.ProxyProcess, workers: int) -> sipp.ProxyProcess:
    """With --workers N, the first worker answers before the last serves."""
    if workers > 1:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and f"{workers} worker processes serving" not in proxy.log():
            time.sleep(0.1)
    return proxy


def babelsip_routes(folder: str, *, redis: bool = False,
                    workers: int = 1) -> Callable[[Slot], sipp.ProxyProcess]:
    """babelsip serving a copy of bench/routes/<folder> with @UAS_URI@ filled in;
    with `redis`, its store (the dialogs of the record-routed calls) in a
    redis-server of its own, started as its child so the step's tree CPU
    counts Redis too."""
    def start(slot: Slot) -> sipp.ProxyProcess:
        routes = slot.workdir / f"routes-{folder}"
        shutil.copytree(ROUTES / folder, routes, dirs_exist_ok=True)
        for path in routes.rglob("*"):
            if path.is_file():
                text = path.read_text()
                path.write_text(text.replace("@UAS_URI@", slot.uas_uri))
        # --log-level info: the parent's "N worker processes serving" says when all are up,
        # and "generation N loaded" that a hot reload happened (no line per call at info).
        argv = ["run", "--listen", f"udp:{sipp.LOCALHOST}:{slot.port}",
                "--routes", str(routes), "--log-level", "info",
                *_workers(workers)]
        if not redis:
            return _started(sipp.start_babelsip(argv, env=_babelsip_env()), workers)
        redis_port = sipp.free_port()
        argv += ["--store", f"redis://{sipp.LOCALHOST}:{redis_port}/0"]
        script = (f"redis-server --port {redis_port} --bind {sipp.LOCALHOST} --save '' "
                  f"--appendonly no --dir {slot.workdir} >/dev/null & sleep 0.3; exec "
                  + " ".join(shlex.quote(a) for a in sipp.babelsip_command() + argv))
        proxy = sipp.ProxyProcess(["sh", "-c", script], sipp.parse_listens(argv),
                                  name="babelsip-redis", group=True, env=_babelsip_env())
        proxy.wait_ready(20)
        return _started(proxy, workers)
    return start


def kamailio(fast_allocator: bool, workers: int = 1) -> Callable[[Slot], sipp.ProxyProcess]:
    def start(slot: Slot) -> sipp.ProxyProcess:
        return sipp.start_kamailio(slot.port, slot.uas_uri, slot.workdir,
                                   fast_allocator=fast_allocator, workers=workers)
    return start


def command_system(name: str, template: str) -> System:
    """--extra NAME=CMD: CMD may use {port}, {uas_port}, {uas_uri}, {workdir}."""
    def start(slot: Slot) -> sipp.ProxyProcess:
        argv = [part.format(port=slot.port, uas_port=slot.uas_port, uas_uri=slot.uas_uri,
                            workdir=slot.workdir) for part in shlex.split(template)]
        # run from the caller's directory, so relative paths in CMD work
        proxy = sipp.ProxyProcess(argv, [("udp", sipp.LOCALHOST, slot.port)], name=name,
                                  trust_log=False)
        proxy.wait_ready(20)
        return proxy
    return System(name, template, start)


SYSTEMS = {s.name: s for s in (
    System("direct", "no proxy: sipp uac -> sipp uas (the load generator's ceiling right now)", None),
    System("babelsip", "babelsip run --relay-to (static mode, record-routed)", babelsip_relay()),
    System("babelsip-lua", "babelsip run --routes bench/routes/lua", babelsip_routes("lua"), "lua"),
    System("babelsip-lua-redis", "the same with --store redis:// (its own redis-server, in its CPU)",
           babelsip_routes("lua", redis=True), "lua"),
    System("babelsip-python", "babelsip run --routes bench/routes/python", babelsip_routes("python"),
           "python"),
    System("babelsip-perl", "babelsip run --routes bench/routes/perl", babelsip_routes("perl"), "perl"),
    System("babelsip-java", "babelsip run --routes bench/routes/java", babelsip_routes("java"), "java"),
    System("kamailio", "Kamailio stateful record-routing proxy, 1 worker, -x fm -X fm",
           kamailio(fast_allocator=True)),
    System("kamailio-qm", "the same with Debian's default (debugging) allocator",
           kamailio(fast_allocator=False)),
)}



def with_workers(name: str, workers: int) -> System | None:
    """NAME-wN: the babelsip or Kamailio system `name` with N core processes."""
    if name == "babelsip":
        return System(f"{name}-w{workers}", f"babelsip run --relay-to --workers {workers}",
                      babelsip_relay(workers))
    if name.startswith("babelsip-") and name != "babelsip-direct":
        folder, _, redis = name[len("babelsip-"):].partition("-")
        return System(f"{name}-w{workers}", f"{SYSTEMS[name].about}, --workers {workers}",
                      babelsip_routes(folder, redis=redis == "redis", workers=workers), folder)
    if name in ("kamailio", "kamailio-qm"):
        return System(f"{name}-w{workers}", f"{SYSTEMS[name].about}, {workers} UDP workers (-n {workers})",
                      kamailio(fast_allocator=name == "kamailio", workers=workers))
    return None


# --------------------------------------------------------------------------
# measuring


def _seconds(sipp_time: str) -> float | None:
    """sipp's 'HH:MM:SS:USEC' durations."""
    try:
        h, m, s, us = (int(x) for x in sipp_time.split(":"))
    except ValueError:
        return None
    return h * 3600 + m * 60 + s + us / 1e6


class Alongside(Protocol):
    """Work a step does while its calls run (sampling, rewriting a route)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


def run_step(system: str, proxy: sipp.ProxyProcess | None, slot: Slot, rate: int,
             duration: float, *, kind: str = "ladder", shortmsg: Path | None = None,
             alongside: Sequence[Alongside] = ()) -> Step:
    """`rate x duration` calls through `proxy` (None: straight to the uas).
    `shortmsg`: where the uac writes its -trace_shortmsg log (for latency);
    `alongside` are started just before the first call and stopped after the
    last."""
    calls = max(1, int(rate * duration))
    stepdir = Path(tempfile.mkdtemp(prefix=f"{kind}-{rate}-", dir=slot.workdir))
    log_mark = proxy.log_mark() if proxy else 0
    uac_extra = ["-recv_timeout", "4000", "-max_socket", "4096"]
    if shortmsg is not None:
        uac_extra += ["-trace_shortmsg", "-shortmessage_file", str(shortmsg)]
    with sipp.start_sipp_server("uas", stepdir, name="uas", port=slot.uas_port,
                                timeout=duration + 90, extra=["-fd", "1"]) as uas:
        cpu0, t0 = tree_cpu_seconds(proxy.pid) if proxy else 0.0, time.monotonic()
        for work in alongside:
            work.start()
        try:
            uac = sipp.run_sipp(
                "uac", stepdir, name="uac", port=sipp.free_port(),
                remote=(sipp.LOCALHOST, slot.port if proxy else slot.uas_port),
                calls=calls, rate=rate, timeout=duration + 40,
                # a call waiting 4 s for a message is lost anyway: end it, end the step sooner
                extra=uac_extra)
        finally:
            cpu1, t1 = tree_cpu_seconds(proxy.pid) if proxy else 0.0, time.monotonic()
            for work in alongside:
                work.stop()
        time.sleep(1.2)  # one more periodic dump of the uas counters (-fd 1)
        uas_stats = uas.snapshot()
    uas_note = ""
    if uas_stats.returncode is not None:   # it should outlive the uac: something stopped it
        last = [line for line in uas_stats.screen.splitlines() if line.strip()][-1:]
        uas_note = f"uas exited early (rc {uas_stats.returncode}: {' '.join(last)[:80]}) "
    retrans = uac.retransmissions + uas_stats.retransmissions
    passed = (uac.successful >= PASS_SUCCESS * calls and retrans <= PASS_RETRANS * calls
              and uac.returncode in (0, 1))
    note = ""
    if proxy is not None and not proxy.alive():
        passed, note = False, f"{system} died: " + proxy.log()[-300:]
    elif uac.returncode not in (0, 1):
        note = f"sipp rc={uac.returncode}"
    elif not passed and proxy is not None:
        # the first complaint the proxy logged during the step, if any
        errors = [line for line in proxy.log_since(log_mark) if "ERROR" in line or "CRITICAL" in line]
        note = f"proxy log: {errors[0].strip()[:120]}" if errors else ""
    if not note and uac.failure_reasons:
        note = " ".join(f"{k[6:]}={v}" for k, v in uac.failure_reasons.items())
    note = uas_note + note
    response = _seconds(uac.counters.get("ResponseTime1(C)", ""))
    return Step(system, rate, calls, uac.successful, calls - uac.successful, retrans,
                round((cpu1 - cpu0) * 1e6 / calls, 1),
                None if response is None else round(response * 1000, 2),
                round(t1 - t0, 2), passed, note)


def latency_run(name: str, system: System, proxy: sipp.ProxyProcess, slot: Slot,
                direct_slot: Slot, rate: int, duration: float, reloads: int) -> LatencyRun:
    """A direct uac -> uas step at `rate`, the same through `proxy`, and a
    direct one again, each timed per call from the uac's short message trace;
    with `reloads`, the route file of a route system is rewritten that many
    times during the proxied step. The baseline is the direct run with the
    lower p99: a neighbour's burst on this shared machine makes one direct
    run slow now and then, which would flatter the proxy."""
    def direct(when: str) -> Latency | None:
        trace = direct_slot.workdir / f"direct-{when}-{name}-{rate}.shortmsg"
        run_step("direct", None, direct_slot, rate, duration, kind="latency", shortmsg=trace)
        time.sleep(1.0)
        return shortmsg_latency(trace)

    before = direct("before")
    alongside, mark = [], proxy.log_mark()
    if reloads and system.routes is not None:
        alongside.append(RouteReloader(route_file(slot, system.routes), reloads, duration))
    proxied_log = slot.workdir / f"latency-{rate}.shortmsg"
    step = run_step(name, proxy, slot, rate, duration, kind="latency", shortmsg=proxied_log,
                    alongside=alongside)
    time.sleep(1.0)  # the last reload's log line, and lingering transactions
    directs = [lat for lat in (before, direct("after")) if lat is not None]
    run = LatencyRun(name, step, shortmsg_latency(proxied_log),
                     min(directs, key=lambda lat: lat.p99_ms) if directs else None, directs)
    if alongside:
        run.reloads, run.reloads_logged = alongside[0].done, loads_logged(proxy.log_since(mark))
    return run


def rss_run(name: str, proxy: sipp.ProxyProcess, slot: Slot, rate: int, seconds: float,
            after: float) -> RssRun:
    """One sustained step with the tree RSS sampled every second (from just
    before the uas starts), and for `after` seconds once the calls ended."""
    sampler = RssSampler(proxy.pid)
    sampler.start()
    try:
        step = run_step(name, proxy, slot, rate, seconds, kind="rss")
        time.sleep(max(0.0, after - 1.2))   # run_step already waited 1.2 s for the uas counters
    finally:
        sampler.stop()
    return RssRun(name, step, sampler.samples)


# --------------------------------------------------------------------------


def climb(rates: list[int], climbing: list[str], proxies: dict, slots: dict[str, Slot],
          args) -> list[Step]:
    """The ladder: every system at every rate in turn (order rotating), each
    stopping at its first failed rate (after --retries), unless --keep-going."""
    steps: list[Step] = []
    print("\n" + STEP_HEADER)
    for i, rate in enumerate(rates):
        if not climbing:
            break
        order = climbing[i % len(climbing):] + climbing[:i % len(climbing)]
        for name in order:
            for attempt in range(1 + args.retries):
                step = run_step(name, proxies[name], slots[name], rate, args.duration)
                if attempt:
                    step.note = (step.note + f" (retry {attempt})").strip()
                print_step(step)
                steps.append(step)
                time.sleep(1.0)  # let lingering transactions drain
                proxy = proxies[name]
                if step.passed or (proxy is not None and not proxy.alive()):
                    break
            if not step.passed and not args.keep_going:
                climbing.remove(name)
    return steps


def measure_latency(steps: list[Step], systems: dict[str, System], proxies: dict,
                    slots: dict[str, Slot], direct_slot: Slot, args) -> list[LatencyRun]:
    """Each proxy at --latency-rate, or half its own max, beside a direct run."""
    runs = []
    print("\nlatency steps (direct uac -> uas, through the system, direct again; same rate):")
    print(LATENCY_HEADER)
    for name, proxy in proxies.items():
        if proxy is None or not proxy.alive():
            continue
        passing = [s.rate for s in steps if s.system == name and s.passed]
        rate = args.latency_rate or (max(passing) // 2 if passing else 0)
        if rate < 1:
            print(f"{name:<16} no passing rate: no latency step (give --latency-rate)")
            continue
        for attempt in range(1 + args.retries):   # as the ladder: the machine is noisy
            run = latency_run(name, systems[name], proxy, slots[name], direct_slot, rate,
                              args.latency_duration or args.duration, args.reload_during)
            if attempt:
                run.step.note = (run.step.note + f" (retry {attempt})").strip()
            print_latency(run)
            if run.step.passed or not proxy.alive():
                break
        runs.append(run)   # the last attempt
    return runs


def measure_rss(spec: tuple[int, float], proxies: dict, slots: dict[str, Slot], args) -> list[RssRun]:
    rate, seconds = spec
    runs = []
    print(f"\nmemory steps: {rate} calls/s for {seconds:g} s, tree RSS every second, "
          f"and {args.rss_after:g} s after")
    for name, proxy in proxies.items():
        if proxy is None or not proxy.alive():
            continue
        run = rss_run(name, proxy, slots[name], rate, seconds, args.rss_after)
        print_rss(run)
        runs.append(run)
        time.sleep(1.0)
    return runs


def rss_spec(text: str) -> tuple[int, float]:
    rate, sep, seconds = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(rate), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want RATE:SECONDS, e.g. 500:60, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="babelsip,kamailio",
                    help=f"comma-separated, from: {', '.join(SYSTEMS)} (and --extra names)")
    ap.add_argument("--rates", default=DEFAULT_RATES, help="calls/s steps, ascending")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of calls per step")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=CMD",
                    help="another proxy: CMD with {port} {uas_port} {uas_uri} {workdir}")
    ap.add_argument("--workers", type=int, action="append", default=[], metavar="N",
                    help="also run every chosen babelsip and Kamailio system with N core "
                         "processes, as NAME-wN (repeatable); ratios are against --reference")
    ap.add_argument("--reference", default="kamailio", help="the system ratios are taken against")
    ap.add_argument("--retries", type=int, default=1,
                    help="re-run a failed step this many times before a system stops climbing")
    ap.add_argument("--keep-going", action="store_true",
                    help="keep stepping a system after it failed a rate")
    ap.add_argument("--no-latency", action="store_true",
                    help="skip the latency steps after the ladder")
    ap.add_argument("--latency-rate", type=int, metavar="N",
                    help="run every latency step at N calls/s (default: half each system's max)")
    ap.add_argument("--latency-duration", type=float, metavar="S",
                    help="seconds of calls per latency step (default: --duration)")
    ap.add_argument("--reload-during", type=int, nargs="?", const=3, default=0, metavar="N",
                    help="rewrite the route file of each route system N times (3 if no N) "
                         "during its latency step")
    ap.add_argument("--rss-run", type=rss_spec, metavar="RATE:SECONDS",
                    help="one sustained step per system at RATE for SECONDS, RSS sampled every second")
    ap.add_argument("--rss-after", type=float, default=10.0, metavar="S",
                    help="keep sampling the RSS this long after the calls of --rss-run end")
    ap.add_argument("--json", type=Path, help="write the steps and summary here "
                    "(default bench/results/bench-<time>.json)")
    args = ap.parse_args(argv)
    if args.reload_during and args.no_latency:
        ap.error("--reload-during happens in the latency steps: drop --no-latency")

    if sipp.sipp_binary() is None:
        print("sipp not found (Debian package sip-tester)", file=sys.stderr)
        return 2
    systems = dict(SYSTEMS)
    for spec in args.extra:
        name, _, cmd = spec.partition("=")
        if not cmd:
            ap.error(f"--extra wants NAME=CMD, got {spec!r}")
        systems[name] = command_system(name, cmd)
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    chosen += [spec.partition("=")[0] for spec in args.extra if spec.partition("=")[0] not in chosen]
    for workers in args.workers:
        for name in list(chosen):
            variant = with_workers(name, workers) if name in SYSTEMS and workers > 1 else None
            if variant is not None and variant.name not in chosen:
                systems[variant.name] = variant
                chosen.append(variant.name)
    unknown = [s for s in chosen if s not in systems]
    if unknown:
        ap.error(f"unknown systems {unknown}; known: {', '.join(systems)}")
    rates = sorted(int(r) for r in args.rates.split(",") if r.strip())

    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {os.cpu_count()} CPUs  sipp {sipp.sipp_binary()}  "
          f"{args.duration:g} s per step; systems: {', '.join(chosen)}")
    for name in chosen:
        print(f"#   {name}: {systems[name].about}")
    steps: list[Step] = []
    latency: list[LatencyRun] = []
    rss: list[RssRun] = []
    with tempfile.TemporaryDirectory(prefix="babelsip-bench-") as tmp:
        proxies: dict[str, sipp.ProxyProcess | None] = {}
        slots: dict[str, Slot] = {}
        try:
            for name in chosen:
                slot = Slot(sipp.free_port(), sipp.free_port(), Path(tmp) / name)
                slot.workdir.mkdir(parents=True)
                try:
                    start = systems[name].start
                    proxies[name] = start(slot) if start else None
                except Exception as exc:  # a system that cannot start is reported, not fatal
                    print(f"# {name} did not start: {str(exc)[:2000]}", file=sys.stderr)
                    continue
                slots[name] = slot
            steps = climb(rates, [name for name in chosen if name in proxies], proxies, slots, args)
            if not args.no_latency:
                direct_slot = slots.get("direct") or Slot(0, sipp.free_port(), Path(tmp) / "direct")
                direct_slot.workdir.mkdir(exist_ok=True)
                latency = measure_latency(steps, systems, proxies, slots, direct_slot, args)
            if args.rss_run:
                rss = measure_rss(args.rss_run, proxies, slots, args)
        finally:
            for proxy in proxies.values():
                if proxy is not None:
                    proxy.stop()

    ran = [name for name in chosen if any(s.system == name for s in steps)]
    summary = summarize(steps, ran, args.reference if args.reference in ran else None, latency, rss)
    out = args.json or REPO / "bench" / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"duration": args.duration, "rates": rates, "systems": chosen,
                               "latency_rate": args.latency_rate, "reload_during": args.reload_during,
                               "rss_run": args.rss_run,
                               "steps": [asdict(s) for s in steps], **summary}, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
