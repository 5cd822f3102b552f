"""Cost of the sans-IO proxy core per call and per message kind, no sockets.

Replays a sipp-like INVITE/100/180/200/ACK/BYE/200 call through `ProxyCore`
in static relay mode and prints microseconds per call and per kind of
message received (the 100 Trying the proxy answers itself is not received;
the uas's own 100 is). Use it to see what the parser and transaction layer
cost before any I/O. Timers are not run: the call's tails (Timer J, L...)
would fire 32 s later and cost the same whichever path sent the messages.
With `--route` the core has no static target and consults a route for
every request, answered at once by the logic of bench/routes/lua/main.lua
(record-route the INVITE, relay everything) through the routes layer's own
event and Recorder: the core's and the routes boundary's share of a route's
cost, without any runtime (Lua's thread, a worker's pipe) behind it.
With `--spread N`, N calls are in progress at once and each next message
comes from one of them at random, as a loaded server sees them.
Run: python bench/core_calls.py [--calls N] [--route] [--spread N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import pstats
import random
import time

from host.routes.event import script_event
from host.routes.verbs import Recorder
from host.sip.actions import Consult
from host.sip.proxy import ProxyCore, Transmit

SDP = ("v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
       "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def invite(n):
    return (f"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-1-0\r\n"
            f"From: sipp <sip:sipp@127.0.0.1:5061>;tag={n}SIPpTag001\r\n"
            f"To: service <sip:service@127.0.0.1:5060>\r\n"
            f"Call-ID: {n}-1@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
            f"Contact: sip:sipp@127.0.0.1:5061\r\nMax-Forwards: 70\r\n"
            f"Subject: Performance Test\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(SDP)}\r\n\r\n{SDP}").encode()


def response(req: bytes, code: int, reason: str, to_tag=True) -> bytes:
    """As sipp's uas answers: every Via of the request in one line."""
    head = req.split(b"\r\n\r\n")[0].decode().split("\r\n")
    vias = [l.split(":", 1)[1].strip() for l in head[1:] if l.startswith("Via:")]
    keep = [l for l in head[1:] if l.split(":")[0] in ("From", "To", "Call-ID", "CSeq", "Record-Route")]
    keep = ["Via: " + ", ".join(vias)] + [l + ";tag=uas1" if l.startswith("To:") and to_tag else l
                                          for l in keep]
    return ("\r\n".join([f"SIP/2.0 {code} {reason}"] + keep +
                        ["Contact: <sip:127.0.0.1:5090>", "Content-Length: 0", "", ""])).encode()


def in_dialog(method, n, cseq, branch):
    return (f"{method} sip:service@127.0.0.1:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-{branch}\r\n"
            f"From: sipp <sip:sipp@127.0.0.1:5061>;tag={n}SIPpTag001\r\n"
            f"To: service <sip:service@127.0.0.1:5060>;tag=uas1\r\n"
            f"Call-ID: {n}-1@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: sip:sipp@127.0.0.1:5061\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


KINDS = ("INVITE", "100 (uas)", "180", "200 INVITE", "ACK", "BYE", "200 BYE")


def call_messages(n):
    """The messages of call `n` in order, as (kind, data, source). A
    generator sent, after each message, the last request the proxy relayed to
    the uas: the responses answer that, so they are built only then."""
    uac, uas = ("127.0.0.1", 5061), ("127.0.0.1", 5090)
    fwd = yield "INVITE", invite(n), uac
    yield "100 (uas)", response(fwd, 100, "Trying", to_tag=False), uas
    yield "180", response(fwd, 180, "Ringing"), uas
    yield "200 INVITE", response(fwd, 200, "OK"), uas
    yield "ACK", in_dialog("ACK", n, 1, "5"), uac
    fwd = yield "BYE", in_dialog("BYE", n, 2, "7"), uac
    yield "200 BYE", response(fwd, 200, "OK"), uas


UAS_URI = "sip:127.0.0.1:5090"
# What bench/routes/lua/main.lua reads from each event (runtimes/lua/runtime.py
# PREFETCHED fetches these for every event).
READ = ("method", "ruri", "ruri_user", "ruri_host", "from_uri", "from_tag", "to_uri",
        "to_tag", "call_id", "cseq", "source_ip", "source_port", "transport", "in_dialog")


def decide(consult: Consult):
    """bench/routes/lua/main.lua, in Python: the decision for one consult."""
    event = script_event(consult)
    for key in READ:
        event.get(key)
    recorder = Recorder(consult.hook)
    if event["method"] == "INVITE":
        recorder.record_route()
    recorder.relay(UAS_URI)
    return recorder.decision


class Recording(ProxyCore):
    """Keeps the last request it relayed to the uas (the responses answer it);
    with `route` set, answers every consult at once with `decide`."""
    last_forwarded = b""
    route = False

    def receive(self, data, transport, src):
        out = self._answered(super().receive(data, transport, src))
        for a in out:
            if isinstance(a, Transmit) and a.port == 5090 and not a.data.startswith(b"SIP/"):
                self.last_forwarded = a.data
        return out

    def _answered(self, out):
        if not self.route:
            return out
        done = []
        while out:
            action = out.pop(0)
            if type(action) is Consult:
                out.extend(self.decided(action.token, decide(action)))
            else:
                done.append(action)
        return done


def run_calls(core, names, spent=None, spread=1):
    """Every message of the calls `names` through `core`, `spread` calls in
    progress at a time, the next message taken from one of them at random
    (seeded): with spread 1 each call runs alone from INVITE to the 200 of
    its BYE, its state and its path hot in the CPU's caches; a server at
    1,000 calls/s reads each message of a call after hundreds of other
    messages of every kind. `spent` (kind -> seconds) adds up the time of
    each kind of message."""
    clock = time.perf_counter
    spent = dict.fromkeys(KINDS, 0.0) if spent is None else spent
    pick = random.Random(7).randrange
    names = iter(names)
    live = [call_messages(n) for n in itertools.islice(names, spread)]
    sent = [None] * len(live)
    while live:
        i = pick(len(live))
        try:
            kind, data, src = live[i].send(sent[i])
        except StopIteration:
            fresh = next(names, None)
            if fresh is None:
                live[i], sent[i] = live[-1], sent[-1]
                del live[-1], sent[-1]
            else:
                live[i], sent[i] = call_messages(fresh), None
            continue
        start = clock()
        core.receive(data, "udp", src)
        spent[kind] += clock() - start
        sent[i] = core.last_forwarded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5, help="report the fastest round (the machine is shared)")
    ap.add_argument("--route", action="store_true",
                    help="consult a route for every request (answered at once, as main.lua)")
    ap.add_argument("--spread", type=int, default=1, metavar="N",
                    help="N calls in progress, their messages interleaved (default 1: one call at a time)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    ids = itertools.count()
    core = Recording([("udp", "127.0.0.1", 5060)], relay_to=None if args.route else UAS_URI,
                     new_id=lambda: str(next(ids)))
    core.route = args.route
    run_calls(core, (f"w{n}" for n in range(max(200, args.spread))), spread=args.spread)
    if args.profile:
        gc.disable()
        cProfile.runctx("run_calls(core, range(args.calls), spread=args.spread)", globals(), locals(),
                        "/tmp/core.prof")
        pstats.Stats("/tmp/core.prof").sort_stats("tottime").print_stats(25)
        return
    # The collector is off while timing: its pauses depend on the heap the
    # un-fired timers leave behind here, not on the path (the server's
    # policy is host/shell/collector.py). Each kind: its fastest round.
    gc.collect()
    gc.disable()
    kinds = dict.fromkeys(KINDS, float("inf"))
    for r in range(args.rounds):
        spent = dict.fromkeys(KINDS, 0.0)
        run_calls(core, (f"r{r}-{n}" for n in range(args.calls)), spent, args.spread)
        for k in KINDS:
            kinds[k] = min(kinds[k], spent[k])
    gc.enable()
    per_call = sum(kinds.values()) / args.calls * 1e6
    print(f"core: {per_call:.1f} us/call, {per_call / len(KINDS):.1f} us per received message "
          f"(fastest of {args.rounds} rounds of {args.calls} calls, "
          f"{'a route consulted per request' if args.route else 'static relay'}, UDP, "
          f"{args.spread} call{'s' if args.spread > 1 else ''} in progress)")
    for k in KINDS:
        print(f"  {k:<11} {kinds[k] / args.calls * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
