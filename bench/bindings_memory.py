"""Registrar memory: the server's RSS with 100,000 bindings (target: babelsip
holds 100,000 bindings in at most 200 MB RSS).

Starts the real server on 127.0.0.1 (UDP), notes its memory, then sipp
(bench/register/register_noauth.xml, an injection file of `--count` distinct
users user000000.., each REGISTER with its own Contact and Expires 3600,
answered 200 without a challenge) registers every user once at up to `--rate`
per second with at most `--limit` registrations in flight (so a slower server
sets the pace). Then it checks a sample of the AoRs with a REGISTER without
Contact (the 200 lists the bindings, RFC 3261 §10.2.3), and reads the memory
again right away and after `--settle` seconds (the REGISTER transactions'
Timer J tails are 32 s: after them only the bindings remain).

Memory figures, from /proc: VmRSS of the server's own process (the brief's
figure; babelsip keeps its bindings in its main process), and the RSS and PSS
summed over its process tree (route runtimes, Kamailio's workers; PSS counts
shared pages, such as Kamailio's shared memory, once). Bytes per binding =
(settled main RSS - baseline) / registered; for Kamailio the tree PSS.

babelsip:  babelsip run --listen udp:127.0.0.1:PORT --routes TMP --log-level warning
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
from run import tree_cpu_seconds  # noqa: E402

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


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(b")") + 2:].split()[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def memory(pid: int) -> dict[str, float]:
    """MB: the process's VmRSS, and RSS / PSS summed over its process tree."""
    pids = _tree(pid)
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


def measure(name: str, start, slot: Slot, users: list[str], args) -> dict:
    print(f"\n== {name}", flush=True)
    inf = reg.write_users(slot.workdir / "users.csv", users, contact_port=slot.uas_port)
    proxy = start(slot)
    try:
        time.sleep(args.warmup)
        before = memory(proxy.pid)
        print(f"before:   {fmt(before)}", flush=True)
        cpu0, t0 = tree_cpu_seconds(proxy.pid), time.monotonic()
        timeout = len(users) / min(args.rate, 200) + 60
        result = sipp.run_sipp(
            str(reg.REGISTER_NOAUTH), slot.workdir, name="register", port=sipp.free_port(),
            remote=(sipp.LOCALHOST, slot.port), calls=len(users), rate=args.rate,
            limit=args.limit, timeout=timeout,
            extra=["-inf", str(inf), "-recv_timeout", "8000", "-max_socket", "4096"])
        wall, cpu = time.monotonic() - t0, tree_cpu_seconds(proxy.pid) - cpu0
        print(f"register: {result.successful}/{len(users)} ok, {result.failed} failed, "
              f"{result.retransmissions} retransmissions, {wall:.1f} s "
              f"({result.successful / wall if wall else 0:.0f}/s), "
              f"{cpu * 1e6 / max(1, len(users)):.1f} us CPU each {result.failure_reasons or ''}",
              flush=True)
        if not proxy.alive():
            raise RuntimeError(f"{name} died:\n{proxy.log()[-2000:]}")
        sample = random.Random(1).sample(users, min(args.check, len(users)))
        found = [query_bindings(slot.port, user) for user in sample]
        held = sum(1 for n in found if n)
        print(f"check:    {held}/{len(sample)} sampled AoRs list their binding "
              f"(REGISTER without Contact)", flush=True)
        after = memory(proxy.pid)
        print(f"after:    {fmt(after)}", flush=True)
        time.sleep(args.settle)
        settled = memory(proxy.pid)
        print(f"settled:  {fmt(settled)}  (+{args.settle:g} s)", flush=True)
    finally:
        proxy.stop()
    key = "tree_pss_mb" if name == "kamailio" else "rss_mb"
    grown = settled[key] - before[key]
    per = grown * 1024 * 1024 / result.successful if result.successful else float("nan")
    print(f"=> {result.successful} bindings: {key} {before[key]:.1f} -> {settled[key]:.1f} MB, "
          f"{per:.0f} bytes per binding", flush=True)
    return {"system": name, "count": len(users), "registered": result.successful,
            "failed": result.failed, "retransmissions": result.retransmissions,
            "wall_s": round(wall, 2), "cpu_us_per_registration": round(cpu * 1e6 / max(1, len(users)), 1),
            "sample_checked": len(sample), "sample_held": held,
            "before": before, "after": after, "settled": settled, "measure": key,
            "bytes_per_binding": None if per != per else round(per)}


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
        routes = args.routes.resolve() if args.routes else Path(tmp) / "routes"
        if not args.routes:
            routes.mkdir()
            (routes / "main.lua").write_text(SAVE_ROUTE)
        for name in chosen:
            slot = Slot(sipp.free_port(), sipp.free_port(), Path(tmp) / name)
            slot.workdir.mkdir(parents=True)
            if name == "babelsip":
                start = reg.start_babelsip(routes)
                print(f"#   babelsip {' '.join(reg.babelsip_argv(slot.port, routes))}")
            else:
                start = reg.start_kamailio(no_auth=True)
                print(f"#   {reg.kamailio_argv_note(no_auth=True)} -m 1024")
            try:
                results.append(measure(name, start, slot, users, args))
            except Exception as exc:  # report, go on with the next system
                print(f"# {name} failed: {str(exc)[:2000]}", file=sys.stderr, flush=True)
    print(f"\n{'system':<10} {'bindings':>9} {'before MB':>10} {'settled MB':>11} {'bytes/binding':>14}"
          f"  (babelsip: main VmRSS; kamailio: tree PSS)")
    for r in results:
        key = r["measure"]
        verdict = ""
        if r["system"] == "babelsip":
            # the main RSS this growth per binding gives at 100,000 bindings
            projected = (r["before"]["rss_mb"] + (r["bytes_per_binding"] or 0) * 100_000 / 2**20)
            ok = r["registered"] >= r["count"] and r["sample_held"] == r["sample_checked"] \
                and projected <= TARGET_MB
            verdict = (f"{projected:.0f} MB at 100,000: target <= {TARGET_MB} MB "
                       f"{'met' if ok else 'NOT met'}")
        print(f"{r['system']:<10} {r['registered']:>9} {r['before'][key]:>10.1f} "
              f"{r['settled'][key]:>11.1f} {r['bytes_per_binding'] or float('nan'):>14.0f}  {verdict}")
    out = args.json or REPO / "bench" / "results" / f"bindings-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"count": args.count, "rate": args.rate, "limit": args.limit,
                               "results": results}, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
