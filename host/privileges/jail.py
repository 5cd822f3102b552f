"""The jail a route worker process starts in.

Built in the server before each spawn (uids looked up, Landlock rule set
and seccomp filter made in advance) so that what runs between fork and exec
does no lookup, no logging and (nearly) no allocation. In the child, in
this order:

1. `subprocess` itself (Popen user=/group=/extra_groups=): when the server
   is root, the worker's supplementary groups, gid and uid become those of
   the worker identity: --worker-user, else --user, else nobody/nogroup.
   A worker never runs as root.
2. preexec: the route's rlimits, then PR_SET_NO_NEW_PRIVS (every worker,
   confined or not: no setuid program it runs gains anything), then, for a
   route with `confine`, the no-network seccomp filter and the Landlock
   restriction (both need NO_NEW_PRIVS, neither needs root).
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

from . import landlock, seccomp
from .confinement import Confinement
from .identity import Identity, worker_fallback

PR_SET_NO_NEW_PRIVS = 38
# A fallback of the test suite's only: when it runs as root where nobody
# cannot run its interpreter or read its checkout (a clone under a 0700
# home), tests/conftest.py sets this so that its route workers stay root.
# Never set it in production; a server that sees it says so in its log
# (handover.plan).
ROOT_WORKERS_ENV = "BABELSIP_TEST_ROOT_WORKERS"
_libc = ctypes.CDLL(None, use_errno=True)
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


class Jail:
    """One spawn's jail: `popen_options()` and `preexec(limits)` for
    open_process, `close()` once it returned."""

    def __init__(self, confine: Confinement | None, workdir: Path):
        self.identity = worker_identity()
        self.ruleset: int | None = None
        self.no_network = None
        if confine is not None:
            try:
                self.ruleset = landlock.build_ruleset(confine.read, confine.write + (str(workdir), "/dev/null"))
            except OSError as exc:
                raise JailError(f"confine: {exc}") from None
            if not confine.network:
                self.no_network = seccomp.NoNetworkFilter(platform.machine())

    def popen_options(self) -> dict:
        if self.identity is None:
            return {}
        return {"user": self.identity.uid, "group": self.identity.gid,
                "extra_groups": list(self.identity.groups)}

    def preexec(self, limits):
        prctl, ruleset, no_network = _libc.prctl, self.ruleset, self.no_network

        def apply() -> None:   # in the child, between fork and exec
            limits()
            if prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
            if no_network is not None and no_network.install() != 0:
                raise OSError(ctypes.get_errno(), "seccomp")
            if ruleset is not None and landlock.restrict_self(ruleset) != 0:
                raise OSError(ctypes.get_errno(), "landlock_restrict_self")
        return apply

    def close(self) -> None:
        if self.ruleset is not None:
            os.close(self.ruleset)
            self.ruleset = None
