"""Every example runs exactly as its README says (issue 7 §6).

The commands are read from the README itself (its code blocks), run from the
repository root with the paths as written (relative), and a call is made
through the running server. Only flags a headless run needs are added to
sipp lines (-nostdin, a timeout). The READMEs' servers listen on the default
127.0.0.1:5060 and their placeholders sit on fixed loopback ports, so the
examples run one after another, never beside each other.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e import sipp

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SERVER_PORT = 5060
HEADLESS_SIPP = " -nostdin -timeout 30s -timeout_error"
LOADED = re.compile(r"routes loaded from (\S+): (.*)")

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(sipp.sipp_binary() is None, reason="sipp is not installed (sip-tester)")]


RUN_BLOCK = re.compile(r"\b(Run it|Try it|Start the proxy with)\b")


def readme_commands(example: str) -> list[str]:
    """The shell lines of the README's code blocks (fenced or indented) that
    follow a "Run it" / "Try it" / "Start the proxy with" sentence (other
    blocks show file contents), trailing comments removed."""
    lines, fenced, in_block, wanted, last_text = [], False, False, False, ""
    for line in (EXAMPLES / example / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            wanted = fenced and bool(RUN_BLOCK.search(last_text))
            continue
        block_line = fenced or (line.startswith("    ") and bool(line.strip()))
        if block_line and not fenced and not in_block:
            wanted = bool(RUN_BLOCK.search(last_text))
        in_block = block_line or (in_block and not line.strip())
        if not block_line:
            if line.strip():
                last_text, in_block = line, False
            continue
        command = re.sub(r"\s+#.*$", "", line.strip())
        if command and wanted:
            lines.append(command)
    return lines


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((sipp.LOCALHOST, port))
            return True
        except OSError:
            return False


class Shell:
    """Runs README lines from the repository root, the virtualenv's
    `babelsip` and `python` first on PATH, keeping `export`s, and stops
    every background command (its whole process group) at the end."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.exports: list[str] = []
        self.background: list[tuple[subprocess.Popen, Path]] = []
        self.env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        self.env.pop("PYTHONPATH", None)
        self.env["BABELSIP_STATE_DIR"] = str(workdir / "state")

    def _script(self, line: str) -> str:
        return "; ".join(self.exports + [line])

    def run(self, line: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
        if line.startswith("export "):
            self.exports.append(line)
            return subprocess.CompletedProcess(line, 0, "", "")
        return subprocess.run(["bash", "-c", self._script(line)], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, line: str) -> Path:
        log = self.workdir / f"bg{len(self.background)}.log"
        out = open(log, "wb")
        proc = subprocess.Popen(["bash", "-c", self._script(line)], cwd=REPO, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        self.background.append((proc, log))
        return log

    def stop(self) -> None:
        for proc, _ in reversed(self.background):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in reversed(self.background):
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def wait_for_routes(log: Path, timeout: float = 60.0) -> str:
    """The server's "routes loaded from DIR: name (state), ..." line."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = log.read_text(errors="replace") if log.exists() else ""
        match = LOADED.search(text)
        if match:
            return match.group(0)
        time.sleep(0.1)
    raise AssertionError(f"no 'routes loaded' line after {timeout:g}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def shell(tmp_path):
    busy = [p for p in (SERVER_PORT, 5061, 5090, 5091) if not port_free(p)]
    if busy:
        pytest.fail(f"the examples listen on fixed loopback ports and {busy} are taken")
    sh = Shell(tmp_path)
    yield sh
    sh.stop()


def start_server(shell: Shell, example: str) -> str:
    """Run the README's lines up to and including the server: one-shot
    commands to completion, `serve`rs in the background."""
    for line in readme_commands(example):
        if line.startswith(("babelsip run", "make run")):
            loaded = wait_for_routes(shell.start(line))
            assert sipp.sip_ping(SERVER_PORT, wait=2.0) == 200
            return loaded
        if " serve " in line:
            shell.start(line)
            port = int(re.search(r"--listen \S+:(\d+)", line).group(1))
            assert sipp.wait_port_bound(port, "tcp", timeout=20), f"{line!r} did not listen"
        else:
            result = shell.run(line)
            assert result.returncode == 0, f"{line!r} failed:\n{result.stdout}{result.stderr}"
    raise AssertionError(f"the README of {example} starts no server")


def assert_all_ok(loaded: str, example: str, routes: set[str]) -> None:
    directory, states = LOADED.match(loaded).groups()
    assert directory == str(EXAMPLES / example / "routes")
    found = dict(re.findall(r"(\w+) \((\w+)\)", states))
    assert found == dict.fromkeys(routes, "ok"), loaded


def call(tmp_path: Path, user: str, *, uas_port: int, rsa: bool = False, calls: int = 3):
    """`calls` sipp calls to `user` through the server, answered by a sipp uas."""
    # Callee and caller keep the route set (RFC 3261 §12.1): the uas copies
    # Record-Route into its 200, the uac sends ACK and BYE along it.
    with sipp.start_sipp_server("uas" if rsa else "uas_rr", tmp_path / f"uas-{user}", port=uas_port):
        extra = ["-s", user]
        if rsa:
            extra += ["-rsa", f"{sipp.LOCALHOST}:{SERVER_PORT}"]
        remote = (sipp.LOCALHOST, uas_port if rsa else SERVER_PORT)
        # sipp's built-in uac ignores Record-Route; without -rsa, use its
        # route-set-aware copy, as a real phone would behave.
        return sipp.run_sipp("uac" if rsa else "uac_rr", tmp_path / f"uac-{user}",
                             port=sipp.free_port(), remote=remote,
                             calls=calls, rate=10, timeout=30, no_default=False, extra=extra)


def invite_answer(user: str, host: str, extra: tuple[str, ...] = ()) -> int | None:
    """The final status of one INVITE sent to the server over UDP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((sipp.LOCALHOST, 0))
        me = sock.getsockname()[1]
        head = [f"INVITE sip:{user}@{host} SIP/2.0",
                f"Via: SIP/2.0/UDP 127.0.0.1:{me};rport;branch=z9hG4bK-ex-{user}",
                "From: <sip:tester@127.0.0.1>;tag=ex1", f"To: <sip:{user}@{host}>",
                f"Call-ID: example-{user}-{time.monotonic_ns()}", "CSeq: 1 INVITE", "Max-Forwards: 70",
                f"Contact: <sip:tester@127.0.0.1:{me}>", *extra, "Content-Length: 0", "", ""]
        sock.sendto("\r\n".join(head).encode(), (sipp.LOCALHOST, SERVER_PORT))
        end = time.monotonic() + 10
        while time.monotonic() < end:
            sock.settimeout(max(0.05, end - time.monotonic()))
            try:
                status = sipp.status_code(sock.recv(65535))
            except socket.timeout:
                return None
            if status is not None and status >= 200:
                return status
    return None


def test_quickstart_as_its_readme_says(shell, tmp_path):
    lines = readme_commands("quickstart")
    assert lines[0] == "make run"
    assert_all_ok(start_server(shell, "quickstart"), "quickstart", {"main"})
    uas = next(line for line in lines if line.startswith("sipp -sn uas"))
    uac = next(line for line in lines if line.startswith("sipp -sn uac"))
    shell.start(uas + HEADLESS_SIPP.replace("30s", "60s"))
    assert sipp.wait_port_bound(5090, "udp", timeout=10)
    result = shell.run(uac + HEADLESS_SIPP)
    assert result.returncode == 0, f"{uac!r}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"


def test_intensive_as_its_readme_says(shell, tmp_path):
    assert_all_ok(start_server(shell, "intensive"), "intensive", {"main"})
    result = call(tmp_path, "0033123456", uas_port=5091)   # France: the alpha gateway
    assert result.successful == 3 and result.failed == 0, result.summary()


def test_integration_as_its_readme_says(shell, tmp_path):
    assert_all_ok(start_server(shell, "integration"), "integration", {"main"})
    result = call(tmp_path, "33123456", uas_port=5091)     # the cheapest gateway of prefix 33
    assert result.successful == 3 and result.failed == 0, result.summary()
    assert invite_answer("999", "127.0.0.1") == 404         # no prefix in lcr.sqlite


def test_remote_as_its_readme_says(shell, tmp_path):
    assert_all_ok(start_server(shell, "remote"), "remote", {"main"})
    result = call(tmp_path, "alice", uas_port=5091)
    assert result.successful == 3 and result.failed == 0, result.summary()


@pytest.mark.skipif(shutil.which("perl") is None or shutil.which("javac") is None,
                    reason="needs perl and a JDK")
def test_specialized_as_its_readme_says(shell, tmp_path):
    assert_all_ok(start_server(shell, "specialized"), "specialized",
                  {"main", "registrar", "acme", "globex"})
    result = call(tmp_path, "bob", uas_port=5091, rsa=True)  # main.py relays to the URI
    assert result.successful == 3 and result.failed == 0, result.summary()
    assert invite_answer("bob", "elsewhere.example") == 404          # main.py: not served
    assert invite_answer("nonsense", "pbx.acme.example") == 484      # acme.pl: not a number
    assert invite_answer("1234", "sales.globex.example", ("X-Globex-Clock: 03:00",)) == 302  # Java
