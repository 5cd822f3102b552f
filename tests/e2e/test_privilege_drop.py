"""End to end: `babelsip run --user nobody` started as root.

The server (and, with --workers 2, the parent and both workers) must run as
nobody once its sockets are bound, still answer, and its route workers must
be neither root nor able to gain privileges (NoNewPrivs). Read from
/proc/PID/status. Needs root, and an interpreter nobody can run (a pyenv
under a 0700 /root cannot be: the server then runs in a private mount
namespace where it can, tests/privileges/reachable.py).
"""

from __future__ import annotations

import os
import re
import socket
import uuid

import pytest

from host.privileges.identity import resolve
from tests.e2e import routes_support as rs
from tests.e2e import sipp
from tests.privileges.reachable import open_to_others, passable_argv

NOBODY = resolve("nobody") if os.geteuid() == 0 else None
PREFIX, WHY_NOT = passable_argv(NOBODY.uid, NOBODY.gid) if NOBODY is not None else (None, "needs root")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(WHY_NOT is not None, reason=f"--user nobody: {WHY_NOT}")]

ROUTE = """
import os

def on_request(req):
    req.reply(200, f"worker uid {os.getuid()}")
"""
SERVING = re.compile(r"worker \d+ of \d+ serving \(pid (\d+)\)")


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def assert_runs_as_nobody(pid: int) -> None:
    fields = status(pid)
    assert fields["Uid"].split() == [str(NOBODY.uid)] * 4, (pid, fields["Uid"])
    assert fields["Gid"].split() == [str(NOBODY.gid)] * 4, (pid, fields["Gid"])
    assert "0" not in fields["Groups"].split(), (pid, fields["Groups"])


def assert_route_workers_jailed(server_pid: int) -> list[int]:
    workers = [p for p in rs.child_pids(server_pid) if "babelsip_sdk" in rs.cmdline(p)]
    assert workers, rs.child_pids(server_pid)
    for pid in workers:
        fields = status(pid)
        assert fields["Uid"].split()[0] != "0"
        assert fields["NoNewPrivs"] == "1", (pid, fields["NoNewPrivs"])
    return workers


def ask_route(port: int) -> str | None:
    """The reason of the route's answer to an OPTIONS for someone else."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((sipp.LOCALHOST, 0))
        request = sipp.options_request(sipp.LOCALHOST, port, sock.getsockname()[1]).replace(
            f"OPTIONS sip:{sipp.LOCALHOST}:{port}".encode(), b"OPTIONS sip:bob@example.com", 1)
        sock.settimeout(3)
        sock.sendto(request, (sipp.LOCALHOST, port))
        try:
            return sock.recvfrom(65535)[0].split(b"\r\n", 1)[0].decode()
        except socket.timeout:
            return None


@pytest.fixture
def routes(tmp_path):
    open_to_others(tmp_path)   # nobody reads the route file
    directory = tmp_path / "routes"
    rs.make_routes(directory, {"main.py": ROUTE})
    for path in (directory, *directory.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return directory


def start(args, tmp_path, **kw):
    env = {k: v for k, v in os.environ.items() if k != "BABELSIP_TEST_ROOT_WORKERS"}
    env["BABELSIP_STATE_DIR"] = str(tmp_path / "state")
    argv = ["run", *args, "--user", "nobody"]
    proxy = sipp.ProxyProcess([*PREFIX, *sipp.babelsip_command(), *argv], sipp.parse_listens(argv),
                              name="babelsip", env=env)
    proxy.wait_ready(kw.get("ready_timeout", 15.0))
    return proxy


def test_the_server_runs_as_the_user_once_bound_and_still_serves(routes, tmp_path):
    port = sipp.free_port()
    with start(["--listen", f"udp:{sipp.LOCALHOST}:{port}", "--routes", str(routes)], tmp_path,
               ready_timeout=30) as proxy:
        assert rs.wait_until(lambda: "running as nobody" in proxy.log(), 10), proxy.log()
        assert_runs_as_nobody(proxy.pid)
        assert sipp.sip_ping(port) == 200
        assert ask_route(port) == f"SIP/2.0 200 worker uid {NOBODY.uid}"
        assert_route_workers_jailed(proxy.pid)
        ctl = tmp_path / "state" / "babelsip.ctl"   # made as root, handed over
        assert (ctl.stat().st_uid, (tmp_path / "state").stat().st_uid) == (NOBODY.uid, NOBODY.uid)


def test_with_two_workers_every_process_runs_as_the_user(routes, tmp_path):
    port = sipp.free_port()
    with start(["--workers", "2", "--listen", f"udp:{sipp.LOCALHOST}:{port}",
                "--routes", str(routes)], tmp_path, ready_timeout=40) as proxy:
        assert rs.wait_until(lambda: "2 worker processes serving" in proxy.log(), 40), proxy.log()
        assert_runs_as_nobody(proxy.pid)
        cores = [int(m.group(1)) for m in map(SERVING.search, list(proxy.lines)) if m]
        assert len(cores) == 2
        for pid in cores:
            assert_runs_as_nobody(pid)
            assert_route_workers_jailed(pid)
        answers = {ask_route(port) for _ in range(4)}
        assert answers == {f"SIP/2.0 200 worker uid {NOBODY.uid}"}
