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

  python bench/run.py                                # babelsip vs kamailio
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
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e import sipp  # noqa: E402  (the harness the e2e tests use)

ROUTES = REPO / "bench" / "routes"
DEFAULT_RATES = "500,1000,1500,2000,3000,4000,5000,6000,7000,8000,10000"
PASS_SUCCESS = 0.999   # ANCHORS.md: >= 99.9 % successful calls
PASS_RETRANS = 0.01    # ... and <= 1 % retransmissions (per call)
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
        # --log-level info: the parent's "N worker processes serving" says when all are up.
        argv = ["run", "--listen", f"udp:{sipp.LOCALHOST}:{slot.port}",
                "--routes", str(routes), "--log-level", "info" if workers > 1 else "warning",
                *_workers(workers)]
        if not redis:
            return _started(sipp.start_babelsip(argv), workers)
        redis_port = sipp.free_port()
        argv += ["--store", f"redis://{sipp.LOCALHOST}:{redis_port}/0"]
        script = (f"redis-server --port {redis_port} --bind {sipp.LOCALHOST} --save '' "
                  f"--appendonly no --dir {slot.workdir} >/dev/null & sleep 0.3; exec "
                  + " ".join(shlex.quote(a) for a in sipp.babelsip_command() + argv))
        proxy = sipp.ProxyProcess(["sh", "-c", script], sipp.parse_listens(argv),
                                  name="babelsip-redis", group=True)
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
    System("babelsip-lua", "babelsip run --routes bench/routes/lua", babelsip_routes("lua")),
    System("babelsip-lua-redis", "the same with --store redis:// (its own redis-server, in its CPU)",
           babelsip_routes("lua", redis=True)),
    System("babelsip-python", "babelsip run --routes bench/routes/python", babelsip_routes("python")),
    System("babelsip-perl", "babelsip run --routes bench/routes/perl", babelsip_routes("perl")),
    System("babelsip-java", "babelsip run --routes bench/routes/java", babelsip_routes("java")),
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
                      babelsip_routes(folder, redis=redis == "redis", workers=workers))
    if name in ("kamailio", "kamailio-qm"):
        return System(f"{name}-w{workers}", f"{SYSTEMS[name].about}, {workers} UDP workers (-n {workers})",
                      kamailio(fast_allocator=name == "kamailio", workers=workers))
    return None


# --------------------------------------------------------------------------
# measuring


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of `root` and all its descendants (children that already
    exited are not counted: the proxies keep their workers for the whole run)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()  # after "(comm)"; fields[0] is state
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total, todo = 0.0, [root]
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


def _seconds(sipp_time: str) -> float | None:
    """sipp's 'HH:MM:SS:USEC' durations."""
    try:
        h, m, s, us = (int(x) for x in sipp_time.split(":"))
    except ValueError:
        return None
    return h * 3600 + m * 60 + s + us / 1e6


@dataclass
class Step:
    system: str
    rate: int
    calls: int
    successful: int
    failed: int
    retransmissions: int     # uac + uas
    cpu_us_per_call: float
    response_ms: float | None  # sipp's mean INVITE -> 200 time
    wall_s: float
    passed: bool
    note: str = ""


def run_step(system: str, proxy: sipp.ProxyProcess | None, slot: Slot, rate: int,
             duration: float) -> Step:
    calls = max(1, int(rate * duration))
    stepdir = slot.workdir / f"{rate}"
    log_mark = proxy.log_mark() if proxy else 0
    with sipp.start_sipp_server("uas", stepdir, name="uas", port=slot.uas_port,
                                timeout=duration + 90, extra=["-fd", "1"]) as uas:
        cpu0, t0 = tree_cpu_seconds(proxy.pid) if proxy else 0.0, time.monotonic()
        uac = sipp.run_sipp(
            "uac", stepdir, name="uac", port=sipp.free_port(),
            remote=(sipp.LOCALHOST, slot.port if proxy else slot.uas_port),
            calls=calls, rate=rate, timeout=duration + 40,
            # a call waiting 4 s for a message is lost anyway: end it, end the step sooner
            extra=["-recv_timeout", "4000", "-max_socket", "4096"])
        cpu1, t1 = tree_cpu_seconds(proxy.pid) if proxy else 0.0, time.monotonic()
        time.sleep(1.2)  # one more periodic dump of the uas counters (-fd 1)
        uas_stats = uas.snapshot()
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
    response = _seconds(uac.counters.get("ResponseTime1(C)", ""))
    return Step(system, rate, calls, uac.successful, uac.failed, retrans,
                round((cpu1 - cpu0) * 1e6 / calls, 1),
                None if response is None else round(response * 1000, 2),
                round(t1 - t0, 2), passed, note)


# --------------------------------------------------------------------------
# reporting


def print_step(step: Step) -> None:
    ok = 100.0 * step.successful / step.calls
    re = 100.0 * step.retransmissions / step.calls
    resp = "-" if step.response_ms is None else f"{step.response_ms:.2f}"
    print(f"{step.system:<16} {step.rate:>6} {step.calls:>7} {ok:>8.2f}% {re:>7.2f}% "
          f"{step.cpu_us_per_call:>9.1f} {resp:>8} {step.wall_s:>6.1f}  "
          f"{'pass' if step.passed else 'FAIL'} {step.note}", flush=True)


def summarize(steps: list[Step], systems: list[str], reference: str | None) -> dict:
    best: dict[str, Step | None] = {}
    for name in systems:
        passing = [s for s in steps if s.system == name and s.passed]
        best[name] = max(passing, key=lambda s: s.rate) if passing else None
    print("\nmax sustained (>= 99.9 % ok, <= 1 % retransmissions):")
    print(f"{'system':<16} {'calls/s':>8} {'CPU us/call':>12}")
    for name in systems:
        b = best[name]
        print(f"{name:<16} {b.rate if b else 0:>8} {b.cpu_us_per_call if b else float('nan'):>12.1f}")
    ratios = {}
    ref = best.get(reference) if reference else None
    if ref is not None:
        print(f"\nratios against {reference} (same run):")
        for name in systems:
            b = best[name]
            if name == reference or b is None:
                continue
            # CPU per call compared at the highest rate both passed: same load.
            common = [s.rate for s in steps if s.system == name and s.passed
                      and any(r.system == reference and r.passed and r.rate == s.rate for r in steps)]
            cpu_ratio = None
            if common:
                rate = max(common)
                mine = next(s for s in steps if s.system == name and s.rate == rate and s.passed)
                theirs = next(s for s in steps if s.system == reference and s.rate == rate and s.passed)
                if theirs.cpu_us_per_call > 0:
                    cpu_ratio = round(mine.cpu_us_per_call / theirs.cpu_us_per_call, 2)
            rate_ratio = round(b.rate / ref.rate, 3)
            ratios[name] = {"rate": rate_ratio, "cpu_per_call": cpu_ratio,
                            "cpu_compared_at": max(common) if common else None}
            cpu_text = (f"{cpu_ratio:.2f}x CPU per call at {max(common)} calls/s"
                        if cpu_ratio is not None else "no common passing rate for CPU")
            print(f"  {name}: {rate_ratio:.2f}x the rate, {cpu_text}")
    return {"best": {k: (asdict(v) if v else None) for k, v in best.items()}, "ratios": ratios}


# --------------------------------------------------------------------------


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
    ap.add_argument("--json", type=Path, help="write the steps and summary here "
                    "(default bench/results/bench-<time>.json)")
    args = ap.parse_args(argv)

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
            print(f"\n{'system':<16} {'rate':>6} {'calls':>7} {'ok':>9} {'retrans':>8} "
                  f"{'CPU us/c':>9} {'resp ms':>8} {'wall':>6}")
            climbing = [name for name in chosen if name in proxies]
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
        finally:
            for proxy in proxies.values():
                if proxy is not None:
                    proxy.stop()

    ran = [name for name in chosen if any(s.system == name for s in steps)]
    summary = summarize(steps, ran, args.reference if args.reference in ran else None)
    out = args.json or REPO / "bench" / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"duration": args.duration, "rates": rates, "systems": chosen,
                               "steps": [asdict(s) for s in steps], **summary}, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
