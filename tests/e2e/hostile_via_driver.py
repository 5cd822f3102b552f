"""Run inside a private network namespace (`unshare -n`, as root): start
babelsip on 127.0.0.1, give the namespace a "victim" address, send requests
whose Vias name the victim, and report as JSON what came back to the sender
and what reached the victim (every IPv4 packet to it, seen on `lo` by a
packet socket, so a UDP datagram, a TCP SYN or anything else counts).

Used by test_hostile_via.py; not a test itself. Every wait is bounded.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.e2e import sipp  # noqa: E402

VICTIM = "192.0.2.53"
WAIT = 0.4                      # seconds to collect answers to one case
ETH_P_IP = 0x0800


def setup_namespace() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{VICTIM}/32", "dev", "lo"], check=True)


def request(via: str, *, method="OPTIONS", ruri="sip:bob@127.0.0.1:5090", version="SIP/2.0",
            call_id="c1", cseq=None, extra=(), drop=(), length=None) -> bytes:
    headers = [("Via", via), ("From", "<sip:a@example.com>;tag=1"), ("To", "<sip:bob@example.com>"),
               ("Call-ID", call_id), ("CSeq", cseq or f"1 {method}"), ("Max-Forwards", "70"), *extra,
               ("Content-Length", "0" if length is None else str(length))]
    lines = [f"{method} {ruri} {version}"] + [f"{k}: {v}" for k, v in headers if k not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def collect(sock: socket.socket, wait: float = WAIT) -> list[bytes]:
    got, end = [], time.monotonic() + wait
    while True:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            data = sock.recv(65535)
        except (socket.timeout, BlockingIOError):
            return got
        got.append(data)
        if time.monotonic() >= end:
            return got


def statuses(replies: list[bytes]) -> list[int]:
    return [sipp.status_code(r) for r in replies]


def main() -> None:
    setup_namespace()
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sniffer.bind(("lo", 0))
    sniffer.setblocking(False)
    victim_bytes = socket.inet_aton(VICTIM)

    port, down_port = sipp.free_port(), sipp.free_port()
    downstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    downstream.bind(("127.0.0.1", down_port))
    proxy = sipp.start_babelsip(["run", "--listen", f"udp:127.0.0.1:{port}", "--listen",
                                 f"tcp:127.0.0.1:{port}", "--relay-to", f"sip:127.0.0.1:{down_port}"])
    results: dict[str, dict] = {}
    try:
        ua = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ua.bind(("127.0.0.1", 0))
        me = ua.getsockname()[1]

        def case(name: str, data: bytes) -> None:
            ua.sendto(data, ("127.0.0.1", port))
            replies = collect(ua)
            results[name] = {"statuses": statuses(replies), "sizes": [len(r) for r in replies],
                             "request_size": len(data), "relayed": len(collect(downstream, 0.05))}

        victim_via = f"SIP/2.0/UDP {VICTIM}"
        case("missing Call-ID", request(victim_via, drop=("Call-ID",)))
        case("bad CSeq", request(victim_via, cseq="x OPTIONS"))
        case("Content-Length larger than the body", request(victim_via, length=40))
        case("SIP/7.0", request(victim_via, version="SIP/7.0"))
        case("unknown URI scheme", request(victim_via, ruri="gopher:bob@127.0.0.1"))
        case("Proxy-Require", request(victim_via, extra=(("Proxy-Require", "foo"),)))
        case("host name in Via", request("SIP/2.0/UDP victim.example.com", drop=("Call-ID",)))
        case("forged received", request(f"SIP/2.0/UDP 127.0.0.1:{me};received={VICTIM};branch=z9hG4bKr1",
                                        ruri=f"sip:127.0.0.1:{port}"))
        case("TCP Via over UDP", request(f"SIP/2.0/TCP {VICTIM}:{me};branch=z9hG4bKt1",
                                         ruri=f"sip:127.0.0.1:{port}"))
        many = ", ".join(f"SIP/2.0/UDP {VICTIM}:{5000 + i}" for i in range(1800))
        case("1800 Vias", request(many, method="REGISTER", ruri="sip:127.0.0.1"))
        case("empty Via elements", request("SIP/2.0/UDP 192.0.2.15;;,;,,", method="INVITE"))
        case("unreadable top Via", request("SIP/2.0/UDP", method="INVITE"))

        # A relayed INVITE whose downstream answer names the victim in our caller's Via.
        ua.sendto(request(f"SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKcall1", method="INVITE",
                          call_id="relayed-1"), ("127.0.0.1", port))
        downstream.settimeout(2.0)
        invite, proxy_addr = downstream.recvfrom(65535)
        lines = invite.decode().split("\r\n")
        ours = next(l for l in lines if l.startswith("Via: SIP/2.0/UDP 127.0.0.1"))
        kept = [l for l in lines[1:] if l.split(":")[0] in ("From", "To", "Call-ID", "CSeq")]
        forged = f"Via: SIP/2.0/UDP {VICTIM}:5060;received={VICTIM};rport=5060;branch=z9hG4bKcall1"
        downstream.sendto("\r\n".join(["SIP/2.0 486 Busy Here", ours, forged, *kept,
                                       "Content-Length: 0", "", ""]).encode(), proxy_addr)
        replies = collect(ua)
        results["downstream rewrote the caller's Via"] = {"statuses": statuses(replies)}
        collect(downstream, 0.2)  # the proxy's ACK for the 486

        # Over TCP: the answer stays on the connection.
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as conn:
            conn.sendall(request(f"SIP/2.0/UDP {VICTIM}", drop=("Call-ID",)))
            conn.settimeout(WAIT)
            try:
                got = conn.recv(65535)
            except socket.timeout:
                got = b""
            results["TCP request, UDP victim Via"] = {"statuses": statuses([got] if got else [])}

        time.sleep(0.3)  # anything sent late still shows up below
        reached = 0
        while True:
            try:
                frame = sniffer.recv(65535)
            except BlockingIOError:
                break
            if frame[14 + 16:14 + 20] == victim_bytes:
                reached += 1
        results["_victim_packets"] = reached
        results["_alive"] = proxy.alive() and sipp.sip_ping(port, wait=1.0) == 200
    finally:
        proxy.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
