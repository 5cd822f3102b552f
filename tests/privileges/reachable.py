"""Whether an unprivileged user can run this interpreter at all: an install
under a 0700 home (pyenv in /root) cannot be, and a test that runs code as
that user is skipped, saying so."""

import functools
import os
import subprocess
import sys


@functools.cache
def runs_as(uid: int, gid: int) -> str | None:
    """None if `uid` can import host with this interpreter, else why not."""
    if os.geteuid() != 0:
        return "needs root (to run processes as another user)"
    try:
        done = subprocess.run([sys.executable, "-c", "import trio, host"], user=uid, group=gid,
                              extra_groups=[], capture_output=True, timeout=30,
                              cwd="/", env={**os.environ})
    except OSError as exc:
        return f"uid {uid} cannot run {sys.executable}: {exc.strerror}"
    if done.returncode:
        return f"uid {uid} cannot import host with {sys.executable}: {done.stderr.decode()[-200:]}"
    return None


def open_to_others(path) -> None:
    """`path` and its parents up to / readable and passable by anyone
    (pytest's tmp_path base is 0700): a process running as nobody reads it."""
    from pathlib import Path
    for folder in [Path(path), *Path(path).parents]:
        mode = folder.stat().st_mode & 0o7777
        if mode & 0o005 != 0o005:
            os.chmod(folder, mode | 0o005)
        if folder in (Path("/tmp"), Path("/")):
            break
