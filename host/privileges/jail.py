"""The jail a route worker process starts in.

Built in the server before each spawn (uids looked up, Landlock rule set
made in advance) and entered by the worker's first program,
enter_jail.py, which then execs the worker: the spawn itself has no
preexec function and no user change, so CPython can vfork and the server's
memory is never copied. The jail, in enter_jail's order:

1. when the server is root, the worker's supplementary groups, gid and uid
   become those of the worker identity: --worker-user, else --user, else
   nobody/nogroup. A worker never runs as root.
2. the route's rlimits, then PR_SET_NO_NEW_PRIVS (every worker, confined or
   not: no setuid program it runs gains anything), then, for a route with
   `confine`, the no-network seccomp filter and the Landlock restriction
   (both need NO_NEW_PRIVS, neither needs root).
"""

from __future__ import annotations

import marshal
import os
import platform
import sys
from pathlib import Path

import trio

from . import landlock, seccomp
from .confinement import Confinement
from .identity import Identity, worker_fallback

# A fallback of the test suite's only: when it runs as root where nobody
# cannot run its interpreter or read its checkout (a clone under a 0700
# home), tests/conftest.py sets this so that its route workers stay root.
# Never set it in production; a server that sees it says so in its log
# (handover.plan).
ROOT_WORKERS_ENV = "BABELSIP_TEST_ROOT_WORKERS"
_configured: Identity | None = None   # --worker-user, else --user (cli.py)


class JailError(Exception):
    """This worker cannot be jailed as its route asks: it is not started."""


def configure_workers(identity: Identity | None) -> None:
    global _configured
    _configured = identity


def worker_identity() -> Identity | None:
    """Whom a worker becomes; None: this process's own user (not root)."""
    if os.geteuid() != 0:
        return None
    if _configured is None and os.environ.get(ROOT_WORKERS_ENV) == "1":
        return None
    identity = _configured or worker_fallback()
    return identity if identity.uid != 0 else worker_fallback()


def check_supported(confine: Confinement) -> None:
    """Before a confined route loads: the kernel can enforce all of it, and
    every path it names exists (JailError says what is missing)."""
    if landlock.abi_version() < 1:
        raise JailError("confine: this kernel has no Landlock (Linux 5.13+, with landlock in the "
                        "lsm= list): the route is not run unconfined")
    if not confine.network and platform.machine() not in seccomp.ARCHES:
        raise JailError(f"confine.network = false: no seccomp filter for {platform.machine()}")
    for key, paths in (("read", confine.read), ("write", confine.write)):
        for path in paths:
            if not os.path.exists(path):
                raise JailError(f"confine.{key}: {path}: no such file or directory")


def give_workdir(workdir: Path, top: Path) -> None:
    """The route's working directory belongs to the worker identity, and
    every directory from `top` down to it can be passed through."""
    identity = worker_identity()
    if identity is None:
        return
    os.chown(workdir, identity.uid, identity.gid)
    folder = workdir.parent
    while True:
        mode = folder.stat().st_mode & 0o7777
        if not mode & 0o001:
            os.chmod(folder, mode | 0o001)
        if folder == top or folder == folder.parent or top not in folder.parents:
            break
        folder = folder.parent


ENTER_JAIL = str(Path(__file__).with_name("enter_jail.py"))
ENTER_WAIT = 30.0   # seconds for a Python start and the steps: it never waits on anything


class Jail:
    """One spawn's jail: `await spawn(argv, rlimits, **popen)`, then
    `close()`."""

    def __init__(self, confine: Confinement | None, workdir: Path):
        self.identity = worker_identity()
        self.ruleset: int | None = None
        self.no_network: str | None = None
        if confine is not None:
            try:
                self.ruleset = landlock.build_ruleset(confine.read, confine.write + (str(workdir), "/dev/null"))
            except OSError as exc:
                raise JailError(f"confine: {exc}") from None
            if not confine.network:
                self.no_network = platform.machine()

    def command(self, argv: list[str], rlimits: list[tuple[int, int, int]], status: int) -> list[str]:
        """The argv that enters this jail and then runs `argv`."""
        who = self.identity
        spec = {"identity": None if who is None else (who.name, who.uid, who.gid, tuple(who.groups)),
                "rlimits": [tuple(limit) for limit in rlimits], "no_network": self.no_network,
                "landlock": self.ruleset, "status": status}
        return [sys.executable, "-I", "-S", ENTER_JAIL, marshal.dumps(spec).hex(), *argv]

    async def spawn(self, argv: list[str], rlimits: list[tuple[int, int, int]], *,
                    pass_fds: tuple[int, ...] = (), **popen) -> trio.Process:
        """The worker, started in its jail. JailError: a step of the jail
        failed; OSError (PermissionError, FileNotFoundError...): the exec of
        `argv[0]` did, as the worker identity. Either way nothing is left
        running."""
        status_read, status_write = os.pipe()
        try:
            fds = (*pass_fds, status_write) + (() if self.ruleset is None else (self.ruleset,))
            proc = await trio.lowlevel.open_process(self.command(argv, rlimits, status_write),
                                                    pass_fds=fds, **popen)
        except BaseException:
            os.close(status_read)
            raise
        finally:
            os.close(status_write)   # ours: the end of file comes when the child's closes
        report = b""
        try:
            async with trio.lowlevel.FdStream(status_read) as stream:
                with trio.move_on_after(ENTER_WAIT) as waited:
                    while chunk := await stream.receive_some():
                        report += chunk
        except BaseException:   # cancelled meanwhile: no worker nobody supervises
            await _discard(proc)
            raise
        if not report and not waited.cancelled_caught:
            return proc
        await _discard(proc)
        if waited.cancelled_caught:
            raise JailError(f"the jail was not entered in {ENTER_WAIT:g} s")
        failure = marshal.loads(report)
        if failure["step"] == "exec" and failure["errno"]:
            raise OSError(failure["errno"], failure["message"], failure["filename"])
        raise JailError(failure["message"])

    def close(self) -> None:
        if self.ruleset is not None:
            os.close(self.ruleset)
            self.ruleset = None


async def _discard(proc: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        proc.kill()
        await proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                await pipe.aclose()
