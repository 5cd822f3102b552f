"""StdioRuntime: a route served by a pool of local worker processes.

Each worker is its own process (its own session, so a terminal's ^C goes to
the host only) with rlimits on address space, CPU seconds and open files, the
route's own working directory and an explicit environment. The protocol
runs on its stdin/stdout; its stderr lines go to the host log (rate-limited),
and the last few are quoted when it dies. Supervision (restart with backoff,
crash loops, hangs via pings) is `pool.PooledRuntime`.

Lifetime (sdk/PROTOCOL.md §9 "Lifeline"): a worker leads its own process
group, and stopping or restarting it signals the whole group, so the
processes a route started go with it. For the server's own death — SIGKILL
included, when no code of ours runs — every worker inherits the read end of
one pipe whose write end only this process holds (close-on-exec, so no
child ever gets it): its end of file tells the worker's SDK, or the guard in
front of an `exec` route, to SIGKILL the group. PR_SET_PDEATHSIG cannot do
this: it fires when the *thread* that spawned exits, and trio spawns from
its thread cache, whose idle threads exit after 10 s.

Options (routes.toml, all optional): max_in_flight, ping_interval,
start_timeout, grace, max_line, cpu_seconds, nofile, state_dir, env.

Every worker starts jailed (host/privileges/jail.py): never as root, with
PR_SET_NO_NEW_PRIVS, and confined as the route's `confine` says.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import resource
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import trio

from host.privileges.jail import Jail, JailError, check_supported, give_workdir
from host.storage import Store
from host.routes.runtime import LoadError, RuntimeSpec
from runtimes.jsonline.languages import Language, language_for
from runtimes.jsonline.pool import Link, PooledRuntime

CPU_SECONDS = 3600   # per worker process lifetime; reaching it recycles the worker (SIGXCPU)
NOFILE = 256
STDERR_TAIL = 8      # lines quoted in a crash message
LIFELINE_ENV = "BABELSIP_LIFELINE_FD"   # sdk/PROTOCOL.md §9
# stderr lines a worker may put in the host log: a burst, then a steady rate
# (token bucket). The burst lets a whole crash report through — a Python
# traceback is 10-40 lines, a Java one with its "Caused by" chain 100-300 —
# and 100 lines/s is far more than a route's diagnostics need, while a worker
# writing 100 MB/s costs the log 100 lines a second (at most STDERR_LINE
# characters each) and the host a count of newlines per 64 KiB read. What is
# dropped is counted in a "suppressed N stderr lines" line, at most one per
# STDERR_SUMMARY seconds.
STDERR_BURST = 500
STDERR_RATE = 100.0
STDERR_SUMMARY = 1.0
STDERR_LINE = 2000   # characters logged of one line: a long exception message, not a data dump
STDERR_PARTIAL = 1 << 16   # bytes without a newline after which they count as a line


_lifeline: tuple[int, int] | None = None   # (read end, write end) of this process


def lifeline_fd() -> int:
    """The read end of this server's lifeline, made on first use. Both ends
    are non-inheritable (PEP 446); a worker gets the read end through
    `pass_fds` only. Never written to, never closed: the kernel closes the
    write end when this process ends, however it ends."""
    global _lifeline
    if _lifeline is None:
        _lifeline = os.pipe()
        # A worker that cannot hand the descriptor to a child reopens it as
        # /proc/self/fd/N (the Java SDK: a JVM closes every other descriptor
        # in its children). A pipe is 0600, its creator's: a worker of
        # another user (nobody, under a root server) could not. Anyone may
        # read it; reading an end of file is all it gives.
        os.fchmod(_lifeline[0], 0o444)
    return _lifeline[0]


def _forget_lifeline_in_child() -> None:
    # A child forked without exec (none of ours does, but a library might)
    # must not keep our workers' lifeline open after we die. Only the write
    # end: the read end is what a worker is given.
    global _lifeline
    if _lifeline is not None:
        os.close(_lifeline[1])
        _lifeline = None


os.register_at_fork(after_in_child=_forget_lifeline_in_child)


def signal_group(pgid: int, sig: int) -> None:
    """`sig` to process group `pgid`; nobody left in it is fine, and so is
    a group whose only members we may not signal (a setuid program a route
    ran: EPERM) — nothing more can be done from here."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def state_dir(options: dict) -> Path:
    base = options.get("state_dir") or os.environ.get("BABELSIP_STATE_DIR")
    if base:
        return Path(base)
    return Path(tempfile.gettempdir()) / f"babelsip-{os.getuid()}"


def _rlimits(memory_mb: int, cpu_seconds: int, nofile: int) -> list[tuple[int, int, int]]:
    """(resource, soft, hard), set by host/privileges/enter_jail.py."""
    mem = memory_mb * 1024 * 1024
    return [(resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5),
            (resource.RLIMIT_NOFILE, nofile, nofile)]


def describe_status(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


class StderrLimiter:
    """How many stderr lines of one worker may reach the log now: a token
    bucket of STDERR_BURST lines refilled at STDERR_RATE a second, and the
    count of the lines it dropped since the last summary."""

    def __init__(self, burst: int = STDERR_BURST, rate: float = STDERR_RATE,
                 clock=time.monotonic):
        self.burst, self.rate, self.clock = burst, rate, clock
        self.tokens = float(burst)
        self.stamp = clock()
        self.suppressed = 0
        self.since = 0.0        # when the first line of the current count was dropped

    def available(self) -> int:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return int(self.tokens)

    def spend(self) -> None:
        self.tokens -= 1

    def drop(self, n: int) -> None:
        if not self.suppressed:
            self.since = self.clock()
        self.suppressed += n

    def summary_in(self) -> float:
        """Seconds until the count is due in the log (<= 0: now; inf: nothing dropped)."""
        if not self.suppressed:
            return math.inf
        return self.since + STDERR_SUMMARY - self.clock()

    def take(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n


class ProcessLink(Link):
    def __init__(self, proc: trio.Process, label: str):
        self.proc = proc
        self.label = label
        # start_new_session: the worker leads its own group, whose id is its pid.
        self.pgid = proc.pid
        self.stream = trio.StapledStream(proc.stdin, proc.stdout)
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)

    async def drain_stderr(self, log: logging.Logger | logging.LoggerAdapter) -> None:
        """Log the worker's stderr lines, within STDERR_BURST/STDERR_RATE.
        It is read as fast as it comes (a worker blocked on a full stderr
        pipe would stop answering pings); a flood costs a count of newlines
        per read, not a Python loop per line."""
        limiter = StderrLimiter()
        buf = b""
        while True:
            data = None
            with trio.move_on_after(max(limiter.summary_in(), 0.0)):
                try:
                    data = await self.proc.stderr.receive_some(1 << 16)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            if data:
                buf += data
                end = buf.rfind(b"\n")
                if end >= 0:
                    block, buf = buf[:end], buf[end + 1:]
                    self._lines(block, limiter, log)
                if len(buf) > STDERR_PARTIAL:   # a "line" that never ends: take it as one
                    block, buf = buf, b""
                    self._lines(block, limiter, log)
            if limiter.summary_in() <= 0 or data == b"":
                n = limiter.take()
                if n:
                    log.warning("%s: suppressed %d stderr lines (beyond %d at once, %g a second)",
                                self.label, n, STDERR_BURST, STDERR_RATE)
            if data == b"":
                return

    def _lines(self, block: bytes, limiter: StderrLimiter, log: logging.Logger) -> None:
        """Log the lines of `block` (newline-separated, no final newline) the
        limiter allows, count the rest."""
        while block is not None:
            allowed = limiter.available()
            if allowed < 1:
                limiter.drop(block.count(b"\n") + 1)
                for raw in block.rsplit(b"\n", STDERR_TAIL)[-STDERR_TAIL:]:
                    self._remember(raw)
                return
            parts = block.split(b"\n", allowed)
            block = parts.pop() if len(parts) > allowed else None
            for raw in parts:
                line = self._remember(raw)
                if line:
                    limiter.spend()
                    if len(raw) > STDERR_LINE:
                        line = f"{line}... ({len(raw)} bytes)"
                    log.info("%s: %s", self.label, line)

    def _remember(self, raw: bytes) -> str:
        """The line, cut to STDERR_LINE, kept for a crash message ("" if blank)."""
        line = raw[:STDERR_LINE * 4].decode(errors="replace").rstrip()[:STDERR_LINE]
        if line:
            self.tail.append(line)
        return line

    async def describe_end(self) -> str:
        with trio.move_on_after(0.5):
            await self.proc.wait()
        text = describe_status(self.proc.returncode)
        # Let the stderr reader catch the last lines (a traceback usually).
        await trio.sleep(0.01)
        if self.tail:
            text += ": " + " | ".join(self.tail)[-600:]
        return text

    async def finish(self, graceful: bool, grace: float) -> None:
        proc = self.proc
        if graceful and proc.returncode is None:
            with trio.move_on_after(grace):
                await proc.wait()
        # Signals go to the worker's whole group: the processes its route
        # started must not outlive it (they would keep running unsupervised,
        # and could hold its pipes open).
        if proc.returncode is None and graceful:
            signal_group(self.pgid, signal.SIGTERM)
            with trio.move_on_after(grace):
                await proc.wait()
        if proc.returncode is None:
            signal_group(self.pgid, signal.SIGKILL)
        await proc.wait()
        # The worker is reaped; SIGKILL what is left of its group (children
        # that ignored SIGTERM or that it left behind when it exited, an
        # SDK's lifeline watcher). Safe after the reap: Linux does not give a
        # pid to a new process while a process group of that id still has
        # members, so the id names our leftovers or nobody.
        signal_group(self.pgid, signal.SIGKILL)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            await pipe.aclose()


class StdioRuntime(PooledRuntime):
    """`spec.pool` workers for one route generation, least-in-flight dispatch."""

    def __init__(self, spec: RuntimeSpec, *, store: Store | None = None):
        super().__init__(spec, store=store)
        self.language: Language = language_for(spec)
        self.argv: list[str] = []
        self.state = state_dir(self.options)
        self.workdir = self.state / "routes" / spec.route
        self.log = logging.getLogger(f"babelsip.route.{spec.route}")
        self.pids: list[int | None] = []

    def slot_count(self) -> int:
        return max(1, self.spec.pool)

    async def prepare(self) -> None:
        if not Path(self.spec.path).is_file():
            raise LoadError(self.spec.path, None, "route file not found")
        self.workdir.mkdir(parents=True, exist_ok=True)
        give_workdir(self.workdir, self.state)   # a server running as root: its workers do not
        if self.spec.confine is not None:
            try:
                check_supported(self.spec.confine)
            except JailError as exc:
                raise LoadError(self.spec.path, None, str(exc)) from None
        self.argv = await self.language.prepare(self.spec, self.state)
        self.pids = [None] * self.slot_count()

    def environment(self) -> dict:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.workdir),
            "TMPDIR": str(self.workdir),
            "BABELSIP_ROUTE": self.spec.route,
        }
        env.update(self.language.env)
        extra = self.options.get("env") or ()
        env.update(dict(extra.items() if isinstance(extra, dict) else extra))
        env[LIFELINE_ENV] = str(lifeline_fd())   # after `env`: a route cannot unset it
        return {str(k): str(v) for k, v in env.items()}

    async def open_link(self, index: int, nursery: trio.Nursery) -> Link:
        memory = max(self.spec.memory_mb, self.language.min_memory_mb)
        limits = _rlimits(memory, int(self.options.get("cpu_seconds", CPU_SECONDS)),
                          int(self.options.get("nofile", NOFILE)))
        try:
            jail = Jail(self.spec.confine, self.workdir)   # never root, no new privileges
        except JailError as exc:
            raise LoadError(self.spec.path, None, str(exc)) from None
        try:
            proc = await jail.spawn(
                self.argv, limits, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=str(self.workdir), env=self.environment(), start_new_session=True,
                pass_fds=(lifeline_fd(),))
        except JailError as exc:   # the jail could not be entered
            raise LoadError(self.spec.path, None, f"worker not started: {exc}") from None
        except PermissionError as exc:
            if jail.identity is None:
                raise
            raise LoadError(self.spec.path, None, f"the worker user {jail.identity.name} may not run "
                            f"{exc.filename or self.argv[0]} (--worker-user, README Privileges)") from None
        finally:
            jail.close()
        self.pids[index] = proc.pid
        link = ProcessLink(proc, f"{self.spec.route}[{index}] pid {proc.pid}")
        # The adapter gives each line the route and generation (host/logs.py).
        nursery.start_soon(link.drain_stderr, logging.LoggerAdapter(self.log, self.log_fields))
        return link

    def statistics(self) -> dict:
        stats = super().statistics()
        stats["pids"] = list(self.pids)
        return stats
