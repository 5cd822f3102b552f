"""Landlock (Linux >= 5.13) through its three system calls, with ctypes.

A rule set is built in the server before the spawn (paths opened, rules
added: the server itself is not restricted by a rule set it only holds);
the worker's first program, enter_jail.py, calls `restrict_self` after
PR_SET_NO_NEW_PRIVS and then execs the route's program, so the
restriction holds for it and everything it starts. Access rights follow the kernel's ABI version, probed
once: rights a kernel does not know are simply not handled (ABI 1 cannot
restrict renames across directories, ABI 2 truncation). Device ioctls (ABI
5) are left alone: they are not a filesystem write.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446   # the same on every arch
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
WRITE_ABI1 = sum(1 << bit for bit in range(4, 13))   # remove, make dir/reg/sock/fifo/dev/symlink
REFER, TRUNCATE = 1 << 13, 1 << 14                      # ABI 2, ABI 3

READ = EXECUTE | READ_FILE | READ_DIR
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE   # what a rule on a non-directory may grant


class LandlockUnavailable(OSError):
    pass


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_abi: int | None = None


def abi_version() -> int:
    """The kernel's Landlock ABI, 0 when it has none (or it is disabled)."""
    global _abi
    if _abi is None:
        version = _libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                                ctypes.c_uint32(CREATE_RULESET_VERSION))
        _abi = max(int(version), 0)
    return _abi


def handled_rights(abi: int) -> int:
    rights = READ | WRITE_FILE | WRITE_ABI1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    return rights


def build_ruleset(read: tuple[str, ...], write: tuple[str, ...]) -> int:
    """A rule set fd: `read` paths readable, `write` paths writable too,
    nothing else. The caller closes it once the worker is started. A path
    that does not exist is an error (FileNotFoundError names it)."""
    abi = abi_version()
    if abi < 1:
        raise LandlockUnavailable(errno.EOPNOTSUPP, "this kernel has no Landlock (Linux 5.13+ with "
                                  "landlock in its LSM list)")
    handled = handled_rights(abi)
    attr = _RulesetAttr(handled)
    fd = _libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                       ctypes.c_uint32(0))
    if fd < 0:
        raise _error("landlock_create_ruleset")
    try:
        for paths, rights in ((read, READ), (write, handled)):
            for path in paths:
                _add_path(fd, path, rights)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _add_path(ruleset: int, path: str, rights: int) -> None:
    target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISDIR(os.fstat(target).st_mode):
            rights &= FILE_RIGHTS
        rule = _PathBeneath(rights, target)
        if _libc.syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                         ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
            raise _error(f"landlock_add_rule {path}")
    finally:
        os.close(target)


def restrict_self(ruleset: int) -> int:
    """In the worker, before its exec: 0, or the errno."""
    if _libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
        return ctypes.get_errno() or errno.EPERM
    return 0


def _error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")
