"""Registration-rate benchmark: REGISTERs with digest authentication per second
and CPU per registration, babelsip against Kamailio in the same run.

One registration is what bench/register/register_auth.xml does with sipp (UDP,
127.0.0.1): REGISTER, 401 with an MD5 challenge (qop=auth), REGISTER again
with the credentials, 200. The users come from an injection file
(user0000..user9999 by default, password "secret", read in order and wrapped
around), so the registrar holds many distinct AoRs, each refreshed as the file
wraps. For each rate in turn every system gets `rate x duration` registrations
(the order alternates between rates, as in bench/run.py); a step passes when
>= 99.9 % of them succeed and sipp retransmitted for <= 1 % of them. The
server's CPU per registration is the utime+stime of its process tree over the
step (bench/run.py's tree_cpu_seconds) divided by the registrations; the
ratios compare CPU at the highest rate both systems passed.
sipp answers the 401 itself ([authentication], with -au '[field0]' -ap
'[field1]': sipp 3.6 cannot nest fields in the keyword's own parameters, and
answers only a first, MD5 challenge). BENCH_LOG_LEVEL=debug sets babelsip's
--log-level (default warning).

Systems:
  babelsip   babelsip run --listen udp:127.0.0.1:PORT --routes ROUTES --log-level warning
             ROUTES = --routes (default bench/register/routes: authenticate every
             user with password "secret", realm = the server's address, save;
             INVITE -> lookup). examples/quickstart/routes authenticates alice and
             bob only (realm "babelsip"): --routes examples/quickstart --users alice,bob
             (an example's folder stands for its routes/ subfolder).
  kamailio   bench/register/kamailio-register.cfg: pv_www_authenticate("$td",
             "secret") + www_challenge(qop=auth), registrar save("location"),
             usrloc in memory (db_mode 0); 1 worker, UDP, -x fm -X fm (as run.py).

  python bench/register.py                              # babelsip vs kamailio
  python bench/register.py --systems kamailio --rates 1000,2000,4000
  python bench/register.py --routes examples/quickstart --users alice,bob
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402  (bench/run.py: Slot, Step, tree_cpu_seconds, print_step, summarize)
from run import REPO, Slot, Step, sipp  # noqa: E402

HERE = BENCH / "register"
KAMAILIO_CFG = HERE / "kamailio-register.cfg"
REGISTER_AUTH = HERE / "register_auth.xml"
REGISTER_NOAUTH = HERE / "register_noauth.xml"
DEFAULT_ROUTES = HERE / "routes"
DEFAULT_RATES = "250,500,1000,1500,2000,3000,4000,5000,6000,8000,10000,12000"

# A step runner: (system name, proxy, slot, rate, duration) -> Step
StepRunner = Callable[[str, sipp.ProxyProcess, Slot, int, float], Step]


# --------------------------------------------------------------------------
# users and servers (shared with registered_calls.py and bindings_memory.py)


def user_names(spec: str) -> list[str]:
    """'10000' -> user0000..user9999; 'alice,bob' -> those names."""
    if spec.isdigit():
        count = int(spec)
        width = max(4, len(str(count - 1)))
        return [f"user{i:0{width}d}" for i in range(count)]
    return [name.strip() for name in spec.split(",") if name.strip()]


def write_users(path: Path, users: list[str], *, password: str = "secret",
                contact_host: str = sipp.LOCALHOST, contact_port: int = 9) -> Path:
    """A sipp injection file: user;password;contact host;contact port, read in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for user in users:
            f.write(f"{user};{password};{contact_host};{contact_port}\n")
    return path


def babelsip_argv(port: int, routes: Path | str, log_level: str | None = None) -> list[str]:
    """The babelsip command line the benchmarks run (after the babelsip executable);
    the log level is BENCH_LOG_LEVEL from the environment, else warning."""
    return ["run", "--listen", f"udp:{sipp.LOCALHOST}:{port}", "--routes", str(routes),
            "--log-level", log_level or os.environ.get("BENCH_LOG_LEVEL", "warning")]


def start_babelsip(routes: Path | str, log_level: str | None = None,
                   workers: int = 1) -> Callable[[Slot], sipp.ProxyProcess]:
    def start(slot: Slot) -> sipp.ProxyProcess:
        more = ["--workers", str(workers), "--log-level", "info"] if workers > 1 else []
        proxy = sipp.start_babelsip(babelsip_argv(slot.port, routes, log_level) + more, cwd=REPO)
        deadline = time.monotonic() + 30   # the parent says when every worker serves
        while workers > 1 and time.monotonic() < deadline and \
                f"{workers} worker processes serving" not in proxy.log():
            time.sleep(0.1)
        return proxy
    return start


def start_babelsip_redis(routes: Path | str, log_level: str | None = None) -> Callable[[Slot], sipp.ProxyProcess]:
    """babelsip with --store on a redis-server of its own, started as its
    child: the tree CPU the step measures includes Redis's, and stopping the
    server's process group stops Redis too."""
    def start(slot: Slot) -> sipp.ProxyProcess:
        redis_port = sipp.free_port()
        argv = babelsip_argv(slot.port, routes, log_level) + [
            "--store", f"redis://{sipp.LOCALHOST}:{redis_port}/0"]
        script = (f"redis-server --port {redis_port} --bind {sipp.LOCALHOST} --save '' "
                  f"--appendonly no --dir {slot.workdir} >/dev/null & sleep 0.3; exec "
                  + " ".join(shlex.quote(a) for a in sipp.babelsip_command() + argv))
        proxy = sipp.ProxyProcess(["sh", "-c", script], sipp.parse_listens(argv),
                                  name="babelsip-redis", cwd=REPO, group=True)
        proxy.wait_ready(15.0)
        return proxy
    return start


def start_kamailio(*, no_auth: bool = False, shm_mb: int = 1024) -> Callable[[Slot], sipp.ProxyProcess]:
    """Kamailio with bench/register/kamailio-register.cfg (copied with NO_AUTH defined
    when asked: start_kamailio takes no -A of ours)."""
    def start(slot: Slot) -> sipp.ProxyProcess:
        cfg = KAMAILIO_CFG
        if no_auth:
            cfg = slot.workdir / "kamailio-register-noauth.cfg"
            text = KAMAILIO_CFG.read_text()
            cfg.write_text(text.replace("#!KAMAILIO\n", "#!KAMAILIO\n#!define NO_AUTH\n", 1))
        return sipp.start_kamailio(slot.port, f"sip:{sipp.LOCALHOST}:9", slot.workdir,
                                   cfg=cfg, shm_mb=shm_mb)
    return start


def kamailio_argv_note(no_auth: bool = False) -> str:
    return (f"kamailio -f {KAMAILIO_CFG.relative_to(REPO)} -n 1 -x fm -X fm -T"
            + (" (NO_AUTH)" if no_auth else ""))


# --------------------------------------------------------------------------
# one step: sipp runs a scenario file against the server


def sipp_step(system: str, proxy: sipp.ProxyProcess, slot: Slot, rate: int, duration: float, *,
              scenario: Path, inf: Path, uas_port: int | None = None, name: str = "reg",
              count: int | None = None, uas_scenario: str = "uas") -> Step:
    """`rate x duration` runs of `scenario` (with injection file `inf`) against the
    server; with `uas_port`, a sipp uas (`uas_scenario`: built in, or a file) listens
    there for the step."""
    count = count or max(1, round(rate * duration))
    auth = ["-au", "[field0]", "-ap", "[field1]"]  # see register_auth.xml
    stepdir = slot.workdir / f"{name}-{rate}-{time.monotonic_ns()}"
    log_mark = proxy.log_mark()
    with contextlib.ExitStack() as stack:
        uas = None
        if uas_port is not None:
            uas = stack.enter_context(sipp.start_sipp_server(
                uas_scenario, stepdir, name="uas", port=uas_port, timeout=duration + 90,
                extra=["-fd", "1"]))
        cpu0, t0 = run.tree_cpu_seconds(proxy.pid), time.monotonic()
        uac = sipp.run_sipp(
            str(scenario), stepdir, name=name, port=sipp.free_port(),
            remote=(sipp.LOCALHOST, slot.port), calls=count, rate=rate, timeout=duration + 40,
            extra=[*auth, "-inf", str(inf), "-recv_timeout", "4000", "-max_socket", "4096"])
        cpu1, t1 = run.tree_cpu_seconds(proxy.pid), time.monotonic()
        uas_retrans = 0
        if uas is not None:
            time.sleep(1.2)  # one more periodic dump of the uas counters (-fd 1)
            uas_retrans = uas.snapshot().retransmissions
    retrans = uac.retransmissions + uas_retrans
    passed = (uac.successful >= run.PASS_SUCCESS * count and retrans <= run.PASS_RETRANS * count
              and uac.returncode in (0, 1))
    note = ""
    if not proxy.alive():
        passed, note = False, f"{system} died: " + proxy.log()[-300:]
    elif uac.returncode not in (0, 1):
        note = f"sipp rc={uac.returncode}"
        if uac.returncode not in (0, 1, 99) and not uac.counters:
            note += ": " + uac.screen[-300:].replace("\n", " ")
    elif not passed:
        errors = [line for line in proxy.log_since(log_mark) if "ERROR" in line or "CRITICAL" in line]
        note = f"proxy log: {errors[0].strip()[:120]}" if errors else ""
    if not note and uac.failure_reasons:
        note = " ".join(f"{k[6:]}={v}" for k, v in uac.failure_reasons.items())
    if not passed and uac.errors and "unexpected" in uac.errors.lower() and len(note) < 200:
        # the first unexpected message, e.g. a 403 or 404 instead of the 200
        lines = [l for l in uac.errors.splitlines() if l.startswith("SIP/2.0")]
        if lines:
            note += f" [{lines[0][:60]}]"
    response = run._seconds(uac.counters.get("ResponseTime1(C)", ""))
    return Step(system, rate, count, uac.successful, uac.failed, retrans,
                round((cpu1 - cpu0) * 1e6 / count, 1),
                None if response is None else round(response * 1000, 2),
                round(t1 - t0, 2), passed, note)


# --------------------------------------------------------------------------
# the ramp, the table


def ramp(starters: dict[str, Callable[[Slot], sipp.ProxyProcess]], step: StepRunner,
         rates: list[int], duration: float, *, retries: int = 1, keep_going: bool = False,
         prepare: Callable[[str, sipp.ProxyProcess, Slot], None] | None = None,
         workdir: Path) -> list[Step]:
    """bench/run.py's loop: every system climbs the rates, taking turns (the order
    rotates at every rate), a failed step is re-run `retries` times, and a system
    stops at its first failed rate. `prepare` runs once per system after it started
    (e.g. registering the callees). Every server is stopped on the way out."""
    proxies: dict[str, sipp.ProxyProcess] = {}
    slots: dict[str, Slot] = {}
    steps: list[Step] = []
    try:
        for name, start in starters.items():
            slot = Slot(sipp.free_port(), sipp.free_port(), workdir / name)
            slot.workdir.mkdir(parents=True, exist_ok=True)
            try:
                proxies[name] = start(slot)
                if prepare is not None:
                    prepare(name, proxies[name], slot)
            except Exception as exc:  # a system that cannot start is reported, not fatal
                print(f"# {name} did not start: {str(exc)[:2000]}", file=sys.stderr, flush=True)
                if name in proxies:
                    proxies.pop(name).stop()
                continue
            slots[name] = slot
        print(f"\n{'system':<16} {'rate':>6} {'count':>7} {'ok':>9} {'retrans':>8} "
              f"{'CPU us/1':>9} {'resp ms':>8} {'wall':>6}", flush=True)
        climbing = [name for name in starters if name in proxies]
        for i, rate in enumerate(rates):
            if not climbing:
                break
            order = climbing[i % len(climbing):] + climbing[:i % len(climbing)]
            for name in order:
                for attempt in range(1 + retries):
                    result = step(name, proxies[name], slots[name], rate, duration)
                    if attempt:
                        result.note = (result.note + f" (retry {attempt})").strip()
                    run.print_step(result)
                    steps.append(result)
                    time.sleep(1.0)  # let lingering transactions drain
                    if result.passed or not proxies[name].alive():
                        break
                if not result.passed and not keep_going:
                    climbing.remove(name)
    finally:
        for proxy in proxies.values():
            proxy.stop()
    return steps


def report(steps: list[Step], systems: list[str], reference: str, unit: str,
           json_path: Path | None, stem: str, extra: dict) -> None:
    """bench/run.py's summary (max passing rate, CPU per unit, ratios against the
    reference at the highest common rate), with 'call' read as `unit`."""
    ran = [name for name in systems if any(s.system == name for s in steps)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary = run.summarize(steps, ran, reference if reference in ran else None)
    text = buf.getvalue()
    if unit != "call":
        text = (text.replace("calls/s", f"{unit}s/s").replace("us/call", f"us/{unit}")
                .replace("per call", f"per {unit}"))
    print(text, end="")
    out = json_path or REPO / "bench" / "results" / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**extra, "systems": systems, "steps": [asdict(s) for s in steps],
                               **summary}, indent=2))
    print(f"\nresults: {out}")


def common_args(ap: argparse.ArgumentParser, *, rates: str, systems: str = "babelsip,kamailio") -> None:
    ap.add_argument("--systems", default=systems, help="comma-separated, from: babelsip, babelsip-redis, babelsip-w2, kamailio")
    ap.add_argument("--routes", type=Path, default=DEFAULT_ROUTES,
                    help="babelsip's routes folder (default bench/register/routes; "
                    "examples/quickstart means examples/quickstart/routes)")
    ap.add_argument("--rates", default=rates, help="steps per second, ascending")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per step")
    ap.add_argument("--retries", type=int, default=1,
                    help="re-run a failed step this many times before a system stops climbing")
    ap.add_argument("--keep-going", action="store_true", help="keep stepping after a failed rate")
    ap.add_argument("--reference", default="kamailio", help="the system ratios are taken against")
    ap.add_argument("--json", type=Path, help="write the steps and summary here "
                    "(default bench/results/<script>-<time>.json)")


def routes_folder(path: Path) -> Path:
    """The folder to give babelsip's --routes: `path`, or its routes/ subfolder when
    `path` is an example's folder (examples/quickstart -> examples/quickstart/routes;
    babelsip would serve an empty route set and answer 500 otherwise)."""
    path = path.resolve()
    has_route = any(p.is_file() and p.stem == "main" for p in path.glob("main.*"))
    if not has_route and (path / "routes").is_dir():
        return path / "routes"
    return path


def chosen_starters(ap: argparse.ArgumentParser, args, *, no_auth: bool = False):
    args.routes = routes_folder(args.routes)
    table = {"babelsip": start_babelsip(args.routes),
             "babelsip-redis": start_babelsip_redis(args.routes),
             "babelsip-w2": start_babelsip(args.routes, workers=2),
             "kamailio": start_kamailio(no_auth=no_auth)}
    about = {"babelsip": "babelsip " + " ".join(babelsip_argv(0, args.routes)).replace(
                 f"{sipp.LOCALHOST}:0", f"{sipp.LOCALHOST}:PORT"),
             "babelsip-redis": "the same with --store redis://127.0.0.1:PORT/0 (its own "
                               "redis-server, counted in its CPU)",
             "babelsip-w2": "the same with --workers 2 (the workers share an LMDB store)",
             "kamailio": kamailio_argv_note(no_auth)}
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in table]
    if unknown:
        ap.error(f"unknown systems {unknown}; known: {', '.join(table)}")
    return {name: table[name] for name in chosen}, about


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(ap, rates=DEFAULT_RATES)
    ap.add_argument("--users", default="10000",
                    help="a count (user0000..) or comma-separated names; password 'secret'")
    args = ap.parse_args(argv)
    if sipp.sipp_binary() is None:
        print("sipp not found (Debian package sip-tester)", file=sys.stderr)
        return 2
    starters, about = chosen_starters(ap, args)
    rates = sorted(int(r) for r in args.rates.split(",") if r.strip())
    users = user_names(args.users)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {os.cpu_count()} CPUs  {args.duration:g} s per step; "
          f"REGISTER/401/REGISTER+digest/200, {len(users)} users; systems: {', '.join(starters)}")
    for name in starters:
        print(f"#   {name}: {about[name]}")
    with tempfile.TemporaryDirectory(prefix="babelsip-bench-register-") as tmp:
        inf = write_users(Path(tmp) / "users.csv", users)
        step = lambda name, proxy, slot, rate, duration: sipp_step(  # noqa: E731
            name, proxy, slot, rate, duration, scenario=REGISTER_AUTH, inf=inf)
        steps = ramp(starters, step, rates, args.duration, retries=args.retries,
                     keep_going=args.keep_going, workdir=Path(tmp))
    print("\n(one unit = one authenticated registration: REGISTER, 401, REGISTER, 200)")
    report(steps, list(starters), args.reference, "registration", args.json, "register",
           {"duration": args.duration, "rates": rates, "users": len(users)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
