"""Running code as an unprivileged user from tests that run as root.

An interpreter installed under a 0700 home (pyenv in /root) cannot be run by
nobody. Route workers only need a Python and the SDK, so the jail tests use
the system's /usr/bin/python3 then (`worker_python`). A server started with
--user nobody needs this very interpreter after its drop: `passable_argv`
prefixes its command with a private mount namespace in which the blocking
folder is passable (a tmpfs over it, the one entry needed bound back in);
nothing outside that process sees the change.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

SDK = Path(__file__).resolve().parents[2] / "sdk" / "python"


def _runs(argv: list[str], uid: int, gid: int, env: dict | None = None) -> str | None:
    try:
        done = subprocess.run(argv, user=uid, group=gid, extra_groups=[], capture_output=True,
                              timeout=30, cwd="/", env=env or dict(os.environ))
    except OSError as exc:
        return f"uid {uid} cannot run {argv[0]}: {exc.strerror}"
    if done.returncode:
        return f"uid {uid}: {' '.join(argv)} failed: {done.stderr.decode()[-200:]}"
    return None


@functools.cache
def worker_python(uid: int, gid: int) -> tuple[str | None, str | None]:
    """(an interpreter `uid` can run the SDK with, None) or (None, why not)."""
    if os.geteuid() != 0:
        return sys.executable, None
    env = {**os.environ, "PYTHONPATH": str(SDK)}
    why = None
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        why = _runs([python, "-c", "import babelsip_sdk.runner"], uid, gid, env)
        if why is None:
            return python, None
    return None, why


def _blocking_folder(path: str) -> tuple[Path, str] | None:
    """The first folder on the way to `path` that others cannot pass, and
    the entry in it the way goes on through."""
    parts = Path(path).parts
    for depth in range(1, len(parts)):
        folder = Path(*parts[:depth])
        if not folder.stat().st_mode & stat.S_IXOTH:
            return folder, parts[depth]
    return None


@functools.cache
def passable_argv(uid: int, gid: int) -> tuple[tuple[str, ...] | None, str | None]:
    """(prefix for a command that must keep running as `uid` with this
    interpreter, None) or (None, why not)."""
    if os.geteuid() != 0:
        return None, "needs root (to start the server as root and drop to another user)"
    probe = [sys.executable, "-c", "import trio, host"]
    if _runs(probe, uid, gid) is None:
        return (), None
    blocking = _blocking_folder(os.path.realpath(sys.executable))
    if blocking is None or shutil.which("unshare") is None:
        return None, _runs(probe, uid, gid)
    folder, entry = blocking
    stash = tempfile.mkdtemp(prefix="babelsip-test-ns-")
    script = (f'mount --bind "{folder}" "{stash}" && mount -t tmpfs -o mode=755 tmpfs "{folder}" '
              f'&& mkdir "{folder}/{entry}" && mount --bind "{stash}/{entry}" "{folder}/{entry}" '
              f'&& exec "$@"')
    prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c", script, "ns")
    why = _runs(list(prefix) + ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                                *probe], 0, 0)
    return (prefix, None) if why is None else (None, why)


def open_to_others(path) -> None:
    """`path` and its parents up to / readable and passable by anyone
    (pytest's tmp_path base is 0700): a process running as nobody reads it."""
    for folder in [Path(path), *Path(path).parents]:
        mode = folder.stat().st_mode & 0o7777
        if mode & 0o005 != 0o005:
            os.chmod(folder, mode | 0o005)
        if folder in (Path("/tmp"), Path("/")):
            break
