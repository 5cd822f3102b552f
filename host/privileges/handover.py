"""`babelsip run --user NAME [--group NAME] [--worker-user NAME]`: what the
command line does with them (host/cli.py calls these).

As root, before binding: `plan` resolves the names, `prepare_paths` makes
the directories the dropped server must write in (the state directory, the
management socket's folder) and gives them to the user. After binding
(Server.run, or the --workers parent after Parent.bind): `drop` hands the
management socket over and becomes the user for good (identity.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

from .identity import Identity, PrivilegeError, check_can_become, chown_to, drop_to, resolve
from .jail import ROOT_WORKERS_ENV, configure_workers, worker_identity

log = logging.getLogger("babelsip")


@dataclass(frozen=True)
class Plan:
    user: Identity | None      # whom the server becomes; None: it stays who it is
    warn_root: bool            # root with no --user: say so (once, in the first process)


def plan(user: str | None, group: str | None, worker_user: str | None, *,
         fleet_worker: bool) -> Plan:
    """The identities from the flags (PrivilegeError says what is wrong);
    also tells the route workers whom to become (jail.configure_workers)."""
    if group is not None and user is None:
        raise PrivilegeError("--group needs --user")
    identity = resolve(user, group) if user is not None else None
    if identity is not None:
        check_can_become(identity)
        if identity.uid == 0:
            identity = None          # --user root: nothing to drop
    workers = identity
    if worker_user is not None:
        workers = resolve(worker_user, flag="--worker-user")
        if workers.uid == 0:
            raise PrivilegeError(f"--worker-user {worker_user}: route workers never run as root")
    configure_workers(workers)
    if os.geteuid() == 0 and worker_identity() is None and not fleet_worker:
        log.warning("%s=1: route workers run as root (a test-suite setting, never for production)",
                    ROOT_WORKERS_ENV)
    return Plan(identity, warn_root=identity is None and os.geteuid() == 0 and not fleet_worker)


def prepare_paths(identity: Identity, management):
    """As root: the state directory and the management socket's folder exist
    and belong to `identity`. Returns the management config with a default
    socket path resolved now (as root the default is /run/babelsip/)."""
    state = os.environ.get("BABELSIP_STATE_DIR")
    if state:
        os.makedirs(state, mode=0o750, exist_ok=True)
        chown_to(state, identity)
    if management is None or management.ctl_socket is None:
        return management
    path = management.ctl_socket
    if path == "default":
        from host.management.unix import candidate_paths, default_socket_path
        path = default_socket_path()
        ours = {os.path.dirname(p) for p in candidate_paths()}
    else:
        ours = set()
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=0o750)
        ours.add(folder)
    if folder in ours:               # a folder of babelsip's own, never /tmp or /run itself
        chown_to(folder, identity)
    return dataclasses.replace(management, ctl_socket=path)


def drop(identity: Identity, ctl_socket: str | None = None) -> None:
    """After binding: the management socket (bound as root) is handed over,
    then the process becomes `identity`."""
    if ctl_socket is not None and os.geteuid() == 0:
        try:
            chown_to(ctl_socket, identity)
        except FileNotFoundError:
            pass
    drop_to(identity)
    log.info("running as %s", identity.describe())


def warn_root() -> None:
    log.warning("running as root: give --user NAME to drop to it once the sockets are bound "
                "(route workers run as nobody meanwhile)")


def add_privilege_flags(run) -> None:
    group = run.add_argument_group("privileges (README.md, Privileges)")
    group.add_argument("--user", metavar="NAME", default=None,
                       help="started as root: become this user once the sockets are bound")
    group.add_argument("--group", metavar="NAME", default=None,
                       help="with --user: this group instead of the user's own")
    group.add_argument("--worker-user", metavar="NAME", default=None,
                       help="what route worker processes run as when the server is root "
                            "(default: --user, else nobody)")
