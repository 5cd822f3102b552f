"""Route workers in their jail: real Python workers, started in-process.

The route reports what it could do in its reply reason; the test reads the
decision. Running as root (CI does) the workers must become nobody; every
worker, root or not, has NoNewPrivs. Confinement needs Landlock in the
kernel, not root.
"""

import os
import socket
import sys
import textwrap

import pytest

from host.privileges import landlock
from host.privileges.confinement import Confinement
from host.privileges.identity import worker_fallback
from host.privileges.jail import configure_workers
from host.routes.runtime import LoadError, RuntimeSpec
from runtimes.jsonline import StdioRuntime
from tests.privileges.reachable import open_to_others, worker_python

NOBODY = worker_fallback()
PYTHON, UNREACHABLE = worker_python(NOBODY.uid, NOBODY.gid)
spawns = pytest.mark.skipif(UNREACHABLE is not None,
                            reason=f"workers run as nobody under root: {UNREACHABLE}")

FAST = (("ping_interval", 0.1), ("grace", 0.5))

PROBE = """
import os, socket
from babelsip_sdk import session

def status(key):
    with open("/proc/self/status") as f:
        return next(l.split(":", 1)[1].strip() for l in f if l.startswith(key + ":"))

def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return f"errno{exc.errno}"

def write(path):
    with open(path, "w") as f:
        f.write("x")

def connect(port):
    with socket.create_connection(("127.0.0.1", int(port)), timeout=1):
        pass

def on_request(req):
    what, _, arg = req.ruri_user.partition("-")
    if what == "ids":
        req.reply(200, f"{os.getuid()} {os.getgid()} {status('Groups') or '-'} {status('NoNewPrivs')}")
    elif what == "write":
        req.reply(200, attempt(lambda: write(bytes.fromhex(arg).decode())))
    elif what == "connect":
        req.reply(200, attempt(lambda: connect(arg)))
    elif what == "unix":
        req.reply(200, attempt(lambda: socket.socket(socket.AF_UNIX).close()))
"""

needs_landlock = pytest.mark.skipif(landlock.abi_version() < 1, reason="this kernel has no Landlock")


def event(user):
    return {"hook": "on_request", "method": "INVITE", "ruri": f"sip:{user}@example.com",
            "ruri_user": user, "ruri_host": "example.com", "call_id": "c1", "cseq": 1,
            "from_uri": "sip:alice@example.com", "from_tag": "t", "to_uri": f"sip:{user}@example.com",
            "to_tag": "", "source_ip": "127.0.0.1", "source_port": 5060, "transport": "udp",
            "in_dialog": False, "headers": [], "body": "", "vars": {}}


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.delenv("BABELSIP_TEST_ROOT_WORKERS", raising=False)   # tests/conftest.py's fallback
    if PYTHON is not None:   # the interpreter the python runtime starts workers with
        monkeypatch.setattr(sys, "executable", PYTHON)
    # Workers run as nobody under root: the folders they are given must be
    # reachable by it (pytest's tmp_path is 0700).
    open_to_others(tmp_path)
    (tmp_path / "main.py").write_text(textwrap.dedent(PROBE))
    os.chmod(tmp_path / "main.py", 0o644)
    configure_workers(None)
    return tmp_path


def spec(tree, confine=None):
    options = FAST + (("state_dir", str(tree / "state")),)
    return RuntimeSpec("main", tree / "main.py", "python", deadline=2.0, pool=1,
                       options=options, confine=confine)


async def ask(rt, user):
    return (await rt.handle("on_request", event(user))).reason


def hexpath(path):
    return str(path).encode().hex()


@spawns
async def test_a_worker_is_never_root_and_has_no_new_privileges(tree):
    rt = StdioRuntime(spec(tree))
    await rt.start()
    try:
        uid, gid, groups, nnp = (await ask(rt, "ids")).split()
        if os.geteuid() == 0:
            nobody = worker_fallback()
            assert (int(uid), int(gid)) == (nobody.uid, nobody.gid)
            assert groups == "-"          # root's supplementary groups are gone
        else:
            assert int(uid) == os.getuid()
        assert nnp == "1"
        assert int(uid) != 0
    finally:
        await rt.aclose()


@spawns
@needs_landlock
async def test_a_confined_route_writes_only_where_allowed(tree):
    spool = tree / "spool"
    spool.mkdir()
    os.chmod(spool, 0o777)     # writable by nobody too: only Landlock can refuse
    outside = tree / "outside"
    outside.mkdir()
    os.chmod(outside, 0o777)
    rt = StdioRuntime(spec(tree, Confinement(write=(str(spool),))))
    await rt.start()
    try:
        assert await ask(rt, "write-" + hexpath(spool / "ok.txt")) == "ok"
        assert (spool / "ok.txt").read_text() == "x"
        assert await ask(rt, "write-" + hexpath(outside / "no.txt")) == "errno13"
        assert await ask(rt, "write-" + hexpath(f"/tmp/babelsip-probe-{os.getpid()}")) == "errno13"
        assert not (outside / "no.txt").exists()
        assert await ask(rt, "write-" + hexpath(rt.workdir / "home.txt")) == "ok"   # its HOME
        assert await ask(rt, "connect-1") != "errno13"   # network allowed by default
    finally:
        await rt.aclose()


@spawns
@needs_landlock
async def test_network_false_blocks_a_connect(tree):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        rt = StdioRuntime(spec(tree, Confinement(network=False)))
        await rt.start()
        try:
            assert await ask(rt, f"connect-{port}") == "errno13"
            assert await ask(rt, "unix") == "ok"
        finally:
            await rt.aclose()
        rt = StdioRuntime(spec(tree))
        await rt.start()
        try:
            assert await ask(rt, f"connect-{port}") == "ok"   # the same probe, unconfined
        finally:
            await rt.aclose()


async def test_a_confined_route_with_a_missing_path_does_not_load(tree):
    rt = StdioRuntime(spec(tree, Confinement(write=(str(tree / "missing"),))))
    with pytest.raises(LoadError, match="missing: no such file or directory|no Landlock"):
        await rt.start()   # prepare() refused: no worker was started


async def test_without_landlock_a_confined_route_does_not_load(tree, monkeypatch):
    monkeypatch.setattr(landlock, "_abi", 0)
    rt = StdioRuntime(spec(tree, Confinement()))
    with pytest.raises(LoadError, match="no Landlock.*not run unconfined"):
        await rt.start()   # prepare() refused: no worker was started
