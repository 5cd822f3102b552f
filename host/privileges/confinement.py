"""`confine` in routes.toml: what a route's worker processes may touch.

    [routes.billing]
    confine = { write = ["/var/spool/billing"], network = false }

- `read`: paths (directories or files) the worker may read and execute
  beneath; default `["/"]`, everything. Narrowing it means listing what the
  interpreter itself needs (/usr, /lib, the venv, ...).
- `write`: paths it may also create, write, rename and delete beneath. The
  route's working directory (its HOME and TMPDIR, under the state
  directory) is always writable; nothing else is unless listed here.
- `network`: false denies every socket but AF_UNIX (no TCP, UDP, raw or
  netlink); default true.

Enforced in the worker before it execs its program (enter_jail.py):
Landlock for the filesystem, a seccomp filter for the network. A route that asks for
confinement on a kernel without Landlock is not loaded, never run
unconfined. Lua routes run in-process in their own sandbox, and tcp routes
on another host: `confine` is for the worker runtimes only.

Sans-IO: values in, a frozen Confinement or a ConfinementError out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CONFINE_KEYS = ("network", "read", "write")
WORKER_RUNTIMES = frozenset({"python", "perl", "java", "exec"})


class ConfinementError(ValueError):
    """A bad `confine` value; the message names the sub-key."""


@dataclass(frozen=True)
class Confinement:
    read: tuple[str, ...] = ("/",)
    write: tuple[str, ...] = ()
    network: bool = True


def parse_confine(value) -> Confinement:
    if not isinstance(value, dict):
        raise ConfinementError('confine must be a table, e.g. { write = ["/var/spool/x"], network = false }')
    unknown = sorted(set(value) - set(CONFINE_KEYS))
    if unknown:
        raise ConfinementError(f"unknown key {unknown[0]!r} in confine (allowed: {', '.join(CONFINE_KEYS)})")
    network = value.get("network", True)
    if not isinstance(network, bool):
        raise ConfinementError(f"confine.network must be true or false, got {network!r}")
    read = _paths(value["read"], "read") if "read" in value else Confinement.read
    write = _paths(value["write"], "write") if "write" in value else ()
    return Confinement(read=read, write=write, network=network)


def _paths(value, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise ConfinementError(f"confine.{key} must be a list of absolute paths")
    out = []
    for path in items:
        if not path.startswith("/") or "\0" in path:
            raise ConfinementError(f"confine.{key}: {path!r} is not an absolute path")
        out.append(os.path.normpath(path))
    return tuple(dict.fromkeys(out))


def check_runtime(runtime: str) -> None:
    """Only worker processes can be confined (module doc)."""
    if runtime not in WORKER_RUNTIMES:
        why = ("a Lua route runs in-process, in its own sandbox" if runtime.startswith("lua")
               else "a tcp route runs in a process the server does not start")
        raise ConfinementError(f"confine applies to the {', '.join(sorted(WORKER_RUNTIMES))} "
                               f"runtimes, not {runtime}: {why}")
