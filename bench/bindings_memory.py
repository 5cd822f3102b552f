"""Registrar memory: the server's RSS with 100,000 bindings (target: babelsip
holds 100,000 bindings in at most 200 MB RSS).

Starts the real server on 127.0.0.1 (UDP), notes its memory, then sipp
(bench/register/register_noauth.xml, an injection file of `--count` distinct
users user000000.., each REGISTER with its own Contact and Expires 3600,
answered 200 without a challenge) registers every user once at up to `--rate`
per second with at most `--limit` registrations in flight (so a slower server
sets the pace). Then it checks a sample of the AoRs with a REGISTER without
Contact (the 200 lists the bindings, RFC 3261 §10.2.3). The users register in
`--rounds` rounds (2 by default, each a new batch of AoRs); after each, the
memory is read right away and after `--settle` seconds (the REGISTER
transactions' Timer J tails are 32 s: after them only the bindings remain).

Memory figures, from /proc: VmRSS of the server's own process (the brief's
figure; babelsip keeps its bindings in its main process), and the RSS and PSS
summed over its process tree (route runtimes, Kamailio's workers; PSS counts
shared pages, such as Kamailio's shared memory, once). Bytes per binding =
(settled main RSS - baseline) / registered; for Kamailio the tree PSS.
babelsip's heap does not shrink when the transactions end, so its figure is
the peak: bindings plus the REGISTER transactions held at once (about
rate x 32 s at the end of the run; the status line, SIGUSR1, says how many).
The last round's growth (settled after it - settled before it) / its bindings
is closer to the bindings alone: the transactions of that round reuse the heap
the earlier round's transactions left free. A lower --rate does so too.

babelsip:  babelsip run --listen udp:127.0.0.1:PORT --routes TMP --log-level info
           TMP is a temporary folder holding main.lua:
             function on_request(req) if req.method == "REGISTER" then req:save() return end end
           (--routes DIR uses another folder; it must save REGISTERs without auth)
kamailio:  bench/register/kamailio-register.cfg with NO_AUTH (save("location"),
           usrloc db_mode 0), 1 worker, -x fm -X fm, -m 1024 (MB of shared memory).

  python bench/bindings_memory.py                       # babelsip, then kamailio
  python bench/bindings_memory.py --systems babelsip --count 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import register as reg  # noqa: E402  (bench/register.py: users, servers)
from register import REPO, Slot, sipp  # noqa: E402
from proctree import tree_cpu_seconds, tree_pids  # noqa: E402  (bench/proctree.py)
from memory import server_stats  # noqa: E402  (bench/memory.py: babelsip's SIGUSR1 status line)

SAVE_ROUTE = """-- bench/bindings_memory.py: save every REGISTER's bindings, no authentication.
function on_request(req)
  if req.method == "REGISTER" then
    req:save()
    return
  end
end
"""
TARGET_MB = 200


def _status_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(pid: int) -> dict[str, float]:
    """MB: the process's VmRSS, and RSS / PSS summed over its process tree."""
    pids = tree_pids(pid)
    return {"rss_mb": _status_kb(pid) / 1024,
            "tree_rss_mb": sum(_status_kb(p) for p in pids) / 1024,
            "tree_pss_mb": sum(_pss_kb(p) for p in pids) / 1024,
            "processes": len(pids)}


def fmt(mem: dict[str, float]) -> str:
    return (f"main RSS {mem['rss_mb']:8.1f} MB   tree RSS {mem['tree_rss_mb']:8.1f} MB   "
            f"tree PSS {mem['tree_pss_mb']:8.1f} MB   ({mem['processes']} processes)")


def query_bindings(port: int, user: str) -> int | None:
    """REGISTER without Contact for `user`: how many Contacts the 200 lists (None: no 200)."""
    with_port = sipp.free_port()
    request = (f"REGISTER sip:{sipp.LOCALHOST}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {sipp.LOCALHOST}:{with_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
               f"Max-Forwards: 70\r\n"
               f"From: <sip:{user}@{sipp.LOCALHOST}>;tag={uuid.uuid4().hex[:8]}\r\n"
               f"To: <sip:{user}@{sipp.LOCALHOST}>\r\n"
               f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n").encode()
    for reply in sipp.udp_exchange(port, [request], local_port=with_port, settle=0.5, deadline=3):
        if sipp.status_code(reply) == 200:
            text = reply.decode(errors="replace").lower()
            return sum(1 for line in text.split("\r\n")
                       if line.startswith("contact:") or line.startswith("m:"))
    return None


def babelsip_state(proxy: sipp.ProxyProcess) -> str:
    """Transactions still held and the services' counters, from babelsip's status line."""
    stats = server_stats(proxy)
    if not stats:
        return ""
    return (f"          babelsip: {stats.get('server_transactions')} server transactions, "
            f"{stats.get('timers')} timers; services {json.dumps(stats.get('services', {}))[:300]}")


def register_round(name: str, proxy: sipp.ProxyProcess, slot: Slot, users: list[str],
                   index: int, args) -> dict:
    """Register `users` once each (a fresh injection file: sipp reads it from its start)."""
    inf = reg.write_users(slot.workdir / f"users-{index}.csv", users, contact_port=slot.uas_port)
    cpu0, t0 = tree_cpu_seconds(proxy.pid), time.monotonic()
    result = sipp.run_sipp(
        str(reg.REGISTER_NOAUTH), slot.workdir, name=f"register-{index}", port=sipp.free_port(),
        remote=(sipp.LOCALHOST, slot.port), calls=len(users), rate=args.rate,
        limit=args.limit, timeout=len(users) / min(args.rate, 200) + 60,
        extra=["-inf", str(inf), "-recv_timeout", "8000", "-max_socket", "4096"])
    wall, cpu = time.monotonic() - t0, tree_cpu_seconds(proxy.pid) - cpu0
    print(f"round {index}: {result.successful}/{len(users)} registered, {result.failed} failed, "
          f"{result.retransmissions} retransmissions, {wall:.1f} s "
          f"({result.successful / wall if wall else 0:.0f}/s), "
          f"{cpu * 1e6 / max(1, len(users)):.1f} us CPU each {result.failure_reasons or ''}",
          flush=True)
    if not proxy.alive():
        raise RuntimeError(f"{name} died:\n{proxy.log()[-2000:]}")
    after = memory(proxy.pid)
    print(f"  after:    {fmt(after)}", flush=True)
    if name == "babelsip":
        print(babelsip_state(proxy), flush=True)
    time.sleep(args.settle)
    settled = memory(proxy.pid)
    print(f"  settled:  {fmt(settled)}  (+{args.settle:g} s)", flush=True)
    if name == "babelsip":
        print(babelsip_state(proxy), flush=True)
    return {"users": len(users), "registered": result.successful, "failed": result.failed,
            "retransmissions": result.retransmissions, "wall_s": round(wall, 2),
            "cpu_us_per_registration": round(cpu * 1e6 / max(1, len(users)), 1),
            "after": after, "settled": settled}


def measure(name: str, start, slot: Slot, users: list[str], args) -> dict:
    print(f"\n== {name}", flush=True)
    key = "tree_pss_mb" if name == "kamailio" else "rss_mb"
    proxy = start(slot)
    try:
        time.sleep(args.warmup)
        before = memory(proxy.pid)
        print(f"before:   {fmt(before)}", flush=True)
        size = -(-len(users) // args.rounds)
        rounds = [register_round(name, proxy, slot, users[i:i + size], n + 1, args)
                  for n, i in enumerate(range(0, len(users), size))]
        sample = random.Random(1).sample(users, min(args.check, len(users)))
        held = sum(1 for user in sample if query_bindings(slot.port, user))
        print(f"check:    {held}/{len(sample)} sampled AoRs list their binding "
              f"(REGISTER without Contact)", flush=True)
    finally:
        proxy.stop()
    registered = sum(r["registered"] for r in rounds)
    final = rounds[-1]["settled"]
    per = (final[key] - before[key]) * 2**20 / registered if registered else float("nan")
    marginal = None
    if len(rounds) > 1 and rounds[-1]["registered"]:
        marginal = round((final[key] - rounds[-2]["settled"][key]) * 2**20 / rounds[-1]["registered"])
    print(f"=> {registered} bindings: {key} {before[key]:.1f} -> {final[key]:.1f} MB, "
          f"{per:.0f} bytes per binding overall"
          + (f", {marginal} in the last round" if marginal is not None else ""), flush=True)
    return {"system": name, "count": len(users), "registered": registered,
            "sample_checked": len(sample), "sample_held": held, "before": before,
            "rounds": rounds, "settled": final, "measure": key,
            "bytes_per_binding": None if per != per else round(per),
            "bytes_per_binding_last_round": marginal}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="babelsip,kamailio", help="comma-separated: babelsip, kamailio")
    ap.add_argument("--count", type=int, default=100_000, help="distinct AoRs to register")
    ap.add_argument("--rate", type=int, default=2000, help="REGISTERs/s sipp aims at")
    ap.add_argument("--limit", type=int, default=200, help="registrations in flight at most")
    ap.add_argument("--routes", type=Path, help="babelsip routes folder that saves REGISTERs "
                    "without auth (default: a temporary one with the route above)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before the baseline")
    ap.add_argument("--settle", type=float, default=35.0,
                    help="seconds after the registrations before the last reading (Timer J: 32 s)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="register the AoRs in this many rounds, each followed by --settle")
    ap.add_argument("--check", type=int, default=50, help="AoRs to query afterwards")
    ap.add_argument("--json", type=Path, help="write the figures here "
                    "(default bench/results/bindings-memory-<time>.json)")
    args = ap.parse_args(argv)
    if sipp.sipp_binary() is None:
        print("sipp not found (Debian package sip-tester)", file=sys.stderr)
        return 2
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in ("babelsip", "kamailio")]
    if unknown:
        ap.error(f"unknown systems {unknown}; known: babelsip, kamailio")
    users = [f"user{i:06d}" for i in range(args.count)]
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {os.cpu_count()} CPUs  {args.count} distinct AoRs "
          f"at up to {args.rate}/s, {args.limit} in flight; systems: {', '.join(chosen)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="babelsip-bench-bindings-") as tmp:
        routes = reg.routes_folder(args.routes) if args.routes else Path(tmp) / "routes"
        if not args.routes:
            routes.mkdir()
            (routes / "main.lua").write_text(SAVE_ROUTE)
        for name in chosen:
            slot = Slot(sipp.free_port(), sipp.free_port(), Path(tmp) / name)
            slot.workdir.mkdir(parents=True)
            if name == "babelsip":
                # info: the status line on SIGUSR1 (transactions held) is logged at info
                start = reg.start_babelsip(routes, log_level="info")
                print(f"#   babelsip {' '.join(reg.babelsip_argv(slot.port, routes, 'info'))}")
            else:
                start = reg.start_kamailio(no_auth=True)
                print(f"#   {reg.kamailio_argv_note(no_auth=True)} -m 1024")
            try:
                results.append(measure(name, start, slot, users, args))
            except Exception as exc:  # report, go on with the next system
                print(f"# {name} failed: {str(exc)[:2000]}", file=sys.stderr, flush=True)
    print(f"\n{'system':<10} {'bindings':>9} {'before MB':>10} {'settled MB':>11} {'bytes/binding':>14}"
          f" {'last round':>11}  (babelsip: main VmRSS; kamailio: tree PSS)")
    for r in results:
        key = r["measure"]
        last = r["bytes_per_binding_last_round"]
        verdict = ""
        if r["system"] == "babelsip":
            # the main RSS this growth per binding gives at 100,000 bindings
            projected = (r["before"]["rss_mb"] + (r["bytes_per_binding"] or 0) * 100_000 / 2**20)
            ok = r["registered"] >= r["count"] and r["sample_held"] == r["sample_checked"] \
                and projected <= TARGET_MB
            verdict = (f"{projected:.0f} MB at 100,000: target <= {TARGET_MB} MB "
                       f"{'met' if ok else 'NOT met'}")
            if last is not None:
                alone = r["before"]["rss_mb"] + last * 100_000 / 2**20
                verdict += f" (bindings alone, at the last round's cost: {alone:.0f} MB)"
        print(f"{r['system']:<10} {r['registered']:>9} {r['before'][key]:>10.1f} "
              f"{r['settled'][key]:>11.1f} {r['bytes_per_binding'] or float('nan'):>14.0f} "
              f"{last if last is not None else float('nan'):>11.0f}  {verdict}")
    out = args.json or REPO / "bench" / "results" / f"bindings-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"count": args.count, "rate": args.rate, "limit": args.limit,
                               "results": results}, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
