"""Drive real SIP peers (sipp) and a proxy (babelsip, or Kamailio as the
reference) as child processes on 127.0.0.1, for the end-to-end tests and the
benchmark.

Everything here is bounded in time: sipp always runs with `-timeout`
(and `-timeout_error`, so hitting it counts as a failure), every wait has a
deadline, and every process is stopped (SIGTERM, a grace period, SIGKILL of
its own process group) when its context manager exits.

sipp's verdict is read from its statistics CSV (`-trace_stat`), whose last
row holds the cumulative counters; its exit code says the same in short
(0 all calls succeeded, 1 some failed, 99 no call processed, 254/255 fatal).
"""

from __future__ import annotations

import collections
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

LOCALHOST = "127.0.0.1"
SCENARIOS = Path(__file__).resolve().with_name("scenarios")
REPO = Path(__file__).resolve().parents[2]
KAMAILIO_CFG = REPO / "bench" / "kamailio" / "proxy.cfg"
BUILTIN_SCENARIOS = frozenset({"uac", "uas"})
# sipp's -t values: one socket for all calls (u1, t1), like a trunk.
SIPP_TRANSPORTS = {"udp": "u1", "tcp": "t1", "tls": "l1"}


def sipp_binary() -> str | None:
    return shutil.which("sipp")


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None)


def free_port(host: str = LOCALHOST) -> int:
    """A port that is free for both UDP and TCP right now (bound and released)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def wait_port_bound(port: int, transport: str = "udp", host: str = LOCALHOST,
                    timeout: float = 5.0) -> bool:
    """Wait until some process has bound host:port (our own bind attempt fails)."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------
# processes


def _stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 5.0) -> int:
    """Signal one child we started, then kill its own process group if it lingers."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: see start_new_session
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
    return proc.returncode


@dataclass(frozen=True)
class SippResult:
    """What one sipp run reports: its exit code and its cumulative counters."""

    name: str
    returncode: int | None  # None: still running (a snapshot)
    created: int
    successful: int
    failed: int
    retransmissions: int
    counters: dict[str, str] = field(repr=False)
    errors: str = field(repr=False, default="")
    screen: str = field(repr=False, default="")

    @property
    def failure_reasons(self) -> dict[str, int]:
        """Non-zero cumulative Failed* counters, e.g. {'FailedUnexpectedMessage': 3}."""
        out = {}
        for key, value in self.counters.items():
            if key.startswith("Failed") and key.endswith("(C)") and key != "FailedCall(C)":
                if value.isdigit() and int(value):
                    out[key[:-3]] = int(value)
        return out

    def summary(self) -> str:
        """A few lines for assertion messages: counters, failure kinds, first errors."""
        lines = [f"sipp {self.name}: rc={self.returncode} created={self.created} "
                 f"ok={self.successful} failed={self.failed} retrans={self.retransmissions} "
                 f"reasons={self.failure_reasons}"]
        if self.errors:
            lines.append("errors log (start):\n" + self.errors[:1500])
        if self.returncode not in (0, 1) or not self.counters:
            lines.append("screen (end):\n" + self.screen[-2500:])
        return "\n".join(lines)


def _read_stats(path: Path) -> dict[str, str]:
    """The last row of sipp's `-trace_stat` CSV (';'-separated), keyed by column."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return {}
    rows = [row for row in csv.reader(text.splitlines(), delimiter=";") if row]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1]))


def _count(counters: dict[str, str], key: str) -> int:
    value = counters.get(key, "")
    return int(value) if value.isdigit() else 0


class SippProcess:
    """One running sipp; `wait()` or `stop()` turn it into a `SippResult`."""

    def __init__(self, argv: list[str], workdir: Path, name: str, timeout: float):
        self.argv, self.workdir, self.name, self.timeout = argv, workdir, name, timeout
        self.stats_path = workdir / f"{name}.csv"
        self.errors_path = workdir / f"{name}_errors.log"
        self.screen_path = workdir / f"{name}.out"
        self.result: SippResult | None = None
        with open(self.screen_path, "wb") as screen:
            # stdout gets sipp's screens; a file, so a full pipe can never block it.
            self.proc = subprocess.Popen(
                argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=screen,
                stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _result(self) -> SippResult:
        counters = _read_stats(self.stats_path)
        try:
            errors = self.errors_path.read_text(errors="replace")[:20000]
        except FileNotFoundError:
            errors = ""
        try:
            screen = self.screen_path.read_bytes()[-6000:].decode(errors="replace")
        except FileNotFoundError:
            screen = ""
        self.result = SippResult(
            name=self.name, returncode=self.proc.returncode,
            created=_count(counters, "TotalCallCreated"),
            successful=_count(counters, "SuccessfulCall(C)"),
            failed=_count(counters, "FailedCall(C)"),
            retransmissions=_count(counters, "Retransmissions(C)"),
            counters=counters, errors=errors, screen=screen)
        return self.result

    def snapshot(self) -> SippResult:
        """The counters of the last statistics dump (`-fd` sets how often sipp
        dumps), without stopping sipp."""
        self.proc.poll()
        return self._result()

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for sipp to finish on its own (it has its own -timeout too)."""
        limit = self.timeout + 10 if timeout is None else timeout
        try:
            self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _stop_process(self.proc, signal.SIGTERM, grace=3)
        return self._result()

    def stop(self, grace: float = 8.0) -> SippResult:
        """Soft stop (SIGUSR1: no new calls, let the running ones finish), bounded."""
        if self.proc.poll() is None:
            _stop_process(self.proc, signal.SIGUSR1, grace=grace)
        return self._result()

    def kill(self) -> None:
        _stop_process(self.proc, signal.SIGTERM, grace=2)

    def __enter__(self) -> SippProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def sipp_command(scenario: str, *, port: int, remote: tuple[str, int] | None = None,
                 transport: str = "udp", calls: int | None = None, rate: float | None = None,
                 rate_period_ms: int = 1000, limit: int | None = None, lost: float | None = None,
                 timeout: float = 60.0, stats_path: Path | None = None,
                 errors_path: Path | None = None, no_default: bool = True,
                 local_ip: str = LOCALHOST, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The argv for one sipp: `scenario` is 'uac'/'uas' (built in) or a file name
    under scenarios/ (with or without .xml), or a path to an XML file;
    `local_ip` the address it binds (another than loopback inside a network
    namespace, tests/e2e/netns.py)."""
    binary = sipp_binary()
    if binary is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester)")
    argv = [binary]
    if remote is not None:
        argv.append(f"{remote[0]}:{remote[1]}")
    if scenario in BUILTIN_SCENARIOS:
        argv += ["-sn", scenario]
    else:
        path = Path(scenario)
        if not path.is_absolute() and not path.exists():
            path = SCENARIOS / (scenario if scenario.endswith(".xml") else scenario + ".xml")
        argv += ["-sf", str(path)]
    argv += ["-i", local_ip, "-p", str(port), "-t", SIPP_TRANSPORTS[transport], "-nostdin",
             "-timeout", f"{timeout:g}s", "-timeout_error"]
    if stats_path is not None:
        argv += ["-trace_stat", "-stf", str(stats_path)]
    if errors_path is not None:
        argv += ["-trace_err", "-error_file", str(errors_path)]
    if calls is not None:
        argv += ["-m", str(calls)]
    if rate is not None:
        argv += ["-r", f"{rate:g}", "-rp", str(rate_period_ms)]
    if limit is not None:
        argv += ["-l", str(limit)]
    if lost is not None:
        argv += ["-lost", f"{lost:g}"]
    if no_default:
        argv.append("-nd")  # a failure is a failure: no automatic BYE/CANCEL clean-up
    argv += list(extra)
    return argv


def start_sipp(scenario: str, workdir: Path, *, name: str | None = None, port: int,
               timeout: float = 60.0, netns: str | None = None, **options) -> SippProcess:
    """Start sipp in the background (a uas, typically), inside network
    namespace `netns` if given; see `sipp_command` for options."""
    name = name or f"{Path(scenario).stem}-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = sipp_command(scenario, port=port, timeout=timeout,
                        stats_path=workdir / f"{name}.csv",
                        errors_path=workdir / f"{name}_errors.log", **options)
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    return SippProcess(argv, workdir, name, timeout)


def start_sipp_server(scenario: str, workdir: Path, *, port: int, transport: str = "udp",
                      **options) -> SippProcess:
    """`start_sipp` for a uas: returns once its port is bound."""
    server = start_sipp(scenario, workdir, port=port, transport=transport, **options)
    bound = wait_port_bound(port, transport)
    time.sleep(0.05)  # sipp exits at once when its bind failed (someone else has the port)
    if not bound or server.proc.poll() is not None:
        server.kill()
        raise RuntimeError(f"sipp {scenario} did not start on {transport}:{port}:\n"
                           + server.snapshot().screen[-2000:])
    return server


def run_sipp(scenario: str, workdir: Path, **options) -> SippResult:
    """Run sipp to completion (a uac, typically) and return its counters."""
    with start_sipp(scenario, workdir, **options) as sipp:
        return sipp.wait()


# --------------------------------------------------------------------------
# raw SIP over UDP, for readiness probes and malformed input


def status_code(reply: bytes | None) -> int | None:
    """The status code of a SIP response, or None for anything else."""
    match = re.match(rb"SIP/2\.0 (\d{3}) ", reply or b"")
    return int(match.group(1)) if match else None


def header_value(message: bytes, name: str) -> str | None:
    """First value of a header (full name only), for matching replies to requests."""
    match = re.search(rb"\r\n" + re.escape(name.encode()) + rb"[ \t]*:[ \t]*([^\r\n]*)",
                      message, re.IGNORECASE)
    return match.group(1).decode(errors="replace") if match else None


def options_request(host: str, port: int, local_port: int, *, call_id: str | None = None,
                    transport: str = "UDP") -> bytes:
    """An OPTIONS addressed to the proxy itself (answered by it, RFC 3261 §11)."""
    call_id = call_id or uuid.uuid4().hex
    return (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {LOCALHOST}:{local_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:probe@{LOCALHOST}>;tag={uuid.uuid4().hex[:10]}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def udp_exchange(port: int, datagrams: list[bytes], *, host: str = LOCALHOST,
                 local_port: int = 0, settle: float = 1.0, deadline: float = 10.0) -> list[bytes]:
    """Send datagrams from one socket (bound to `local_port`, which their Via
    should name: replies go to the Via's sent-by, RFC 3261 §18.2.2) and collect
    every reply until none came for `settle` seconds (or `deadline` passed)."""
    replies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((LOCALHOST, local_port))
        for data in datagrams:
            sock.sendto(data, (host, port))
        end = time.monotonic() + deadline
        last = time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < settle:
            sock.settimeout(max(0.01, min(settle - (time.monotonic() - last), end - time.monotonic())))
            try:
                data, _ = sock.recvfrom(65535)
            except (socket.timeout, ConnectionRefusedError):
                continue
            replies.append(data)
            last = time.monotonic()
    return replies


def send_datagram(port: int, data: bytes, *, host: str = LOCALHOST,
                  wait: float = 1.0) -> bytes | None:
    """Send one datagram and return the first reply within `wait` seconds, if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCALHOST, 0))
        sock.sendto(data, (host, port))
        sock.settimeout(wait)
        try:
            return sock.recvfrom(65535)[0]
        except (socket.timeout, ConnectionRefusedError):
            return None


def sip_ping(port: int, *, host: str = LOCALHOST, wait: float = 1.0) -> int | None:
    """Status code of the answer to an OPTIONS sent to host:port over UDP, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCALHOST, 0))
        request = options_request(host, port, sock.getsockname()[1])
        sock.sendto(request, (host, port))
        sock.settimeout(wait)
        try:
            return status_code(sock.recvfrom(65535)[0])
        except (socket.timeout, ConnectionRefusedError):
            return None


def tcp_connectable(port: int, host: str = LOCALHOST, wait: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=wait):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# the proxy under test


def babelsip_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m host`."""
    script = Path(sys.executable).with_name("babelsip")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "host"]


def parse_listens(args: list[str]) -> list[tuple[str, str, int]]:
    """(proto, host, port) of every `--listen proto:host:port` / `-l` in argv."""
    out = []
    for flag, value in zip(args, args[1:]):
        if flag in ("--listen", "-l"):
            proto, host, port = value.rsplit(":", 2) if value.count(":") >= 2 else ("udp", *value.split(":"))
            out.append((proto.lower(), host, int(port)))
    for arg in args:
        if arg.startswith("--listen="):
            proto, host, port = arg.split("=", 1)[1].rsplit(":", 2)
            out.append((proto.lower(), host, int(port)))
    return out


class ProxyProcess:
    """A proxy child process whose stderr is kept (last lines) for diagnostics.

    Ready when every listening socket answers: its "listening on PROTO:HOST:PORT"
    log line was seen, or (UDP) an OPTIONS got any answer, or (TCP) a connect
    succeeded.
    """

    def __init__(self, argv: list[str], listens: list[tuple[str, str, int]], *,
                 name: str = "proxy", env: dict[str, str] | None = None,
                 cwd: Path | None = None, log_lines: int = 5000, trust_log: bool = True,
                 group: bool = False):
        self.argv, self.listens, self.name = argv, listens, name
        self.group = group   # stop its whole process group too (children it started)
        self.trust_log = trust_log
        self.lines: collections.deque[str] = collections.deque(maxlen=log_lines)
        self.lines_read = 0
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self.lines_read += 1

    def log(self) -> str:
        return "\n".join(self.lines)

    def log_mark(self) -> int:
        """A position in the log, for `log_since`."""
        return self.lines_read

    def log_since(self, mark: int) -> list[str]:
        """Lines logged after `log_mark()` returned `mark` (the kept ones)."""
        lines = list(self.lines)
        return lines[len(lines) - min(len(lines), self.lines_read - mark):]

    def _socket_ready(self, proto: str, host: str, port: int) -> bool:
        needle = f"listening on {proto}:{host}:{port}".lower()
        if self.trust_log and any(needle in line.lower() for line in list(self.lines)):
            return True
        if proto == "udp":
            return sip_ping(port, host=host, wait=0.2) is not None
        if proto == "tcp":
            return tcp_connectable(port, host)
        return False

    def wait_ready(self, timeout: float = 15.0) -> None:
        pending = list(self.listens)
        end = time.monotonic() + timeout
        while pending:
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the reader drain the last lines
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"listening:\n{' '.join(self.argv)}\n{self.log()[-4000:]}")
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {timeout:g}s on {pending}:\n"
                                   f"{' '.join(self.argv)}\n{self.log()[-4000:]}")
            pending = [spec for spec in pending if not self._socket_ready(*spec)]
            if pending:
                time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> int:
        rc = _stop_process(self.proc, signal.SIGTERM, grace)
        if self.group:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)   # its own session: see start_new_session
            except ProcessLookupError:
                pass
        self._reader.join(timeout=2)
        return rc

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_babelsip(args: list[str], *, ready_timeout: float = 15.0,
                   env: dict[str, str] | None = None, cwd: Path | None = None) -> ProxyProcess:
    """Start `babelsip <args>` (e.g. ['run', '--listen', 'udp:127.0.0.1:5080', ...]) and
    wait until every --listen socket answers."""
    proxy = ProxyProcess(babelsip_command() + list(args), parse_listens(args),
                         name="babelsip", env=env, cwd=cwd)
    proxy.wait_ready(ready_timeout)
    return proxy


def start_kamailio(port: int, relay_to: str, workdir: Path, *, tcp: bool = False,
                   fast_allocator: bool = True, ready_timeout: float = 15.0,
                   cfg: Path = KAMAILIO_CFG, shm_mb: int = 2048, workers: int = 1) -> ProxyProcess:
    """Kamailio as the reference stateful record-routing proxy (bench/kamailio/proxy.cfg),
    one worker, listening on 127.0.0.1:port (UDP, and TCP when asked).

    Shared memory: a transaction costs ~8 KB and lives ~5 s after its final
    response (tm's wait timer), so 256 MB runs out near 3,000 calls/s (2 GB is reserved, not used)."""
    binary = kamailio_binary()
    if binary is None:
        raise RuntimeError("kamailio is not installed (Debian package kamailio)")
    rundir = workdir / f"kamailio-{port}"
    rundir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "-f", str(cfg), "-DD", "-E", "-n", str(workers), "-m", str(shm_mb), "-M", "16",
            "-P", str(rundir / "kamailio.pid"), "-Y", str(rundir), "-w", str(rundir),
            "-l", f"udp:{LOCALHOST}:{port}", "-A", f'RELAY_TO="{relay_to}"']
    listens = [("udp", LOCALHOST, port)]
    if fast_allocator:
        argv += ["-x", "fm", "-X", "fm"]
    if tcp:
        argv += ["-l", f"tcp:{LOCALHOST}:{port}", "-A", "WITH_TCP"]
        listens.append(("tcp", LOCALHOST, port))
    else:
        argv.append("-T")
    # Kamailio logs "Listening on" before its workers run: probe with OPTIONS only.
    proxy = ProxyProcess(argv, listens, name="kamailio", cwd=rundir, trust_log=False)
    proxy.wait_ready(ready_timeout)
    return proxy
