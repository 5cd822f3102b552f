"""Issue 7 §4: a route's processes never outlive their worker, nor the server.

Before the fix a grandchild a route started kept running after the pool
killed or restarted its worker (the host killed the worker's pid only), and
5 s after the server was SIGKILLed a worker busy in its handler, one
sleeping in on_request and one holding non-daemon threads were all still
alive: a worker that is not reading its stdin never sees the host go.

Now the host signals a worker's whole process group when it stops or
restarts it, and every worker holds the host's lifeline (sdk/PROTOCOL.md §9):
when the server dies, however it dies, the lifeline's end of file makes the
worker's SDK — or the guard the host puts in front of an `exec` route —
SIGKILL the worker's group.

Every process these tests make writes its pid to a file under tmp_path; the
`processes` fixture SIGKILLs whatever of them is left at the end (checking
the start time, so that a reused pid is never hit).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import trio

from host.privileges.jail import worker_identity
from host.routes.runtime import RuntimeSpec, ScriptError
from runtimes.jsonline import StdioRuntime
from runtimes.jsonline import stdio

from jsonline_fixtures import FAST, event  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HOST = [sys.executable, "-m", "host"]

# The bound: everything gone "within a few seconds" of its worker or
# the server. The kill itself takes milliseconds; the rest is room for a
# loaded 2-core machine.
GONE_WITHIN = 5.0
# A server with a Java route compiles the SDK and the route first (~5 s on
# the 2-core machine, more when it is busy).
SERVER_START = 60.0
# Long enough that no process of these tests ends by itself during a test.
LONG = 300

needs_perl = pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
needs_java = pytest.mark.skipif(shutil.which("javac") is None or shutil.which("java") is None,
                                reason="a JDK is not installed (Debian package default-jdk-headless)")


# --------------------------------------------------------------------------
# processes


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (field 3), None when gone
    or a zombie (a zombie has ended; only its parent has not reaped it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields else None   # field 22, starttime


def _pgid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[2]) if fields else None   # field 5, pgrp


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _group_members(pgids: set[int]) -> list[int]:
    """Live processes (of any owner we can see) in one of the process groups `pgids`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _pgid(int(entry)) in pgids:
            out.append(int(entry))
    return out


class Processes:
    """Pids the test learnt (from files its routes wrote), and cleanup."""

    def __init__(self) -> None:
        self.known: dict[int, str] = {}
        self.groups: set[int] = set()

    def add(self, pids) -> list[int]:
        for pid in pids:
            started = _start_time(pid)
            if started is not None:
                self.known.setdefault(pid, started)
                pgid = _pgid(pid)
                if pgid is not None and pgid != os.getpgrp():
                    self.groups.add(pgid)
        return list(pids)

    def alive(self, pid: int) -> bool:
        started = _start_time(pid)
        return started is not None and started == self.known.get(pid, started)

    def survivors(self, pids, timeout: float) -> list[int]:
        """Those of `pids` still alive after waiting up to `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            left = [p for p in pids if self.alive(p)]
            if not left or time.monotonic() >= end:
                return left
            time.sleep(0.05)

    def describe(self, pids) -> str:
        return "; ".join(f"{p}: {_cmdline(p)}" for p in pids)

    def kill_all(self) -> None:
        for pid, started in self.known.items():
            if _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture
def processes():
    procs = Processes()
    try:
        yield procs
    finally:
        procs.kill_all()


def shared_folder(tmp_path: Path) -> Path:
    """A folder the route workers may write their pid files in: under a
    root server they run as nobody (host/privileges/jail.py)."""
    folder = tmp_path / "shared"
    folder.mkdir(exist_ok=True)
    identity = worker_identity()
    if identity is not None:
        os.chown(folder, identity.uid, identity.gid)
    return folder


def read_pids(path: Path) -> list[int] | None:
    """The pids a route recorded in `path` (written by rename: whole or absent)."""
    try:
        return [int(p) for p in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return None


async def wait_pids(path: Path, timeout: float = 10.0) -> list[int]:
    with trio.fail_after(timeout):
        while (pids := read_pids(path)) is None:
            await trio.sleep(0.02)
    return pids


# Python: record pids in a file atomically (the reader sees all or nothing).
PY_RECORD = """
import os

def record(path, pids):
    with open(path + ".tmp", "w") as f:
        f.write(" ".join(map(str, pids)))
    os.replace(path + ".tmp", path)
"""


# --------------------------------------------------------------------------
# the pool stops or restarts a worker: its children go with it


FORKER = PY_RECORD + """
import subprocess

def on_request(req):
    if req.ruri_user == "hang":
        while True:
            pass
    child = subprocess.Popen(["sleep", "{long}"])
    record({pids!r}, [os.getpid(), child.pid])
    req.reply(200, "forked")
"""


# The same as an `exec` route speaking the protocol with no SDK: the host
# runs it under its guard, whose pid is the one the pool knows and kills.
FORKER_EXEC = """#!{python}
import json, os, subprocess, sys

def send(msg):
    sys.stdout.write(json.dumps(msg) + "\\n")
    sys.stdout.flush()

for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "hello":
        send({{"type": "ready", "protocol": 1, "hooks": ["on_request"]}})
    elif msg["type"] == "ping":
        send({{"type": "pong", "id": msg["id"]}})
    elif msg["type"] == "event" and msg["event"]["ruri_user"] == "hang":
        while True:
            pass
    elif msg["type"] == "event":
        child = subprocess.Popen(["sleep", "{long}"])
        with open({pids!r} + ".tmp", "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}")
        os.replace({pids!r} + ".tmp", {pids!r})
        send({{"type": "decision", "id": msg["id"], "verbs": [["reply", 200, "forked"]]}})
"""


@pytest.mark.parametrize("runtime", ["python", "exec"])
@pytest.mark.parametrize("how", ["killed", "hung", "stopped"])
async def test_a_grandchild_goes_with_its_worker(tmp_path, processes, how, runtime):
    pids_file = shared_folder(tmp_path) / "forker.pids"
    path = tmp_path / "main.py"
    code = FORKER if runtime == "python" else FORKER_EXEC
    path.write_text(code.format(long=LONG, pids=str(pids_file), python=sys.executable))
    path.chmod(0o755)
    spec = RuntimeSpec("main", path, runtime, deadline=2.0, pool=1,
                       options=FAST + (("state_dir", str(tmp_path / "state")),))
    rt = StdioRuntime(spec)
    await rt.start()
    try:
        assert (await rt.handle("on_request", event("fork"))).reason == "forked"
        worker, grandchild = processes.add(await wait_pids(pids_file))
        known = rt.pids[0]   # the worker, or the guard in front of an exec route
        assert processes.alive(grandchild)
        if how == "killed":        # the worker dies: the pool restarts it
            os.kill(known, signal.SIGKILL)
            with trio.fail_after(GONE_WITHIN):
                while rt.pids[0] in (None, known):
                    await trio.sleep(0.02)
        elif how == "hung":        # missed pings: the pool kills and restarts it
            with pytest.raises(ScriptError) as e:
                await rt.handle("on_request", event("hang"))
            assert e.value.kind == "timeout"
        else:                      # the runtime is closed (server stop, reload)
            await rt.aclose()
        left = await trio.to_thread.run_sync(processes.survivors, [worker, grandchild], GONE_WITHIN)
        assert not left, f"still alive {GONE_WITHIN} s after the worker was {how}: " \
                         + processes.describe(left)
    finally:
        await rt.aclose()


# --------------------------------------------------------------------------
# stderr: a flooding worker cannot flood the host log


FLOOD = 200_000   # lines, written at once: ~1.4 MB, far beyond any burst


async def test_stderr_flood_is_capped_with_a_count_of_what_was_dropped(tmp_path, caplog):
    path = tmp_path / "main.py"
    path.write_text(textwrap.dedent(f"""
        import sys

        def on_request(req):
            sys.stderr.write("flood\\n" * {FLOOD})
            sys.stderr.flush()
            req.reply(200, "done")
    """))
    # Pings 1 s apart, not FAST's 0.1 s: on a loaded machine a worker
    # writing 1.4 MB to a pipe may be slower than 0.2 s.
    spec = RuntimeSpec("main", path, "python", deadline=5.0, pool=1,
                       options=(("ping_interval", 1.0), ("grace", 0.5),
                                ("state_dir", str(tmp_path / "state"))))
    caplog.set_level(logging.INFO, logger="babelsip.route.main")
    rt = StdioRuntime(spec)
    await rt.start()
    try:
        began = trio.current_time()
        assert (await rt.handle("on_request", event())).reason == "done"

        def counts():
            texts = [r.getMessage() for r in caplog.records if r.name == "babelsip.route.main"]
            logged = sum(1 for t in texts if t.endswith(": flood"))
            dropped = sum(int(m.group(1)) for t in texts
                          if (m := re.search(r"suppressed (\d+) stderr lines", t)))
            return logged, dropped

        # Every line is either logged or counted, and the count comes out
        # within about a second of the flood's end.
        with trio.move_on_after(10):
            while sum(counts()) < FLOOD:
                await trio.sleep(0.05)
        elapsed = trio.current_time() - began
        logged, dropped = counts()
        assert logged + dropped == FLOOD, (logged, dropped)
        # The burst gets through whole (a crash's traceback), then the rate applies.
        assert logged >= stdio.STDERR_BURST
        assert logged <= stdio.STDERR_BURST + stdio.STDERR_RATE * (elapsed + 1)
    finally:
        await rt.aclose()


# --------------------------------------------------------------------------
# the server is SIGKILLed: every worker and its descendants go


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def message_request(port: int, user: str, local_port: int) -> bytes:
    """A MESSAGE to sip:USER@… through the server: it goes to USER's route."""
    tag = uuid.uuid4().hex[:10]
    return (f"MESSAGE sip:{user}@127.0.0.1:9 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:test@127.0.0.1>;tag={tag}\r\n"
            f"To: <sip:{user}@127.0.0.1>\r\n"
            f"Call-ID: {uuid.uuid4().hex}\r\n"
            f"CSeq: 1 MESSAGE\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def routes_toml(names) -> str:
    """One worker per route, each taking the requests for its own name; pings
    far apart so the host itself never restarts a worker busy in a handler
    (it would kill it, which is not what these tests look at)."""
    parts = [f'default = "{names[0]}"\n']
    for name in names:
        parts.append(f'[[match]]\nroute = "{name}"\nruri_user = "^{name}$"\n')
    for name in names:
        parts.append(f'[routes.{name}]\npool = 1\noptions = {{ ping_interval = {LONG} }}\n')
    return "\n".join(parts)


class Server:
    def __init__(self, routes: Path, log: Path):
        self.port = free_udp_port()
        self.log = log
        self.proc = subprocess.Popen(
            HOST + ["run", "--listen", f"udp:127.0.0.1:{self.port}", "--routes", str(routes)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self) -> None:
        end = time.monotonic() + SERVER_START
        while "listening on" not in self.text():
            assert self.proc.poll() is None, "server exited:\n" + self.text()[-3000:]
            assert time.monotonic() < end, "server not listening:\n" + self.text()[-3000:]
            time.sleep(0.05)

    def busy(self, user: str, pids_file: Path, timeout: float = SERVER_START) -> list[int]:
        """Send USER's route a request, again each second (its worker may
        still be starting) until the route recorded its pids."""
        end = time.monotonic() + timeout
        while True:
            self.sock.sendto(message_request(self.port, user, self.sock.getsockname()[1]),
                             ("127.0.0.1", self.port))
            step = time.monotonic() + 1.0
            while time.monotonic() < step:
                pids = read_pids(pids_file)
                if pids is not None:
                    return pids
                time.sleep(0.02)
            assert time.monotonic() < end, f"route {user} never ran:\n" + self.text()[-3000:]

    def close(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def sigkill_server_and_check(server: Server, processes: Processes, pids: list[int]) -> None:
    groups = set(processes.groups)
    assert all(processes.alive(p) for p in pids), "a process ended before the test: " + server.text()
    killed = time.monotonic()
    server.proc.kill()
    server.proc.wait(timeout=10)
    left = processes.survivors(pids, GONE_WITHIN)
    assert not left, (f"still alive {GONE_WITHIN} s after the server was SIGKILLed: "
                      + processes.describe(left))
    # Nothing else of the workers' groups either (an SDK's lifeline watcher,
    # the guard of an exec route, a child nobody recorded).
    while (members := _group_members(groups)) and time.monotonic() < killed + GONE_WITHIN:
        time.sleep(0.05)
    assert not members, "left in the workers' process groups: " + processes.describe(members)
    print(f"{len(pids)} processes and their groups gone {time.monotonic() - killed:.2f} s "
          "after the server's SIGKILL")


PY_ROUTES = {
    # busy in its handler, never reading its input again
    "busy.py": PY_RECORD + """
def on_request(req):
    record({busy!r}, [os.getpid()])
    while True:
        pass
""",
    # asleep in its handler
    "sleeper.py": PY_RECORD + """
import time

def on_request(req):
    record({sleeper!r}, [os.getpid()])
    time.sleep({long})
""",
    # idle, but Python waits for its non-daemon threads before it exits
    "threads.py": PY_RECORD + """
import threading, time

def on_request(req):
    for _ in range(2):
        threading.Thread(target=time.sleep, args=({long},)).start()
    record({threads!r}, [os.getpid()])
    req.reply(200, "threads started")
""",
    # stuck in one C call that holds the GIL (exponential backtracking): no
    # Python thread of the worker could run, so its watcher is a process
    "regex.py": PY_RECORD + """
import re

def on_request(req):
    record({regex!r}, [os.getpid()])
    re.match(r"(a|aa)*c", "a" * 60)
""",
    # stopped: no code of the worker runs at all
    "stopped.py": PY_RECORD + """
import signal

def on_request(req):
    record({stopped!r}, [os.getpid()])
    os.kill(os.getpid(), signal.SIGSTOP)
""",
    # a child and a grandchild (a shell running sleep in the background)
    "forker.py": PY_RECORD + """
import subprocess, time

def on_request(req):
    shell = subprocess.Popen(["sh", "-c", "sleep {long} & echo $! > {forker}.sleep; wait"])
    deadline = time.monotonic() + 5
    while not os.path.exists({forker!r} + ".sleep") and time.monotonic() < deadline:
        time.sleep(0.01)
    with open({forker!r} + ".sleep") as f:
        sleeper = int(f.read())
    record({forker!r}, [os.getpid(), shell.pid, sleeper])
    req.reply(200, "forked")
""",
    # any executable speaking the protocol with no SDK, ignoring the lifeline
    "plain": """#!{python}
import json, os, sys, time

for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "hello":
        print(json.dumps({{"type": "ready", "protocol": 1, "hooks": ["on_request"]}}), flush=True)
    elif msg["type"] == "ping":
        print(json.dumps({{"type": "pong", "id": msg["id"]}}), flush=True)
    elif msg["type"] == "event":
        with open({plain!r} + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace({plain!r} + ".tmp", {plain!r})
        time.sleep({long})
""",
}


def test_sigkill_of_the_server_ends_python_and_exec_workers(tmp_path, processes):
    names = [Path(f).stem for f in PY_ROUTES]
    files = {name: str(shared_folder(tmp_path) / f"{name}.pids") for name in names}
    routes = tmp_path / "routes"
    routes.mkdir()
    for file, text in PY_ROUTES.items():
        (routes / file).write_text(text.format(long=LONG, python=sys.executable, **files))
    (routes / "plain").chmod(0o755)
    (routes / "routes.toml").write_text(routes_toml(names))
    server = Server(routes, tmp_path / "server.log")
    try:
        server.wait_listening()
        pids = []
        for name in names:
            pids += processes.add(server.busy(name, Path(files[name])))
        sigkill_server_and_check(server, processes, pids)
    finally:
        server.close()


SLEEPERS = {
    "perl": ("sleeper.pl", """
use strict;
use warnings;

sub record {{
    my ($path, @pids) = @_;
    open(my $f, '>', "$path.tmp") or die "$path.tmp: $!";
    print $f join(' ', @pids);
    close $f;
    rename("$path.tmp", $path) or die "rename: $!";
}}

sub on_request {{
    my ($req) = @_;
    my $child = fork() // die "fork: $!";
    if ($child == 0) {{ exec('sleep', '{long}'); exit 127; }}
    record('{pids}', $$, $child);
    sleep {long};
}}

1;
"""),
    "java": ("Sleeper.java", """
import babelsip.Request;
import babelsip.Route;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;

public class Sleeper implements Route {{
    @Override
    public void onRequest(Request req) throws Exception {{
        Process child = new ProcessBuilder("sleep", "{long}").start();
        Path file = Paths.get("{pids}");
        Path tmp = Paths.get("{pids}.tmp");
        Files.writeString(tmp, ProcessHandle.current().pid() + " " + child.pid());
        Files.move(tmp, file, StandardCopyOption.ATOMIC_MOVE);
        Thread.sleep({long}000L);
    }}
}}
"""),
}


@pytest.mark.parametrize("language", [pytest.param("perl", marks=needs_perl),
                                      pytest.param("java", marks=needs_java)])
def test_sigkill_of_the_server_ends_a_worker_asleep_in_its_handler(tmp_path, processes, language):
    file, text = SLEEPERS[language]
    pids_file = shared_folder(tmp_path) / "sleeper.pids"
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / file).write_text(text.format(long=LONG, pids=pids_file))
    (routes / "routes.toml").write_text(routes_toml(["sleeper"]))
    server = Server(routes, tmp_path / "server.log")
    try:
        server.wait_listening()
        pids = processes.add(server.busy("sleeper", pids_file))
        sigkill_server_and_check(server, processes, pids)
    finally:
        server.close()
