"""StdioRuntime: a route served by a pool of local worker processes.

Each worker is its own process (its own session, so a terminal's ^C goes to
the host only) with rlimits on address space, CPU seconds and open files, the
route's own working directory and an explicit environment. The protocol
runs on its stdin/stdout; its stderr lines go to the host log, and the last
few are quoted when it dies. Supervision (restart with backoff, crash loops,
hangs via pings) is `pool.PooledRuntime`.

Options (routes.toml, all optional): max_in_flight, ping_interval,
start_timeout, grace, max_line, cpu_seconds, nofile, state_dir, env.
"""

from __future__ import annotations

import collections
import logging
import os
import resource
import signal
import subprocess
import tempfile
from pathlib import Path

import trio

from host.storage import Store
from runtimes.base import LoadError, RuntimeSpec
from runtimes.jsonline.languages import Language, language_for
from runtimes.jsonline.pool import Link, PooledRuntime

CPU_SECONDS = 3600   # per worker process lifetime; reaching it recycles the worker (SIGXCPU)
NOFILE = 256
STDERR_TAIL = 8      # lines quoted in a crash message


def state_dir(options: dict) -> Path:
    base = options.get("state_dir") or os.environ.get("BABELSIP_STATE_DIR")
    if base:
        return Path(base)
    return Path(tempfile.gettempdir()) / f"babelsip-{os.getuid()}"


def _rlimits(memory_mb: int, cpu_seconds: int, nofile: int):
    mem = memory_mb * 1024 * 1024

    # No PR_SET_PDEATHSIG here: it fires when the *thread* that forked exits,
    # and trio forks from its thread cache, whose idle threads exit after
    # 10 s — every worker would be killed 10 s after it started.
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    return apply


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


class ProcessLink(Link):
    def __init__(self, proc: trio.Process, label: str):
        self.proc = proc
        self.label = label
        self.stream = trio.StapledStream(proc.stdin, proc.stdout)
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)

    async def drain_stderr(self, log: logging.Logger) -> None:
        buf = b""
        while True:
            try:
                data = await self.proc.stderr.receive_some(1 << 14)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    self.tail.append(line)
                    log.info("%s: %s", self.label, line)
            if len(buf) > 1 << 16:
                buf = b""

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
        if proc.returncode is None and graceful:
            proc.terminate()
            with trio.move_on_after(grace):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
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
        return {str(k): str(v) for k, v in env.items()}

    async def open_link(self, index: int, nursery: trio.Nursery) -> Link:
        memory = max(self.spec.memory_mb, self.language.min_memory_mb)
        limits = _rlimits(memory, int(self.options.get("cpu_seconds", CPU_SECONDS)),
                          int(self.options.get("nofile", NOFILE)))
        proc = await trio.lowlevel.open_process(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=str(self.workdir), env=self.environment(), preexec_fn=limits,
            start_new_session=True)
        self.pids[index] = proc.pid
        link = ProcessLink(proc, f"{self.spec.route}[{index}] pid {proc.pid}")
        nursery.start_soon(link.drain_stderr, self.log)
        return link

    def statistics(self) -> dict:
        stats = super().statistics()
        stats["pids"] = list(self.pids)
        return stats
