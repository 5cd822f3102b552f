"""Calls per second between registered users (registrar lookup included),
babelsip against Kamailio in the same run.

Set-up, once per system: `--callees` users (user0000.. , password "secret")
register through the server with digest authentication
(bench/register/register_auth.xml) with Contact sip:userN@127.0.0.1:UAS, the
port where the system's sipp uas answers calls; every one must get its 200.

Each step: a sipp uas listens on UAS (bench/register/uas_rr.xml: sipp's
built-in uas that also copies Record-Route into its 180/200), and
bench/register/call_registered.xml places `rate x duration` calls to
sip:userN@127.0.0.1 (the AoR, cycling through the callees) through the server:
INVITE -> lookup -> uas, 100/180/200, ACK and BYE along the dialog's route set
(Record-Route of the 200), 200, no pause. A step passes when >= 99.9 % of the
calls succeed and sipp (uac + uas) retransmitted for <= 1 % of them; CPU per
call is the server's process-tree CPU over the step / calls (bench/run.py's
measure). Systems alternate at every rate; quote the ratios.

INVITEs are not authenticated on either side (only REGISTERs are): the
figures are lookup + stateful record-routed relay, comparable with
bench/run.py's plain relay.

Systems:
  babelsip   babelsip run --listen udp:127.0.0.1:PORT --routes ROUTES --log-level warning
             (ROUTES: --routes, default bench/register/routes: REGISTER ->
             authenticate + save, INVITE -> record_route + lookup). With
             examples/quickstart: --routes examples/quickstart --users alice,bob
             (its route authenticates those two only).
  kamailio   bench/register/kamailio-register.cfg: lookup("location"),
             record_route, t_relay; 1 worker, -x fm -X fm (as bench/run.py).

  python bench/registered_calls.py
  python bench/registered_calls.py --systems kamailio --rates 500,1000 --callees 100
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import register as reg  # noqa: E402  (bench/register.py: users, servers, step, ramp, report)
from register import sipp  # noqa: E402

DEFAULT_RATES = "250,500,1000,1500,2000,3000,4000,5000,6000"


def register_callees(name: str, proxy: sipp.ProxyProcess, slot, inf: Path, count: int,
                     rate: int) -> None:
    """Register every callee once (Contact -> the system's uas port); all must succeed."""
    step = reg.sipp_step(name, proxy, slot, rate, count / rate, scenario=reg.REGISTER_AUTH,
                         inf=inf, name="register-callees", count=count)
    print(f"# {name}: registered {step.successful}/{step.calls} callees "
          f"({step.cpu_us_per_call:.1f} us CPU each) {step.note}", flush=True)
    if step.successful < step.calls:
        raise RuntimeError(f"only {step.successful} of {step.calls} callees registered: {step.note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reg.common_args(ap, rates=DEFAULT_RATES)
    ap.add_argument("--users", "--callees", dest="users", default="1000",
                    help="callees: a count (user0000..) or comma-separated names; password 'secret'")
    ap.add_argument("--register-rate", type=int, default=500, help="REGISTERs/s of the set-up")
    args = ap.parse_args(argv)
    if sipp.sipp_binary() is None:
        print("sipp not found (Debian package sip-tester)", file=sys.stderr)
        return 2
    starters, about = reg.chosen_starters(ap, args)
    rates = sorted(int(r) for r in args.rates.split(",") if r.strip())
    users = reg.user_names(args.users)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {os.cpu_count()} CPUs  {args.duration:g} s per step; "
          f"calls to {len(users)} registered users (INVITE/lookup/200/ACK/BYE); "
          f"systems: {', '.join(starters)}")
    for name in starters:
        print(f"#   {name}: {about[name]}")
    with tempfile.TemporaryDirectory(prefix="babelsip-bench-regcalls-") as tmp:
        def prepare(name, proxy, slot):
            inf = reg.write_users(slot.workdir / "callees.csv", users, contact_port=slot.uas_port)
            register_callees(name, proxy, slot, inf, len(users), args.register_rate)

        def step(name, proxy, slot, rate, duration):
            return reg.sipp_step(name, proxy, slot, rate, duration,
                                 scenario=reg.HERE / "call_registered.xml",
                                 inf=slot.workdir / "callees.csv", uas_port=slot.uas_port,
                                 name="calls", uas_scenario=str(reg.HERE / "uas_rr.xml"))

        steps = reg.ramp(starters, step, rates, args.duration, retries=args.retries,
                         keep_going=args.keep_going, prepare=prepare, workdir=Path(tmp))
    print("\n(one unit = one call to a registered user: INVITE/100/180/200/ACK/BYE/200 via lookup)")
    reg.report(steps, list(starters), args.reference, "call", args.json, "registered-calls",
               {"duration": args.duration, "rates": rates, "callees": len(users)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
