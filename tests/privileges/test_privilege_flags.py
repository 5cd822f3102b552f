"""--user, --group, --worker-user: resolved and checked before anything is bound."""

import logging
import os

import pytest

from host.privileges import handover, jail
from host.privileges.identity import PrivilegeError, drop_to, resolve
from host.config import parse_command_line
from host.cli import build_parser


@pytest.fixture(autouse=True)
def reset_workers(monkeypatch):
    monkeypatch.delenv("BABELSIP_TEST_ROOT_WORKERS", raising=False)   # tests/conftest.py's fallback
    yield
    jail.configure_workers(None)


def test_names_and_numbers_resolve():
    nobody = resolve("nobody")
    assert resolve(str(nobody.uid)) == nobody
    assert resolve("nobody", "0").gid == 0
    with pytest.raises(PrivilegeError, match="--user no-such-user-here: no such user"):
        resolve("no-such-user-here")
    with pytest.raises(PrivilegeError, match="--group no-such-group-here: no such group"):
        resolve("nobody", "no-such-group-here")


def test_group_needs_user_and_workers_never_run_as_root():
    with pytest.raises(PrivilegeError, match="--group needs --user"):
        handover.plan(None, "nogroup", None, fleet_worker=False)
    with pytest.raises(PrivilegeError, match="route workers never run as root"):
        handover.plan(None, None, "root", fleet_worker=False)


def test_user_while_not_root_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    with pytest.raises(PrivilegeError, match="--user nobody: changing user needs root "
                                             r"\(this process runs as uid 1000\)"):
        handover.plan("nobody", None, None, fleet_worker=False)


def test_a_worker_already_running_as_the_user_is_fine(monkeypatch):
    nobody = resolve("nobody")
    monkeypatch.setattr(os, "geteuid", lambda: nobody.uid)
    monkeypatch.setattr(os, "getuid", lambda: nobody.uid)
    monkeypatch.setattr(os, "getgid", lambda: nobody.gid)
    assert handover.plan("nobody", None, None, fleet_worker=True).user == nobody


def test_root_without_user_warns_once_and_workers_become_nobody(monkeypatch, caplog):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    decided = handover.plan(None, None, None, fleet_worker=False)
    assert decided == handover.Plan(user=None, warn_root=True)
    assert handover.plan(None, None, None, fleet_worker=True).warn_root is False   # the parent warned
    nobody = resolve("nobody", "nogroup")
    assert (jail.worker_identity().uid, jail.worker_identity().gid) == (nobody.uid, nobody.gid)
    assert jail.worker_identity().groups == ()      # not root's, not any
    handover.plan(None, None, "daemon", fleet_worker=False)
    assert jail.worker_identity() == resolve("daemon")
    with caplog.at_level(logging.WARNING, logger="babelsip"):
        handover.warn_root()
    assert "running as root: give --user NAME" in caplog.text


def test_the_test_suite_setting_keeps_root_workers_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("BABELSIP_TEST_ROOT_WORKERS", "1")
    with caplog.at_level(logging.WARNING, logger="babelsip"):
        handover.plan(None, None, None, fleet_worker=False)
    assert jail.worker_identity() is None
    assert "route workers run as root" in caplog.text
    handover.plan(None, None, "nobody", fleet_worker=False)   # a named user wins
    assert jail.worker_identity() == resolve("nobody")


def test_the_flags_are_config_keys_in_server(tmp_path):
    config = tmp_path / "babelsip.toml"
    config.write_text('[server]\nuser = "nobody"\ngroup = "nogroup"\nworker_user = "daemon"\n'
                      'relay_to = "sip:x@127.0.0.1"\n')
    args = parse_command_line(build_parser(), ["run", "--config", str(config)])
    assert (args.user, args.group, args.worker_user) == ("nobody", "nogroup", "daemon")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: drops a child process to nobody")
def test_a_dropped_process_cannot_become_root_again():
    nobody = resolve("nobody")
    pid = os.fork()
    if pid == 0:   # the child drops; its exit status says what it saw
        try:
            drop_to(nobody)
            code = 0 if os.getresuid() == (nobody.uid,) * 3 and os.getgroups() == list(nobody.groups) else 3
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
