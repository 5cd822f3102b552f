"""Helpers for the end-to-end tests of routes folders (Lua and external runtimes).

Builds on `tests.e2e.sipp` (processes, sipp runs, probes) and adds what the
route tests need on top: a routes folder written at test time, a babelsip
serving it, route files rewritten atomically while sipp runs, scenarios that
expect one final response code, the worker processes of the server, and waits
on its log.

Every wait here is bounded, and every process is stopped by the context
manager that started it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tests.e2e import sipp

SIPP_TIMEOUT = 60.0          # seconds: a sipp run that takes longer fails
UAS_TIMEOUT = SIPP_TIMEOUT + 60
STATS_EVERY = ["-fd", "1"]   # sipp dumps its CSV counters every second (default 60 s)
# A uac aborts (and fails) a call on an unexpected message at once, instead of
# waiting for its -timeout with the call stuck (what -nd alone does).
ABORT_UNEXPECTED = ["-default_behaviors", "abortunexp"]


def write_atomically(path: Path, text: str, *, executable: bool = False) -> None:
    """Replace `path` by a rename, as editors do, so the watcher never sees a
    half-written file (the temporary name ends in .tmp, which it ignores)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if executable:
        tmp.chmod(0o755)
    os.replace(tmp, path)


def make_routes(directory: Path, files: dict[str, str], *,
                executables: tuple[str, ...] = ()) -> Path:
    """Create a routes folder holding `files` (name -> text)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        if name in executables:
            path.chmod(0o755)
    return directory


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned) or
    `timeout` seconds pass (None)."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            return None
        time.sleep(interval)


def child_pids(pid: int) -> list[int]:
    """Direct children of process `pid` (Linux: /proc/PID/task/*/children)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return sorted(set(out))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


@dataclass
class RoutesServer:
    """A babelsip serving a routes folder on 127.0.0.1:port (UDP)."""

    port: int
    routes: Path
    workdir: Path
    proxy: sipp.ProxyProcess
    survived: bool | None = None   # set when the server is stopped: was it still up?

    def alive(self) -> bool:
        """Up now, or (once stopped) up until we stopped it."""
        return self.proxy.alive() if self.survived is None else self.survived

    def why(self, *results: sipp.SippResult) -> str:
        """Everything useful for a failed assertion: sipp counters and our log."""
        parts = [r.summary() for r in results]
        parts.append(f"babelsip alive={self.alive()}, log (end):\n" + self.proxy.log()[-4000:])
        return "\n".join(parts)

    def log_lines(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in list(self.proxy.lines) if regex.search(line)]

    def wait_log(self, pattern: str, timeout: float = 5.0) -> str | None:
        """The first log line matching `pattern` (a regex), waiting up to `timeout`."""
        found = wait_until(lambda: self.log_lines(pattern), timeout)
        return found[0] if found else None

    def workers(self, needle: str = "") -> list[int]:
        """Pids of the server's worker processes whose command line contains `needle`."""
        return [p for p in child_pids(self.proxy.pid) if needle in cmdline(p)]

    def ping(self) -> int | None:
        return sipp.sip_ping(self.port, wait=2.0)


@contextlib.contextmanager
def routes_server(routes: Path, workdir: Path, *, ready_timeout: float = 30.0,
                  env: dict[str, str] | None = None, port: int | None = None,
                  extra_args: tuple[str, ...] | list[str] = ()) -> Iterator[RoutesServer]:
    """`babelsip run --routes ROUTES [EXTRA_ARGS]` on `port` (default: a
    fresh one), UDP, stopped on exit."""
    port = port or sipp.free_port()
    args = ["run", "--listen", f"udp:{sipp.LOCALHOST}:{port}", "--routes", str(routes), *extra_args]
    full_env = None if env is None else {**os.environ, **env}
    with sipp.start_babelsip(args, ready_timeout=ready_timeout, env=full_env) as proxy:
        server = RoutesServer(port, routes, workdir, proxy)
        # Ready can be seen (an OPTIONS answered) before our reader thread has
        # the log lines the server wrote first: wait for them too.
        server.wait_log(r"listening on ", 5)
        try:
            yield server
        finally:
            server.survived = proxy.alive()
            proxy.stop()
            # The whole log, for a post-mortem (assertion messages quote its end).
            (workdir / f"babelsip-{port}.log").write_text(proxy.log() + "\n")


def quick_uas_rr(workdir: Path) -> Path:
    """scenarios/uas_rr.xml with a 1 s final timewait instead of 4 s: our uas
    answer on loopback with no loss, and every stop waits for that timewait."""
    path = workdir / "uas_rr_quick.xml"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        text = (sipp.SCENARIOS / "uas_rr.xml").read_text()
        path.write_text(text.replace('<timewait milliseconds="4000"/>', '<timewait milliseconds="1000"/>'))
    return path


@contextlib.contextmanager
def uas(workdir: Path, name: str, scenario: str | None = None) -> Iterator[tuple[int, sipp.SippProcess]]:
    """A sipp uas on its own port (CSV counters dumped every second); by
    default the route-set aware uas (see `quick_uas_rr`)."""
    scenario = scenario or str(quick_uas_rr(workdir))
    port = sipp.free_port()
    with sipp.start_sipp_server(scenario, workdir, name=name, port=port, timeout=UAS_TIMEOUT,
                                extra=STATS_EVERY) as server:
        yield port, server


def stop_all(*servers: sipp.SippProcess, grace: float = 10.0) -> list[sipp.SippResult]:
    """Soft-stop several sipps at once (SIGUSR1: no new calls, finish the
    running ones) and return their results, in order."""
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGUSR1)
    return [server.wait(timeout=grace) for server in servers]


def start_uac(server: RoutesServer, *, name: str, calls: int, rate: float,
              scenario: str = "uac_rr", service: str | None = None,
              timeout: float = SIPP_TIMEOUT, extra: list[str] | None = None) -> sipp.SippProcess:
    """A sipp uac placing `calls` calls at `rate` calls/s through `server`;
    `service` is the request-URI user (sipp -s)."""
    more = STATS_EVERY + ABORT_UNEXPECTED + (["-s", service] if service else []) + list(extra or [])
    return sipp.start_sipp(scenario, server.workdir, name=name, port=sipp.free_port(),
                           remote=(sipp.LOCALHOST, server.port), calls=calls, rate=rate,
                           timeout=timeout, extra=more)


def run_uac(server: RoutesServer, **options) -> sipp.SippResult:
    with start_uac(server, **options) as uac:
        return uac.wait()


def stop_gently(process, sig: int = signal.SIGTERM, grace: float = 3.0) -> None:
    """Stop a subprocess.Popen we started: `sig`, then SIGKILL after `grace`."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=grace)
        except Exception:
            process.kill()
            process.wait(timeout=5)


# --------------------------------------------------------------------------
# scenarios written at test time

_EXPECT_FINAL = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- A caller whose INVITE must be refused with {code} within {within_ms} ms
     (any other final response, or none in time, fails the call).  The ACK of
     a non-2xx final belongs to the INVITE transaction (RFC 3261 17.1.1.3):
     same branch (from the response's Via), same request URI. -->
<scenario name="uac expecting {code}">
  <send retrans="500" start_rtd="final">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <recv response="100" optional="true"/>
  <recv response="{code}" timeout="{within_ms}" rtd="final"/>

  <send>
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <timewait milliseconds="500"/>
</scenario>
"""


def expect_final_scenario(workdir: Path, code: int, within: float = 2.0) -> Path:
    """A uac scenario (file in `workdir`) whose calls succeed only when the
    INVITE gets final response `code` within `within` seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"uac_expect_{code}.xml"
    path.write_text(_EXPECT_FINAL.format(code=code, within_ms=int(within * 1000)))
    return path


def response_time_ms(result: sipp.SippResult, rtd: str = "final") -> float | None:
    """Average (cumulative) response time of sipp's timer `rtd`, in ms."""
    for key, value in result.counters.items():
        if key.startswith("ResponseTime") and key.endswith("(C)") and rtd in key:
            return _duration_ms(value)
    return None


def _duration_ms(text: str) -> float | None:
    # sipp writes durations as HH:MM:SS:uuuuuu (microseconds, 6 digits)
    parts = text.strip().split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    h, m, s, micro = (int(p) for p in parts)
    return ((h * 60 + m) * 60 + s) * 1000 + micro / 1000


def run_beside_normal_calls(server: RoutesServer, uas: sipp.SippProcess, scenarios: dict[str, Path], *,
                            calls_each: int, normal_calls: int = 100):
    """Send `calls_each` calls to each route in `scenarios` (route name as
    request-URI user, route -> caller scenario) while `normal_calls` go to the
    default route, then 50 more normal calls once they are done. Returns
    (results by route, normal batch, after batch, uas result)."""
    bad = {}
    with start_uac(server, name="uac-normal", calls=normal_calls, rate=25) as normal:
        for route, scenario in scenarios.items():
            bad[route] = start_uac(server, name=f"uac-{route}", scenario=str(scenario),
                                   service=route, calls=calls_each, rate=2)
        try:
            results = {route: p.wait() for route, p in bad.items()}
        finally:
            for p in bad.values():
                p.kill()
        normal_result = normal.wait()
    assert server.ping() == 200, server.why()
    after = run_uac(server, name="uac-after", calls=50, rate=50)
    (uas_result,) = stop_all(uas)
    return results, normal_result, after, uas_result


def assert_clean(server: RoutesServer, uac: sipp.SippResult, calls: int, *uases: sipp.SippResult):
    """Every call succeeded at the uac, and the uas(es) completed them all."""
    results = (uac, *uases)
    assert uac.successful == calls and uac.failed == 0, server.why(*results)
    if uases:
        assert sum(u.successful for u in uases) == calls, server.why(*results)
        assert all(u.failed == 0 for u in uases), server.why(*results)
    assert server.alive(), server.why(*results)
