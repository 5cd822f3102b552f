"""Who the server runs as: `--user`/`--group` resolved, and the drop to them.

Started as root (to bind port 5060, or by an init system), the server binds
its sockets first and then becomes the user for good: the supplementary
groups of the user, then the gid, then the uid (in that order: once the uid
is gone, changing groups is no longer allowed), all three ids of each (real,
effective, saved) so nothing can switch back. Afterwards it checks that root
cannot be regained, and stops if it can.
"""

from __future__ import annotations

import collections
import grp
import os
import pwd

WORKER_FALLBACK_USER = "nobody"   # route workers of a server that stays root
WORKER_FALLBACK_GROUPS = ("nogroup", "nobody")


class PrivilegeError(Exception):
    """A --user/--group that cannot be used, or a drop that did not hold."""


# A named tuple, not a dataclass: enter_jail.py imports this module in every
# worker's start, and dataclasses would be 20 ms of it.
class Identity(collections.namedtuple("Identity", "name uid gid groups", defaults=((),))):
    """A user to run as: name, uid, gid and supplementary groups (a tuple)."""

    __slots__ = ()

    def describe(self) -> str:
        return f"{self.name} (uid {self.uid}, gid {self.gid})"


def resolve(user: str, group: str | None = None, *, flag: str = "--user") -> Identity:
    """`user` (a name or a number) and `group` (default: the user's own)."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise PrivilegeError(f"{flag} {user}: no such user") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except (KeyError, OverflowError):
            raise PrivilegeError(f"--group {group}: no such group") from None
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    return Identity(entry.pw_name, entry.pw_uid, gid, groups)


def worker_fallback() -> Identity:
    """nobody/nogroup: what route workers run as when the server is root and
    no --worker-user (nor --user) names someone else."""
    entry = pwd.getpwnam(WORKER_FALLBACK_USER)
    gid = entry.pw_gid
    for name in WORKER_FALLBACK_GROUPS:
        try:
            gid = grp.getgrnam(name).gr_gid
            break
        except KeyError:
            continue
    return Identity(entry.pw_name, entry.pw_uid, gid, ())


def check_can_become(identity: Identity, flag: str = "--user") -> None:
    """Only root can become someone else; being that user already is fine
    (a worker of --workers N, started by a parent that already dropped)."""
    if os.geteuid() == 0 or (os.getuid(), os.getgid()) == (identity.uid, identity.gid):
        return
    raise PrivilegeError(f"{flag} {identity.name}: changing user needs root "
                         f"(this process runs as uid {os.getuid()}); start it as root or drop {flag}")


def drop_to(identity: Identity) -> None:
    """Become `identity` for good (module doc); raise PrivilegeError if root
    could still be regained."""
    if os.geteuid() == 0:
        os.setgroups(list(identity.groups))
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    verify_dropped(identity)


def verify_dropped(identity: Identity) -> None:
    if os.getresuid() != (identity.uid,) * 3 or os.getresgid() != (identity.gid,) * 3:
        raise PrivilegeError(f"dropping to {identity.describe()} did not hold: "
                             f"uids {os.getresuid()}, gids {os.getresgid()}")
    if identity.uid == 0:
        return
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError(f"after dropping to {identity.describe()} the process could become root again")


def chown_to(path: str, identity: Identity) -> None:
    """A file or directory made as root that the dropped server must own."""
    os.chown(path, identity.uid, identity.gid)
