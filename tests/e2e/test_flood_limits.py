"""End to end: per-source flood limits (--pike-*) under two floods at once,
inside network namespaces with many source addresses (issue 13).

    server ns: babelsip 198.18.0.1:5060, sipp uas 198.18.0.2:5070, and a next
               hop that never answers (a bound socket nobody reads) at :5090
    clients ns (one veth away, tests/e2e/netns.py SourcesLab):
      - 4 flooders, 250 INVITEs/s each toward the silent next hop, each from
        8 source ports (so a kernel spreading by port would reach every worker);
      - 60 sources of distinct Call-IDs, 12 INVITEs each (under the limit,
        toward the silent next hop: every one a transaction that never ends
        before the test does);
      - a sipp uac placing real calls to the uas, through the proxy;
      - an OPTIONS probe, every 100 ms.

With one worker and with --workers 2, the flooders are limited to their
burst and the rate (per source, over the whole server), each is blocked
once (log and metrics), the others are served: every call completes, every
OPTIONS is answered within a bound, every distinct-Call-ID source gets its
100 Trying. Needs root (network namespaces) and sipp; skips otherwise."""

from __future__ import annotations

import collections
import json
import re
import socket
import statistics
import subprocess
import time
import uuid

import pytest

from tests.e2e import sipp
from tests.e2e.netns import SourcesLab, require_root_and_tools

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(sipp.sipp_binary() is None, reason="needs sipp (sip-tester)")]

RATE, BURST = 30, 60          # --pike-rate, --pike-burst
FLOODERS, PORTS_EACH, FLOOD_RATE = 4, 8, 250
SOURCES, INVITES_EACH = 60, 12
CALLS, CPS = 30, 6            # the legitimate uac: 3 requests per call, 18/s < RATE
DURATION, SLICE = 5.0, 0.02   # seconds of flood, in slices
PROBE_EVERY = 5               # slices: an OPTIONS every 100 ms (10/s)
PROBE_BOUND = 1.0             # seconds an OPTIONS may wait for its 200

PROXY_PORT, UAS_PORT, SILENT_PORT, UAC_PORT = 5060, 5070, 5090, 5062

ROUTE = """
function on_request(req)
  req:record_route()
  if req.ruri_user == "bob" then
    req:relay("sip:bob@{uas}")
  else
    req:relay("sip:" .. req.ruri_user .. "@{silent}")
  end
end
"""


@pytest.fixture(autouse=True)
def _needs_netns():
    require_root_and_tools()


def invite(src: tuple[str, int], proxy: str) -> bytes:
    call = uuid.uuid4().hex
    ip, port = src
    return (f"INVITE sip:nobody@{proxy}:{PROXY_PORT} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{call}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:flood@{ip}>;tag={call[:8]}\r\nTo: <sip:nobody@{proxy}>\r\n"
            f"Call-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@{ip}:{port}>\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def options(src: tuple[str, int], proxy: str, call_id: str) -> bytes:
    ip, port = src
    return (f"OPTIONS sip:{proxy}:{PROXY_PORT} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{uuid.uuid4().hex}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:probe@{ip}>;tag={call_id[:8]}\r\nTo: <sip:{proxy}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


class Senders:
    """Non-blocking UDP sockets in the clients namespace, bound to `ip`."""

    def __init__(self, lab: SourcesLab, ip: str, count: int = 1):
        self.ip = ip
        self.socks = []
        for _ in range(count):
            sock = lab.socket(lab.clients)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((ip, 0))
            sock.setblocking(False)
            self.socks.append(sock)
        self.sent = 0

    def send(self, make, proxy: str) -> None:
        sock = self.socks[self.sent % len(self.socks)]
        sock.sendto(make(sock.getsockname()), (proxy, PROXY_PORT))
        self.sent += 1

    def drain(self) -> list[bytes]:
        out = []
        for sock in self.socks:
            while True:
                try:
                    out.append(sock.recv(65535))
                except BlockingIOError:
                    break
        return out

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


class Probe(Senders):
    """OPTIONS to the proxy, each timed from its sending to its answer."""

    def __init__(self, lab: SourcesLab, ip: str):
        super().__init__(lab, ip)
        self.asked: dict[str, float] = {}
        self.waited: dict[str, float] = {}      # Call-ID -> seconds to its answer
        self.answers: list[bytes] = []

    def ask(self, proxy: str) -> None:
        call_id = uuid.uuid4().hex
        self.asked[call_id] = time.monotonic()
        self.send(lambda src: options(src, proxy, call_id), proxy)

    def collect(self) -> None:
        for reply in self.drain():
            self.answers.append(reply)
            call_id = sipp.header_value(reply, "Call-ID")
            self.waited[call_id] = time.monotonic() - self.asked[call_id]


def flood_statistics(ctl_socket) -> dict:
    done = subprocess.run([*sipp.babelsip_command(), "ctl", "--socket", str(ctl_socket), "--json",
                           "stats.get_statistics", "flood:"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("workers", [1, 2])
def test_floods_are_limited_per_source_and_everybody_else_is_served(tmp_path, workers):
    with SourcesLab(server_addresses=2, client_addresses=FLOODERS + SOURCES + 2) as lab:
        proxy, peer = lab.server_ips
        flooder_ips = lab.client_ips[:FLOODERS]
        source_ips = lab.client_ips[FLOODERS:FLOODERS + SOURCES]
        uac_ip, probe_ip = lab.client_ips[-2:]
        routes = tmp_path / "routes"
        routes.mkdir()
        (routes / "main.lua").write_text(ROUTE.replace("{uas}", f"{peer}:{UAS_PORT}")
                                         .replace("{silent}", f"{peer}:{SILENT_PORT}"))
        silent = lab.socket(lab.server)      # the next hop that never answers
        silent.bind((peer, SILENT_PORT))
        ctl = tmp_path / "ctl.sock"
        args = ["run", "--listen", f"udp:{proxy}:{PROXY_PORT}", "--routes", str(routes),
                "--pike-rate", str(RATE), "--pike-burst", str(BURST), "--pike-action", "503",
                "--ctl-socket", str(ctl), "--workers", str(workers)]
        server = sipp.ProxyProcess(lab.exec_argv(lab.server, [*sipp.babelsip_command(), *args]),
                                   sipp.parse_listens(args), name="babelsip")
        flooders = [Senders(lab, ip, PORTS_EACH) for ip in flooder_ips]
        sources = [Senders(lab, ip) for ip in source_ips]
        probe = Probe(lab, probe_ip)
        try:
            # Its log says when it listens (no probe from here reaches into the namespace).
            end = time.monotonic() + 40
            while f"listening on udp:{proxy}:{PROXY_PORT}" not in server.log():
                assert server.alive() and time.monotonic() < end, server.log()[-3000:]
                time.sleep(0.05)
            uas = sipp.start_sipp("uas", tmp_path, name="uas", port=UAS_PORT, netns=lab.server,
                                  local_ip=peer, timeout=60)
            time.sleep(0.3)    # sipp binds at once
            uac = sipp.start_sipp("uac", tmp_path, name="uac", port=UAC_PORT, netns=lab.clients,
                                  local_ip=uac_ip, remote=(proxy, PROXY_PORT), calls=CALLS,
                                  rate=CPS, timeout=40, extra=["-s", "bob"])
            replies = {id(s): [] for s in (*flooders, *sources)}
            slices = int(DURATION / SLICE)
            start = time.monotonic()
            for k in range(slices):
                for f in flooders:
                    for _ in range(int(FLOOD_RATE * SLICE)):
                        f.send(lambda src: invite(src, proxy), proxy)
                if k % (slices // INVITES_EACH) == 0 and sources[0].sent < INVITES_EACH:
                    for s in sources:
                        s.send(lambda src: invite(src, proxy), proxy)
                if k % PROBE_EVERY == 0:
                    probe.ask(proxy)
                for s in (*flooders, *sources):
                    replies[id(s)] += s.drain()
                probe.collect()
                time.sleep(max(0.0, start + (k + 1) * SLICE - time.monotonic()))
            elapsed = time.monotonic() - start
            deadline = time.monotonic() + PROBE_BOUND
            while len(probe.waited) < len(probe.asked) and time.monotonic() < deadline:
                time.sleep(0.02)
                probe.collect()
            for s in (*flooders, *sources):
                replies[id(s)] += s.drain()
            uac_result = uac.wait(40)
            uas_result = uas.stop()
            counters = flood_statistics(ctl)
        finally:
            for s in (*flooders, *sources, probe):
                s.close()
            silent.close()
            server.stop()
        log = server.log()

    why = f"workers={workers}\n{log[-3000:]}"
    # The legitimate ones: every call completed, every OPTIONS answered in time.
    assert uac_result.successful == CALLS and uac_result.failed == 0, (uac_result.summary(), why)
    # (Each was answered by the uas; it counts a call only 4 s after its BYE,
    # its timewait, so its own count may lag when it is stopped.)
    assert uas_result.failed == 0, (uas_result.summary(), why)
    assert len(probe.answers) == len(probe.asked), why
    assert all(sipp.status_code(r) == 200 for r in probe.answers), why
    waited = sorted(probe.waited.values())
    assert waited[-1] < PROBE_BOUND and statistics.median(waited) < PROBE_BOUND / 2, (waited[-5:], why)
    # Every distinct-Call-ID source is under its burst: each INVITE got its 100.
    for s in sources:
        assert [sipp.status_code(r) for r in replies[id(s)]].count(100) == INVITES_EACH, (s.ip, why)
    # Each flooder got its burst and the rate, over the whole server (not
    # per worker), and 503 with Retry-After for the rest; it was sent a
    # reply for nearly every request (a few may be lost to full buffers).
    for f in flooders:
        codes = collections.Counter(sipp.status_code(r) for r in replies[id(f)])
        assert BURST <= codes[100] <= BURST + RATE * elapsed + 10, (f.ip, codes, elapsed, why)
        assert codes[503] >= 0.9 * f.sent - codes[100], (f.ip, codes, f.sent, why)
        assert all(b"\r\nRetry-After: 5\r\n" in r for r in replies[id(f)] if sipp.status_code(r) == 503)
    # Blocked once each, and only they: in the metrics and the log.
    assert counters["flood:blocks"] == FLOODERS and counters["flood:blocked"] == FLOODERS, (counters, why)
    assert counters["flood:unblocks"] == 0, counters
    assert counters["flood:sources"] == FLOODERS + SOURCES + 2, counters
    answered = sum(collections.Counter(sipp.status_code(r) for r in replies[id(f)])[503] for f in flooders)
    assert answered <= counters["flood:answered_503"] <= sum(f.sent for f in flooders), counters
    blocked = re.findall(r"flood limits: blocking requests from (\S+) ", log)
    assert sorted(blocked) == sorted(flooder_ips), (blocked, why)
