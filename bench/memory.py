"""Memory benchmark: does the server's RSS follow the calls in progress?

Starts the real server (`babelsip run`, as a child process) on 127.0.0.1 and
drives sipp at it, printing the server's resident set size (VmRSS from /proc)
and its own counters (server transactions, timers pending; read from the
status line it logs on SIGUSR1):

  (a) flood: `--flood-calls` INVITEs at `--flood-rate`/s that nobody answers:
      the proxy relays them to a UDP port where nothing listens, so every
      client transaction ends on Timer B (64*T1 = 32 s) and every caller gets
      a 408, which the sipp scenario ACKs. Run `--floods` times; after each,
      wait until the server has no transaction left, then `--wait` seconds
      more. RSS should return near its baseline and a second flood should
      not raise it.
  (b) load: sipp uac -> proxy -> sipp uas (answered calls, 0 s pause) at
      `--load-rate` calls/s for `--load-seconds`, RSS every `--sample`
      seconds. It should stay flat once the steady state (calls in progress
      plus 32 s of Timer L/J/D/K tails) is reached.

  python bench/memory.py                      # both, --relay-to
  python bench/memory.py --lua                # the same through a Lua route
  python bench/memory.py --skip-load --wait 30 --flood-calls 5000
  PYTHONPATH=/tmp/old-tree python bench/memory.py   # measure another tree

Not part of the test suite: it takes minutes (tests/e2e/test_memory_bound.py
is the cheap form of (a) that runs in `make test`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e import sipp  # noqa: E402  (the harness the e2e tests use)

# The caller of the flood: INVITE, then the 408 the proxy makes when Timer B
# fires on its branch, ACKed (same Via, To with the proxy's tag: §17.1.1.3).
# It waits up to 64 s for the 408 (Timer B is 32 s at the default T1).
FLOOD_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="unanswered INVITE">
  <send retrans="500">
    <![CDATA[

      INVITE sip:service@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: service <sip:service@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Subject: memory flood
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="408" timeout="64000"/>
  <send>
    <![CDATA[

      ACK sip:service@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""

LUA_ROUTE = """-- bench/memory.py: relay every request to one next hop.
function on_request(req)
  if req.method == "INVITE" then
    req:record_route()
  end
  req:relay("@TARGET@")
end
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def server_stats(proxy: sipp.ProxyProcess, timeout: float = 5.0) -> dict:
    """The statistics the server logs on SIGUSR1 (host/cli.py)."""
    mark = proxy.log_mark()
    os.kill(proxy.pid, signal.SIGUSR1)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in proxy.log_since(mark):
            if "status: {" in line:
                return json.loads(line.split("status: ", 1)[1])
        time.sleep(0.05)
    return {}


def describe(proxy: sipp.ProxyProcess) -> str:
    s = server_stats(proxy)
    return (f"rss {rss_mb(proxy.pid):6.1f} MB  server txns {s.get('server_transactions', '?'):>6}  "
            f"client txns {s.get('client_transactions', '?'):>6}  timers {s.get('timers', '?'):>6}")


def start_server(args, port: int, target: str, workdir: Path) -> sipp.ProxyProcess:
    env = dict(os.environ)
    if args.server_pythonpath:
        env["PYTHONPATH"] = args.server_pythonpath
    argv = ["run", "--listen", f"udp:{sipp.LOCALHOST}:{port}", "--log-level", "info"]
    if args.lua:
        routes = workdir / f"routes-{port}"
        routes.mkdir(parents=True, exist_ok=True)
        (routes / "main.lua").write_text(LUA_ROUTE.replace("@TARGET@", target))
        argv += ["--routes", str(routes)]
    else:
        argv += ["--relay-to", target]
    proxy = sipp.start_babelsip(argv, env=env)
    time.sleep(args.settle)
    return proxy


def flood(args, workdir: Path) -> None:
    port, dead = sipp.free_port(), sipp.free_port()
    proxy = start_server(args, port, f"sip:{sipp.LOCALHOST}:{dead}", workdir)
    scenario = workdir / "uac_unanswered.xml"
    scenario.write_text(FLOOD_SCENARIO)
    with proxy:
        print(f"flood: {args.flood_calls} unanswered INVITEs at {args.flood_rate}/s to a dead port "
              f"(udp:{dead}), {'Lua route' if args.lua else '--relay-to'}", flush=True)
        print(f"  start           {describe(proxy)}", flush=True)
        for n in range(1, args.floods + 1):
            uac_port = sipp.free_port()
            duration = args.flood_calls / args.flood_rate
            peak = 0.0
            with sipp.start_sipp(str(scenario), workdir, name=f"flood{n}", port=uac_port,
                                 remote=(sipp.LOCALHOST, port), calls=args.flood_calls,
                                 rate=args.flood_rate, limit=args.flood_calls,
                                 timeout=duration + 120, extra=["-fd", "1"]) as uac:
                while uac.proc.poll() is None:
                    peak = max(peak, rss_mb(proxy.pid))
                    time.sleep(0.5)
                result = uac.wait()
            print(f"  flood {n} done    {describe(proxy)}  (peak rss {peak:.1f} MB; sipp: "
                  f"{result.successful} ok, {result.failed} failed)", flush=True)
            end = time.monotonic() + 120
            while time.monotonic() < end:
                s = server_stats(proxy)
                if s.get("server_transactions", 1) == 0 and s.get("client_transactions", 1) == 0:
                    break
                time.sleep(1)
            print(f"  txns gone       {describe(proxy)}", flush=True)
            time.sleep(args.wait)
            print(f"  +{args.wait:g} s           {describe(proxy)}", flush=True)


def load(args, workdir: Path) -> None:
    port, uas_port, uac_port = sipp.free_port(), sipp.free_port(), sipp.free_port()
    calls = int(args.load_rate * args.load_seconds)
    with sipp.start_sipp_server("uas", workdir, port=uas_port, timeout=args.load_seconds + 120) as uas:
        proxy = start_server(args, port, f"sip:{sipp.LOCALHOST}:{uas_port}", workdir)
        with proxy:
            print(f"load: {calls} answered calls at {args.load_rate}/s for {args.load_seconds:g} s, "
                  f"{'Lua route' if args.lua else '--relay-to'}", flush=True)
            print(f"  t=   0 s  {describe(proxy)}", flush=True)
            start = time.monotonic()
            with sipp.start_sipp("uac", workdir, name="load", port=uac_port,
                                 remote=(sipp.LOCALHOST, port), calls=calls, rate=args.load_rate,
                                 timeout=args.load_seconds + 90) as uac:
                next_sample = start + args.sample
                while uac.proc.poll() is None:
                    if time.monotonic() >= next_sample:
                        print(f"  t={time.monotonic() - start:4.0f} s  {describe(proxy)}", flush=True)
                        next_sample += args.sample
                    time.sleep(0.2)
                result = uac.wait()
            print(f"  done      {describe(proxy)}  (sipp: {result.successful} ok, "
                  f"{result.failed} failed, {result.retransmissions} retransmissions)", flush=True)
            time.sleep(args.wait)
            print(f"  +{args.wait:g} s    {describe(proxy)}", flush=True)
    uas.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood-calls", type=int, default=20_000)
    ap.add_argument("--flood-rate", type=int, default=1_000)
    ap.add_argument("--floods", type=int, default=2)
    ap.add_argument("--wait", type=float, default=60.0,
                    help="seconds to wait once the transactions are gone before measuring")
    ap.add_argument("--load-rate", type=int, default=300)
    ap.add_argument("--load-seconds", type=float, default=120.0)
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between load samples")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after start before the baseline")
    ap.add_argument("--lua", action="store_true", help="route through a Lua route instead of --relay-to")
    ap.add_argument("--skip-flood", action="store_true")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--server-pythonpath", default=os.environ.get("PYTHONPATH"),
                    help="PYTHONPATH of the server only (to measure another tree)")
    args = ap.parse_args()
    if sipp.sipp_binary() is None:
        sys.exit("sipp is not installed (Debian package sip-tester)")
    with tempfile.TemporaryDirectory(prefix="babelsip-memory-") as tmp:
        if not args.skip_flood:
            flood(args, Path(tmp))
        if not args.skip_load:
            load(args, Path(tmp))


if __name__ == "__main__":
    main()
