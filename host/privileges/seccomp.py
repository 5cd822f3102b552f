"""`network = false`: a seccomp filter that fails every socket(2) but AF_UNIX.

A filter needs no privilege once PR_SET_NO_NEW_PRIVS is set, so it works
whether the server is root or already dropped (a network namespace would
need CAP_SYS_ADMIN before the uid drop, and leave loopback up). Denied calls
fail with EACCES, which programs report as a plain "permission denied".
io_uring_setup is denied too (io_uring can open sockets without socket(2)),
and so is any call from another ABI than the native one (x32, 32-bit
compat), whose numbers this filter does not check.

`program(machine)` is pure: a list of classic BPF instructions, tested
without the kernel by an interpreter in the tests.
"""

from __future__ import annotations

import ctypes
import errno
import socket

from host.cbpf import JEQ_K, JSET_K, LD_W_ABS, RET_K, Program

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
# struct seccomp_data offsets
NR, ARCH, ARG0 = 0, 4, 16
X32_BIT = 0x40000000

# machine -> (AUDIT_ARCH_*, __NR_socket, __NR_io_uring_setup)
ARCHES = {
    "x86_64": (0xC000003E, 41, 425),
    "aarch64": (0xC00000B7, 198, 425),
}

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


def program(machine: str) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions; KeyError for an unsupported machine."""
    arch, nr_socket, nr_io_uring = ARCHES[machine]
    deny = RET_ERRNO | errno.EACCES
    return [
        (LD_W_ABS, 0, 0, ARCH),
        (JEQ_K, 1, 0, arch),                  # native ABI: go on
        (RET_K, 0, 0, deny),
        (LD_W_ABS, 0, 0, NR),
        (JSET_K, 5, 0, X32_BIT),              # x32 numbers: deny
        (JEQ_K, 4, 0, nr_io_uring),
        (JEQ_K, 1, 0, nr_socket),
        (RET_K, 0, 0, RET_ALLOW),
        (LD_W_ABS, 0, 0, ARG0),               # socket(domain, ...)
        (JEQ_K, 1, 0, socket.AF_UNIX),
        (RET_K, 0, 0, deny),
        (RET_K, 0, 0, RET_ALLOW),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


class NoNetworkFilter:
    """The filter in C memory, built before the fork; `install()` runs in
    the child (after PR_SET_NO_NEW_PRIVS) and returns 0 or the errno."""

    def __init__(self, machine: str):
        self._program = Program(program(machine))
        self._prctl = _libc.prctl

    def install(self) -> int:
        if self._prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self._program.pointer(), 0, 0) != 0:
            return ctypes.get_errno() or errno.EPERM
        return 0
