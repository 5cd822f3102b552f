"""Process resource limits the shell depends on.

Every TCP connection costs one file descriptor. Most systems start a process
with a soft RLIMIT_NOFILE of 1024 but allow far more (the hard limit: often
524288 under systemd, 1048576 in containers); a server that keeps the soft
limit runs out near 1,000 connections for no reason. Raising the soft limit
up to the hard limit needs no privilege.
"""

from __future__ import annotations

import logging

try:
    import resource
except ImportError:  # not POSIX: nothing to raise, and no way to read it
    resource = None

log = logging.getLogger("babelsip")

# When the hard limit is "unlimited" (macOS, some BSDs) the kernel still
# refuses a soft limit above its own per-process cap (kern.maxfilesperproc on
# macOS, fs.nr_open on Linux, whose default is this number).
_UNLIMITED_TARGET = 1 << 20


def raise_nofile_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return the soft
    limit now in effect (None where it cannot be read). Never fails: an OS
    that refuses leaves the old limit, which is logged."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("file descriptors: cannot raise the soft limit from %d to %d: %s",
                        soft, target, exc)
            return soft
        log.info("file descriptors: soft limit raised from %d to %d", soft, target)
        return target
    log.info("file descriptors: soft limit %s (hard %s)", _show(soft), _show(hard))
    return None if soft == resource.RLIM_INFINITY else soft


def nofile_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None when unlimited or unknown."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def _show(value: int) -> str:
    return "unlimited" if resource is not None and value == resource.RLIM_INFINITY else str(value)
