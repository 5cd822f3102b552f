"""End to end: sipp uac -> `babelsip run --relay-to` -> sipp uas on 127.0.0.1.

Each test starts its own uas, proxy and uac on fresh ports and stops all of
them on the way out. The scenarios are sipp's built-in uac/uas and our own
under scenarios/ (route-set aware, busy, cancel). The verdict is sipp's: the
uac (and, where it means something, the uas) must count every call as
successful.

BABELSIP_E2E_PROXY=kamailio runs the same tests against Kamailio configured as
the equivalent proxy (bench/kamailio/proxy.cfg) -- a check of the scenarios and
of this harness against a reference, not part of the suite.
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None,
                       reason="sipp is not installed (Debian package sip-tester; `make test` installs it)"),
]

RATE = 200           # calls/s: 1000 calls take ~5 s
CALLS = 1000
SIPP_TIMEOUT = 60.0  # seconds; sipp gives up (and fails) after this


@dataclass
class CallPath:
    proxy_port: int
    proxy: sipp.ProxyProcess
    uas: sipp.SippProcess
    workdir: Path
    proxy_survived: bool | None = None  # set when the test body is done

    def why(self, *results: sipp.SippResult) -> str:
        """Everything useful for a failed assertion."""
        parts = [r.summary() for r in results]
        alive = self.proxy.alive() if self.proxy_survived is None else self.proxy_survived
        parts.append(f"{self.proxy.name} alive={alive}, log (end):\n"
                     + self.proxy.log()[-3000:])
        return "\n".join(parts)


def start_proxy(port: int, relay_to: str, workdir: Path) -> sipp.ProxyProcess:
    if os.environ.get("BABELSIP_E2E_PROXY") == "kamailio":
        return sipp.start_kamailio(port, relay_to, workdir, tcp=True)
    return sipp.start_babelsip([
        "run", "--listen", f"udp:{sipp.LOCALHOST}:{port}", "--listen", f"tcp:{sipp.LOCALHOST}:{port}",
        "--relay-to", relay_to])


@contextlib.contextmanager
def call_path(workdir: Path, uas_scenario: str, *, transport: str = "udp",
              uas_options: dict | None = None):
    """A uas on its own port and a proxy relaying every initial request to it."""
    proxy_port, uas_port = sipp.free_port(), sipp.free_port()
    relay_to = f"sip:{sipp.LOCALHOST}:{uas_port}" + (";transport=tcp" if transport == "tcp" else "")
    with sipp.start_sipp_server(uas_scenario, workdir, name="uas", port=uas_port, transport=transport,
                         timeout=SIPP_TIMEOUT + 30, **(uas_options or {})) as uas:
        with start_proxy(proxy_port, relay_to, workdir) as proxy:
            path = CallPath(proxy_port, proxy, uas, workdir)
            try:
                yield path
            finally:
                path.proxy_survived = proxy.alive()


def run_uac(path: CallPath, scenario: str, *, calls: int, rate: float = RATE,
            transport: str = "udp", **options) -> sipp.SippResult:
    return sipp.run_sipp(scenario, path.workdir, name="uac", port=sipp.free_port(),
                         remote=(sipp.LOCALHOST, path.proxy_port), transport=transport,
                         calls=calls, rate=rate, timeout=options.pop("timeout", SIPP_TIMEOUT),
                         **options)


def assert_all_succeeded(path: CallPath, uac: sipp.SippResult, uas: sipp.SippResult | None,
                         calls: int) -> None:
    results = (uac,) if uas is None else (uac, uas)
    assert uac.returncode == 0 and uac.successful == calls and uac.failed == 0, path.why(*results)
    if uas is not None:
        assert uas.successful == calls and uas.failed == 0, path.why(*results)
    assert path.proxy_survived, path.why(*results)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_builtin_uac_uas_1000_calls(tmp_path, transport):
    with call_path(tmp_path, "uas", transport=transport) as path:
        uac = run_uac(path, "uac", calls=CALLS, transport=transport)
        uas = path.uas.stop()
    assert_all_succeeded(path, uac, uas, CALLS)


def test_route_set_aware_uac_uas_1000_calls(tmp_path):
    # ACK and BYE carry Route: <our Record-Route> and the uas Contact as request
    # URI, so they only arrive if the proxy record-routes and loose-routes.
    with call_path(tmp_path, "uas_rr") as path:
        uac = run_uac(path, "uac_rr", calls=CALLS)
        uas = path.uas.stop()
    assert_all_succeeded(path, uac, uas, CALLS)


def test_cancel_before_answer(tmp_path):
    # uac: 200 to its CANCEL and 487 to its INVITE, ACKs the 487;
    # uas: gets the CANCEL, answers 200 and 487, gets the proxy's ACK.
    calls = 20
    with call_path(tmp_path, "uas_ring_cancel") as path:
        uac = run_uac(path, "uac_cancel", calls=calls, rate=20)
        uas = path.uas.stop()
    assert_all_succeeded(path, uac, uas, calls)


def test_busy_callee_486_reaches_caller(tmp_path):
    # uac fails on any final response but 486; the uas only finishes when the
    # hop-by-hop ACK for its 486 arrives from the proxy.
    calls = 20
    with call_path(tmp_path, "uas_busy") as path:
        uac = run_uac(path, "uac_busy", calls=calls, rate=20)
        uas = path.uas.stop()
    assert_all_succeeded(path, uac, uas, calls)


def test_calls_complete_through_retransmissions_with_10_percent_loss(tmp_path):
    # Both sipps drop 10 % of what they send and receive; the proxy's
    # transactions and sipp's retransmissions must still complete >= 99 %.
    calls = 200
    retrans = ["-max_invite_retrans", "10", "-max_non_invite_retrans", "10"]
    with call_path(tmp_path, "uas", uas_options={"lost": 10, "extra": retrans}) as path:
        uac = run_uac(path, "uac", calls=calls, rate=100, lost=10, extra=retrans, timeout=90)
        path.uas.stop(grace=10)
    assert uac.successful >= 0.99 * calls, path.why(uac)
    assert uac.successful + uac.failed == calls, path.why(uac)
    assert uac.retransmissions > 0, "sipp lost nothing? " + path.why(uac)
    assert path.proxy_survived, path.why(uac)


# --------------------------------------------------------------------------
# malformed input


def _request(method: str, ruri: str, branch: str, local_port: int, *, version: str = "SIP/2.0",
             via: bool = True, call_id: str | None = "auto", cseq: str | None = None,
             content_length: str | None = "0", body: str = "", extra: str = "") -> bytes:
    lines = [f"{method} {ruri} {version}"]
    if via:
        lines.append(f"Via: SIP/2.0/UDP {sipp.LOCALHOST}:{local_port};branch={branch};rport")
    lines += ["Max-Forwards: 70", f"From: <sip:burst@{sipp.LOCALHOST}>;tag=b{branch[-8:]}",
              f"To: <sip:bob@{sipp.LOCALHOST}>"]
    if call_id is not None:
        lines.append(f"Call-ID: {uuid.uuid4().hex if call_id == 'auto' else call_id}")
    lines.append(f"CSeq: {cseq or '1 ' + method}")
    if extra:
        lines.append(extra)
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def malformed_burst(proxy_port: int, local_port: int, count: int, seed: int = 3261):
    """`count` assorted bad datagrams, to be sent from `local_port`, as
    (kind, branch, expected status or None, bytes); None means no reply is
    possible or required (RFC 3261 §18.2.1 / §18.3)."""
    rng = random.Random(seed)
    me = f"sip:{sipp.LOCALHOST}:{proxy_port}"
    bob = f"sip:bob@{sipp.LOCALHOST}:{proxy_port}"
    def req(method, ruri, **kw):
        return lambda branch: _request(method, ruri, branch, local_port, **kw)

    kinds = [
        ("garbage", None, lambda b: rng.randbytes(rng.randint(1, 1400))),
        ("garbage-text", None, lambda b: b"hello there\r\nthis is: not sip\r\n\r\n"),
        ("no-via", None, req("INVITE", bob, via=False)),
        ("bare-request-line", None, lambda b: f"INVITE {bob} SIP/2.0\r\n\r\n".encode()),
        ("bad-response", None, lambda b: (f"SIP/2.0 99x Weird\r\nVia: SIP/2.0/UDP "
                                          f"{sipp.LOCALHOST}:{local_port};branch={b}\r\n\r\n").encode()),
        # §18.3: on UDP a body shorter than Content-Length is a 400.
        ("content-length-too-big", 400,
         req("INVITE", bob, content_length="500", body="v=0\r\n", extra="Content-Type: application/sdp")),
        ("content-length-not-a-number", 400, req("OPTIONS", me, content_length="abc")),
        # §8.2.2 / §21.5.26: unsupported version.
        ("version-3", 505, req("OPTIONS", me, version="SIP/3.0")),
        # §8.2.2.1 / §21.4.17: unsupported URI scheme.
        ("foo-scheme", 416, req("INVITE", "foo:bob@example.com")),
        # §8.1.1: Call-ID and CSeq are mandatory, CSeq is a number.
        ("no-call-id", 400, req("OPTIONS", me, call_id=None)),
        ("cseq-not-a-number", 400, req("OPTIONS", me, cseq="one OPTIONS")),
        ("header-without-colon", 400, req("OPTIONS", me, extra="This line is not a header")),
        # A well-formed one in the middle of it all: answered as usual.
        ("valid-options", 200, req("OPTIONS", me)),
    ]
    burst = []
    for i in range(count):
        kind, expected, build = kinds[i % len(kinds)]
        branch = f"z9hG4bKburst{i:04d}{rng.getrandbits(32):08x}"
        burst.append((kind, branch, expected, build(branch)))
    return burst


def test_malformed_burst_answered_and_server_keeps_serving(tmp_path):
    with call_path(tmp_path, "uas") as path:
        local_port = sipp.free_port()
        burst = malformed_burst(path.proxy_port, local_port, 200)
        replies = sipp.udp_exchange(path.proxy_port, [data for *_, data in burst],
                                    local_port=local_port, settle=1.0)

        codes_by_branch: dict[str, set[int]] = {}
        for reply in replies:
            via = sipp.header_value(reply, "Via") or ""
            branch = via.partition("branch=")[2].split(";")[0].split(",")[0].strip()
            codes_by_branch.setdefault(branch, set()).add(sipp.status_code(reply))

        wrong = []
        for kind, branch, expected, _ in burst:
            codes = codes_by_branch.get(branch, set())
            if expected is not None and expected not in codes:
                wrong.append(f"{kind}: expected {expected}, got {sorted(codes) or 'nothing'}")
            if expected != 200 and any(code is not None and 200 <= code < 300 for code in codes):
                wrong.append(f"{kind}: accepted with {sorted(codes)}")
            if expected is None and codes:
                wrong.append(f"{kind}: expected nothing back, got {sorted(codes, key=str)}")
        # Nothing came back that answers no datagram of the burst (garbage, a
        # request without Via, a bad response: §18.2.1/§18.3 drop them).
        answerable = {branch for _, branch, expected, _ in burst if expected is not None}
        stray = sorted(set(codes_by_branch) - answerable)
        if stray:
            wrong.append(f"replies to no answerable request: "
                         f"{[(b, sorted(codes_by_branch[b], key=str)) for b in stray]}")
        assert not wrong, "\n".join(sorted(set(wrong))) + "\n" + path.why()

        assert path.proxy.alive(), path.why()
        assert sipp.sip_ping(path.proxy_port, wait=2.0) == 200, path.why()
        uac = run_uac(path, "uac", calls=20, rate=20)
        uas = path.uas.stop()
    assert_all_succeeded(path, uac, uas, 20)
