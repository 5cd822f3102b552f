"""The first program of every route worker: it enters the worker's jail,
then execs the worker.

    python -I -S enter_jail.py SPEC WORKER-ARGV...

The server starts this without a preexec function and without a user
change, which lets CPython spawn with vfork: the server's memory is never
copied. (Forked from a server holding 465 MB, each worker cost it ~109,000
copy-on-write faults afterwards, ~125 ms of its event loop; through this
program, 3 faults. A reload of a Python route starts two.) What the
preexec function did in the fork happens
here instead, in a small process, in this order:

1. when SPEC names an identity (the server is root): its supplementary
   groups, gid and uid, for good (identity.drop_to checks root is gone);
2. the route's rlimits;
3. PR_SET_NO_NEW_PRIVS, for every worker;
4. for a route with `confine`: the no-network seccomp filter, then the
   Landlock restriction with the rule set the server built (its fd).

SPEC is a dict in hex of marshal: {"identity": (name, uid, gid, groups) |
None, "rlimits": [(resource, soft, hard), ...], "no_network": machine |
None, "landlock": fd | None, "status": fd}. Marshal because the same
interpreter writes and reads it and it costs no import (json's is 9 ms of
every worker's start). The status fd is close-on-exec once the jail is
entered, so the server reads an end of file when the worker's program runs;
a step that fails writes {"step", "errno", "message", "filename"} there
instead (marshal too) and this program exits 127.
"""

import ctypes
import marshal
import os
import resource
import sys

PR_SET_NO_NEW_PRIVS = 38
FAILED = 127


def enter(spec: dict) -> None:
    from host.privileges import identity, landlock   # both import only the standard library

    if spec["identity"] is not None:
        name, uid, gid, groups = spec["identity"]
        identity.drop_to(identity.Identity(name, uid, gid, tuple(groups)))
    for which, soft, hard in spec["rlimits"]:
        resource.setrlimit(which, (soft, hard))
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _step_error("PR_SET_NO_NEW_PRIVS", ctypes.get_errno())
    if spec["no_network"] is not None:
        from host.privileges import seccomp
        code = seccomp.NoNetworkFilter(spec["no_network"]).install()
        if code:
            raise _step_error("seccomp", code)
    if spec["landlock"] is not None:
        code = landlock.restrict_self(spec["landlock"])
        if code:
            raise _step_error("landlock_restrict_self", code)
        os.close(spec["landlock"])


class StepFailed(Exception):
    def __init__(self, step: str, errno: int | None, message: str, filename: str | None = None):
        super().__init__(message)
        self.report = {"step": step, "errno": errno, "message": message, "filename": filename}


def _step_error(step: str, code: int) -> StepFailed:
    return StepFailed(step, code, f"{step}: {os.strerror(code)}")


def main(argv: list[str]) -> None:
    spec = marshal.loads(bytes.fromhex(argv[1]))
    status = spec["status"]
    try:
        try:
            enter(spec)
        except OSError as exc:
            raise StepFailed("jail", exc.errno, str(exc), exc.filename) from None
        except Exception as exc:   # identity.PrivilegeError: the drop did not hold
            raise StepFailed("jail", None, str(exc)) from None
        os.set_inheritable(status, False)
        try:
            os.execvp(argv[2], argv[2:])
        except OSError as exc:
            raise StepFailed("exec", exc.errno, exc.strerror or str(exc), exc.filename or argv[2]) from None
    except StepFailed as failure:
        os.write(status, marshal.dumps(failure.report))
        os._exit(FAILED)


if __name__ == "__main__":
    # -I leaves this file's folder off sys.path; the package is two up.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main(sys.argv)
