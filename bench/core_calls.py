"""Cost of the sans-IO proxy core per call and per message kind, no sockets.

Replays a sipp-like INVITE/100/180/200/ACK/BYE/200 call through `ProxyCore`
in static relay mode and prints microseconds per call and per kind of
message received (the 100 Trying the proxy answers itself is not received;
the uas's own 100 is). Use it to see what the parser and transaction layer
cost before any I/O. Timers are not run: the call's tails (Timer J, L...)
would fire 32 s later and cost the same whichever path sent the messages.
Run: python bench/core_calls.py [--calls N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import pstats
import time

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


def call_messages(core, n):
    """The messages of call `n` in order, as (kind, data, source); the
    responses are built from what the proxy forwarded, so they come last."""
    uac, uas = ("127.0.0.1", 5061), ("127.0.0.1", 5090)
    yield "INVITE", invite(n), uac
    fwd = core.last_forwarded
    yield "100 (uas)", response(fwd, 100, "Trying", to_tag=False), uas
    yield "180", response(fwd, 180, "Ringing"), uas
    yield "200 INVITE", response(fwd, 200, "OK"), uas
    yield "ACK", in_dialog("ACK", n, 1, "5"), uac
    yield "BYE", in_dialog("BYE", n, 2, "7"), uac
    yield "200 BYE", response(core.last_forwarded, 200, "OK"), uas


class Recording(ProxyCore):
    """Keeps the last request it relayed to the uas (the responses answer it)."""
    last_forwarded = b""

    def receive(self, data, transport, src):
        out = super().receive(data, transport, src)
        for a in out:
            if isinstance(a, Transmit) and a.port == 5090 and not a.data.startswith(b"SIP/"):
                self.last_forwarded = a.data
        return out


def one_call(core, n, spent=None):
    clock = time.perf_counter
    for kind, data, src in call_messages(core, n):
        if spent is None:
            core.receive(data, "udp", src)
        else:
            start = clock()
            core.receive(data, "udp", src)
            spent[kind] += clock() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5, help="report the fastest round (the machine is shared)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    ids = itertools.count()
    core = Recording([("udp", "127.0.0.1", 5060)], relay_to="sip:127.0.0.1:5090",
                     new_id=lambda: str(next(ids)))
    for n in range(200):
        one_call(core, f"w{n}")
    if args.profile:
        gc.disable()
        cProfile.runctx("for n in range(args.calls): one_call(core, n)", globals(), locals(), "/tmp/core.prof")
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
        for n in range(args.calls):
            one_call(core, f"r{r}-{n}", spent)
        for k in KINDS:
            kinds[k] = min(kinds[k], spent[k])
    gc.enable()
    per_call = sum(kinds.values()) / args.calls * 1e6
    print(f"core: {per_call:.1f} us/call, {per_call / len(KINDS):.1f} us per received message "
          f"(fastest of {args.rounds} rounds of {args.calls} calls, static relay, UDP)")
    for k in KINDS:
        print(f"  {k:<11} {kinds[k] / args.calls * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
