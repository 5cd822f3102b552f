"""Cost of the sans-IO proxy core per call, with no sockets.

Replays a sipp-like INVITE/180/200/ACK/BYE/200 call through `ProxyCore` in
static relay mode and prints microseconds per call and per message. Use it to
see what the parser and transaction layer cost before any I/O.
Run: python bench/core_calls.py [--calls N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
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
    head = req.split(b"\r\n\r\n")[0].decode().split("\r\n")
    keep = [l for l in head[1:] if l.split(":")[0] in ("Via", "From", "To", "Call-ID", "CSeq", "Record-Route")]
    keep = [l + ";tag=uas1" if l.startswith("To:") and to_tag else l for l in keep]
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


def one_call(core, n):
    uac, uas = ("127.0.0.1", 5061), ("127.0.0.1", 5090)
    out = core.receive(invite(n), "udp", uac)
    fwd = [a.data for a in out if isinstance(a, Transmit) and a.port == 5090][0]
    core.receive(response(fwd, 180, "Ringing"), "udp", uas)
    core.receive(response(fwd, 200, "OK"), "udp", uas)
    core.receive(in_dialog("ACK", n, 1, "5"), "udp", uac)
    out = core.receive(in_dialog("BYE", n, 2, "7"), "udp", uac)
    fwd = [a.data for a in out if isinstance(a, Transmit) and a.port == 5090][0]
    core.receive(response(fwd, 200, "OK"), "udp", uas)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5, help="report the fastest round (the machine is shared)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    ids = itertools.count()
    core = ProxyCore([("udp", "127.0.0.1", 5060)], relay_to="sip:127.0.0.1:5090",
                     new_id=lambda: str(next(ids)))
    for n in range(200):
        one_call(core, f"w{n}")
    if args.profile:
        cProfile.runctx("for n in range(args.calls): one_call(core, n)", globals(), locals(), "/tmp/core.prof")
        pstats.Stats("/tmp/core.prof").sort_stats("tottime").print_stats(25)
        return
    best = float("inf")
    for r in range(args.rounds):
        start = time.process_time()
        for n in range(args.calls):
            one_call(core, f"r{r}-{n}")
        best = min(best, time.process_time() - start)
    per_call = best / args.calls * 1e6
    print(f"core: {per_call:.1f} us/call, {per_call / 6:.1f} us per received message "
          f"(fastest of {args.rounds} rounds of {args.calls} calls, static relay, UDP)")


if __name__ == "__main__":
    main()
