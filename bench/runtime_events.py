"""Cost of one event through a line-JSON runtime, host and worker, no SIP.

Sends the bench route's INVITE event (bench/routes/<language>: record-route
and relay) to a StdioRuntime of real workers and prints, per language and
per way of sending, the host's CPU (this process) and the workers' CPU (from
/proc) per event, and the wall time per event:

  * `task`: what the server does for a runtime without `submit` — one trio
    task per event, `handle()` under a cancel scope (the route's deadline);
  * `submit`: `submit()` with a done callback, no task (the server's way
    since the runtimes offer it).

`--window` events are kept in flight, as a loaded server does (the host
writes them in one write, a worker answers them in one). Host and workers
share the machine's cores, so compare the rows of one run.

Run: BABELSIP_TEST_ROOT_WORKERS=1 python bench/runtime_events.py [--events N]
     [--window W] [--languages python,perl,java] [--pool P]
(the environment variable only as root, where route workers must otherwise
run as nobody, who may not be able to run this venv's interpreter.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from host.routes.runtime import RuntimeSpec  # noqa: E402
from runtimes.jsonline import StdioRuntime  # noqa: E402

ROUTES = REPO / "bench" / "routes"
FILES = {"python": "main.py", "perl": "main.pl", "java": "Main.java"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
SDP = ("v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
       "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def invite_event(n: int) -> dict:
    """The event of a sipp uac's INVITE, as host/routes/event.py builds it."""
    return {"hook": "on_request", "method": "INVITE", "ruri": "sip:service@127.0.0.1:5060",
            "ruri_user": "service", "ruri_host": "127.0.0.1", "ruri_local": True,
            "call_id": f"{n}-1@127.0.0.1", "cseq": 1, "from_uri": "sip:sipp@127.0.0.1:5061",
            "from_tag": f"{n}SIPpTag001", "to_uri": "sip:service@127.0.0.1:5060", "to_tag": "",
            "source_ip": "127.0.0.1", "source_port": 5061, "transport": "udp", "in_dialog": False,
            "auth_user": "",
            "headers": [["Via", f"SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-1-0"],
                        ["From", f"sipp <sip:sipp@127.0.0.1:5061>;tag={n}SIPpTag001"],
                        ["To", "service <sip:service@127.0.0.1:5060>"],
                        ["Call-ID", f"{n}-1@127.0.0.1"], ["CSeq", "1 INVITE"],
                        ["Contact", "sip:sipp@127.0.0.1:5061"], ["Max-Forwards", "70"],
                        ["Subject", "Performance Test"], ["Content-Type", "application/sdp"],
                        ["Content-Length", str(len(SDP))]],
            "body": SDP, "vars": {}}


def tree_cpu(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


async def run_task_per_event(rt, events, window, deadline):
    room = trio.Semaphore(window)

    async def one(ev):
        try:
            with trio.move_on_after(deadline):
                await rt.handle("on_request", ev)
        finally:
            room.release()

    async with trio.open_nursery() as nursery:
        for ev in events:
            await room.acquire()
            nursery.start_soon(one, ev)


async def run_submit(rt, events, window, deadline):
    room = trio.Semaphore(window)

    def answered(result) -> None:
        room.release()

    for ev in events:
        await room.acquire()
        if not rt.submit("on_request", ev, time.monotonic() + deadline, answered):
            raise SystemExit("submit declined: every worker at its cap (raise max_in_flight)")
    for _ in range(window):   # the last ones answered
        await room.acquire()


WAYS = {"task": run_task_per_event, "submit": run_submit}


async def measure(language: str, args, workdir: Path) -> None:
    routes = workdir / language
    shutil.copytree(ROUTES / language, routes, dirs_exist_ok=True)
    path = routes / FILES[language]
    path.write_text(path.read_text().replace("@UAS_URI@", "sip:127.0.0.1:5090"))
    spec = RuntimeSpec("main", path, language, deadline=1.0, pool=args.pool,
                       options=(("state_dir", str(workdir / "state")),))
    rt = StdioRuntime(spec)
    await rt.start()
    try:
        warm = [invite_event(n) for n in range(min(2000, args.events))]
        await run_submit(rt, warm, args.window, 1.0)   # JIT, caches
        for rep in range(args.repeat):
            for way, run in WAYS.items():
                events = [invite_event(n) for n in range(args.events)]
                workers = [p for p in rt.pids if p]
                h0, w0, t0 = time.process_time(), tree_cpu(workers), time.perf_counter()
                await run(rt, events, args.window, 1.0)
                h1, w1, t1 = time.process_time(), tree_cpu(workers), time.perf_counter()
                n = args.events
                print(f"{language:<7} {way:<7} {args.window:>6} {1e6 * (h1 - h0) / n:>9.1f} "
                      f"{1e6 * (w1 - w0) / n:>11.1f} {1e6 * (t1 - t0) / n:>9.1f}", flush=True)
    finally:
        await rt.aclose()


async def main(args) -> None:
    print(f"{'runtime':<7} {'way':<7} {'window':>6} {'host us':>9} {'workers us':>11} {'wall us':>9}"
          "   (per event)")
    with tempfile.TemporaryDirectory(prefix="babelsip-runtime-events-") as tmp:
        for language in args.languages.split(","):
            await measure(language, args, Path(tmp))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--window", type=int, default=20, help="events kept in flight")
    ap.add_argument("--languages", default="python,perl,java")
    ap.add_argument("--pool", type=int, default=2, help="workers (routes.toml pool; default 2)")
    ap.add_argument("--repeat", type=int, default=2)
    trio.run(main, ap.parse_args())
