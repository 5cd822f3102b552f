"""Microseconds per parse of typical SIP messages, pure Python and C paths.

The messages are those a record-routing proxy sees in a sipp call
(INVITE with SDP, 180/200 with two Vias and a Record-Route, ACK, BYE, 200),
plus the per-request validation and the header parsers the core calls.
Each figure is the best of several rounds of CPU time, so a noisy machine
inflates it less. Run: python bench/parse.py [--rounds N] [--number N]
"""

from __future__ import annotations

import argparse
import time
import timeit

from host.sip import parser
from host.sip.headers import parse_name_addr, parse_params, parse_via
from host.sip.parser import parse_message
from host.sip.uri import parse_uri
from host.sip.validate import check_request

SDP = ("v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
       "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
CALL = "Call-ID: 1-4242@127.0.0.1\r\n"
FROM = "From: sipp <sip:sipp@127.0.0.1:5061>;tag=4242SIPpTag001\r\n"
TO = "To: service <sip:service@127.0.0.1:5060>"
VIA_UAC = "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0\r\n"
VIA_US = "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK9f3a61c2d0e4b7a8.0\r\n"
RR = "Record-Route: <sip:127.0.0.1:5060;lr>\r\n"

MESSAGES = {
    "INVITE+SDP": (f"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n{VIA_UAC}{FROM}{TO}\r\n{CALL}"
                   "CSeq: 1 INVITE\r\nContact: sip:sipp@127.0.0.1:5061\r\nMax-Forwards: 70\r\n"
                   "Subject: Performance Test\r\nContent-Type: application/sdp\r\n"
                   f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"),
    "180": (f"SIP/2.0 180 Ringing\r\n{VIA_US}{VIA_UAC}{RR}{FROM}{TO};tag=uas1\r\n{CALL}"
            "CSeq: 1 INVITE\r\nContact: <sip:127.0.0.1:5090>\r\nContent-Length: 0\r\n\r\n"),
    "200+SDP": (f"SIP/2.0 200 OK\r\n{VIA_US}{VIA_UAC}{RR}{FROM}{TO};tag=uas1\r\n{CALL}"
                "CSeq: 1 INVITE\r\nContact: <sip:127.0.0.1:5090>\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}"),
    "ACK": (f"ACK sip:service@127.0.0.1:5060 SIP/2.0\r\n{VIA_UAC}{FROM}{TO};tag=uas1\r\n{CALL}"
            "CSeq: 1 ACK\r\nContact: sip:sipp@127.0.0.1:5061\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"),
    "BYE": (f"BYE sip:service@127.0.0.1:5060 SIP/2.0\r\n{VIA_UAC}{FROM}{TO};tag=uas1\r\n{CALL}"
            "CSeq: 2 BYE\r\nContact: sip:sipp@127.0.0.1:5061\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"),
}


def best(stmt, number: int, rounds: int) -> float:
    """Best-of-rounds microseconds per call of `stmt` (a zero-argument callable),
    in process CPU time: other processes on a shared machine inflate it less."""
    times = timeit.repeat(stmt, number=number, repeat=rounds, timer=time.process_time)
    return min(times) / number * 1e6


def run(number: int, rounds: int) -> dict[str, float]:
    results: dict[str, float] = {}
    for name, text in MESSAGES.items():
        data = text.encode()
        results[f"parse {name}"] = best(lambda d=data: parse_message(d), number, rounds)
    invite = parse_message(MESSAGES["INVITE+SDP"].encode())
    results["check_request INVITE"] = best(lambda: check_request(invite), number, rounds)
    via = VIA_UAC[5:-2]
    results["parse_via"] = best(lambda: parse_via(via), number, rounds)
    results["parse_uri"] = best(lambda: parse_uri("sip:service@127.0.0.1:5060"), number, rounds)
    results["parse_name_addr"] = best(lambda: parse_name_addr(FROM[6:-2]), number, rounds)
    results["parse_params"] = best(lambda: parse_params(";branch=z9hG4bK-1;rport"), number, rounds)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    paths = [("python", False)]
    if parser.accelerated():
        paths.append(("C", True))
    columns = {}
    for label, use_c in paths:
        parser.use_accelerator(use_c)
        columns[label] = run(args.number, args.rounds)
    parser.use_accelerator(True)
    print(f"{'us per call':28}" + "".join(f"{label:>10}" for label, _ in paths))
    for key in columns["python"]:
        print(f"{key:28}" + "".join(f"{columns[label][key]:10.2f}" for label, _ in paths))
    if not parser.accelerated():
        print("(C accelerator not built: pure Python only)")


if __name__ == "__main__":
    main()
