"""End to end: per-source flood limits (--pike-*). One source floods INVITEs
toward a next hop that never answers, thirty others send distinct Call-IDs;
a legitimate source's OPTIONS keep being answered. Sources are distinct
loopback addresses (127.0.0.0/8 is all on lo), so no namespace is needed."""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from tests.e2e import sipp

pytestmark = pytest.mark.e2e

FLOOD = 3000          # INVITEs from the flooder
OTHERS = 30           # sources of distinct Call-IDs, 20 each
PROBES = 40           # OPTIONS from the legitimate source, one per 25 ms


def invite(src_ip: str, port: int, proxy_port: int) -> bytes:
    call = uuid.uuid4().hex
    return (f"INVITE sip:bob@127.0.0.1:{proxy_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {src_ip}:{port};branch=z9hG4bK{call}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:flood@{src_ip}>;tag={call[:8]}\r\nTo: <sip:bob@127.0.0.1>\r\n"
            f"Call-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@{src_ip}:{port}>\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def sender(ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((ip, 0))
    sock.setblocking(False)
    return sock


def drain(sock) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            return out


def test_a_flooding_source_is_limited_and_the_others_are_served():
    proxy_port, dead_port = sipp.free_port(), sipp.free_port()
    with sipp.start_babelsip(["run", "--listen", f"udp:{sipp.LOCALHOST}:{proxy_port}",
                              "--relay-to", f"sip:127.0.0.1:{dead_port}",
                              "--pike-rate", "20", "--pike-burst", "40", "--pike-action", "503"]) as server:
        flooder, legit = sender("127.0.0.2"), sender("127.0.0.3")
        others = [sender(f"127.0.0.{10 + i}") for i in range(OTHERS)]
        fport = flooder.getsockname()[1]
        answered, start = 0, time.monotonic()
        for probe in range(PROBES):
            for _ in range(FLOOD // PROBES):
                flooder.sendto(invite("127.0.0.2", fport, proxy_port), ("127.0.0.1", proxy_port))
            if probe < 20:
                for sock in others:
                    sock.sendto(invite(sock.getsockname()[0], sock.getsockname()[1], proxy_port),
                                ("127.0.0.1", proxy_port))
            lport = legit.getsockname()[1]
            legit.sendto(sipp.options_request(sipp.LOCALHOST, proxy_port, lport).replace(
                f"{sipp.LOCALHOST}:{lport}".encode(), f"127.0.0.3:{lport}".encode()),
                ("127.0.0.1", proxy_port))
            time.sleep(0.025)
            answered += sum(1 for r in drain(legit) if sipp.status_code(r) == 200)
        deadline = time.monotonic() + 3
        while answered < PROBES and time.monotonic() < deadline:
            time.sleep(0.05)
            answered += sum(1 for r in drain(legit) if sipp.status_code(r) == 200)
        elapsed = time.monotonic() - start
        flood_replies = drain(flooder)
        other_replies = [r for sock in others for r in drain(sock)]
        log = server.log()
        for sock in (flooder, legit, *others):
            sock.close()
    assert answered == PROBES, (answered, log[-2000:])
    assert elapsed < 15
    refused = [r for r in flood_replies if sipp.status_code(r) == 503]
    assert refused and all(b"Retry-After:" in r for r in refused)
    # The flooder got through at most its burst and the rate (~1.2 s at 20/s) as 100 Trying.
    trying = sum(1 for r in flood_replies if sipp.status_code(r) == 100)
    assert trying <= 40 + 20 * elapsed + 5, trying
    # 20 INVITEs from each of the others, well inside their burst: every one got its 100.
    assert sum(1 for r in other_replies if sipp.status_code(r) == 100) == OTHERS * 20
    assert "flood limits: blocking requests from 127.0.0.2" in log
