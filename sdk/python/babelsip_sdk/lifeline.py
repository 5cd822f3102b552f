"""The worker's side of the host's lifeline (sdk/PROTOCOL.md §9 "Lifeline").

The host hands every worker the read end of a pipe, fd $BABELSIP_LIFELINE_FD,
whose write end only the host holds and never writes to. End of file on it
means the host is gone — however it died, SIGKILL included — and the worker
must then end its whole process group, the processes its route started too.

A thread cannot do this reliably in Python: a handler stuck in one long C
call (a regular expression backtracking over a big string) holds the GIL,
and a stopped process runs no thread at all. So the watcher is a process of
its own, forked before the route is loaded, that holds nothing but the
lifeline and a pipe from the worker (its end of file: the worker has exited,
the watcher leaves too).

Two entry points, standard library only (the guard runs with `python -I -S`):
  * `watch()`: the Python runner's first call.
  * `python -I -S lifeline.py PROGRAM [ARG...]`: the guard the host puts in
    front of an `exec` route, which may know nothing of the lifeline: it runs
    PROGRAM as its child, in its group, SIGKILLs the group when the lifeline
    ends, and otherwise exits as PROGRAM did.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import sys

ENV = "BABELSIP_LIFELINE_FD"

_alive_w = None   # the worker's end of the worker -> watcher pipe, kept for its lifetime


def lifeline_fd(environ=os.environ, *, remove: bool = True) -> int | None:
    """The lifeline fd this process was given, or None (not started by a
    host, or the fd is not a pipe). `remove`: take the variable out of the
    environment, so a program the route starts does not look for an fd it
    does not have (subprocess closes it)."""
    value = environ.pop(ENV, None) if remove else environ.get(ENV)
    try:
        fd = int(value)
        return fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (TypeError, ValueError, OSError):
        return None


def _wait_for_hangup(fds: list[int]) -> int:
    """Block until one of `fds` (read ends of pipes nobody writes to) hangs
    up, i.e. every write end is closed; return that fd. Registered with no
    events: poll then reports only POLLHUP/POLLERR/POLLNVAL, never reads, so
    nothing is taken from a pipe the host shares between workers."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, 0)
    while True:
        for fd, _ in poller.poll():
            return fd


def _keep_only(keep: set[int]) -> None:
    """Close every fd but `keep`: the watcher must not hold the protocol
    pipes (the host would not see the worker's stdout close) or anything else."""
    top = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024
    start = 0
    for fd in sorted(keep):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, max(top, start))


def _kill_group_or(pid: int) -> None:
    """Host gone: SIGKILL our process group when `pid` leads it (as the host
    starts workers; this process is in it too), else `pid` alone — run by
    hand, the group is someone else's."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def watch() -> bool:
    """Fork the watcher of this worker; True if there is a lifeline to watch.
    Call it while the process has a single thread (before the route loads)."""
    global _alive_w
    fd = lifeline_fd()
    if fd is None:
        return False
    worker = os.getpid()
    alive_r, alive_w = os.pipe()   # close-on-exec: programs the route runs do not hold it
    try:
        child = os.fork()
    except OSError as e:
        print(f"babelsip_sdk: no lifeline watcher ({e}); this worker may outlive the host",
              file=sys.stderr)
        os.close(alive_r)
        os.close(alive_w)
        return False
    if child:
        os.close(alive_r)
        os.close(fd)   # the watcher has it
        _alive_w = alive_w
        return True
    try:   # the watcher
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _keep_only({fd, alive_r})
        if _wait_for_hangup([fd, alive_r]) == fd and os.getppid() == worker:
            _kill_group_or(worker)
    finally:
        os._exit(0)


def _die_with_parent() -> None:
    """In the guard's child: SIGKILL when the guard dies (say someone
    SIGKILLs the pid the host knows). Reliable here, unlike in the host:
    the guard forks from its main thread, which lives as long as it does."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError, ImportError):
        pass


def guard(argv: list[str]) -> int:
    fd = lifeline_fd(remove=False)   # the program may watch it itself
    me = os.getpid()
    child = os.fork()
    if child == 0:
        _die_with_parent()
        if os.getppid() != me:   # the guard died before prctl took effect
            os._exit(1)
        try:
            os.execvp(argv[0], argv)
        except OSError as e:
            os.write(2, f"babelsip guard: cannot run {argv[0]}: {e}\n".encode())
        os._exit(127)
    # Hold no end of the protocol pipes: the host must see the worker's
    # stdout close when it exits. stderr stays for our own messages.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    # The host's SIGTERM goes to the whole group: it is for the program,
    # and the guard follows the program's exit, not the signal.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if fd is not None:
        import threading
        threading.Thread(target=_guard_lifeline, args=(fd,), daemon=True).start()
    try:
        _, status = os.waitpid(child, 0)   # retried on EINTR by Python (PEP 475)
    except ChildProcessError:
        return 1
    if os.WIFSIGNALED(status):   # die the same way, so the host reports the real cause
        sig = os.WTERMSIG(status)
        try:
            import resource
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # no core file of the guard
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
            os.kill(me, sig)
        except (OSError, ValueError, ImportError):
            pass
        return 128 + sig
    return os.waitstatus_to_exitcode(status)


def _guard_lifeline(fd: int) -> None:
    _wait_for_hangup([fd])
    _kill_group_or(os.getpid())


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: python -I -S lifeline.py PROGRAM [ARG...]", file=sys.stderr)
        sys.exit(2)
    sys.stdout.flush()
    os._exit(guard(sys.argv[1:]))
