"""`babelsip` command line: argument errors, a port in use, a clean stop."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from host.cli import parse_listen

CMD = [sys.executable, "-m", "host"]


def run(*args, timeout=20):
    return subprocess.run(CMD + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("text, expected", [
    ("udp:127.0.0.1:5060", ("udp", "127.0.0.1", 5060)),
    ("TCP:0.0.0.0:5070", ("tcp", "0.0.0.0", 5070)),
    ("udp:[::1]:5060", ("udp", "::1", 5060)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("args, message", [
    (["run", "--listen", "sctp:127.0.0.1:5060", "--relay-to", "sip:a@b"], "expected TRANSPORT:HOST:PORT"),
    (["run", "--listen", "udp:127.0.0.1:99999", "--relay-to", "sip:a@b"], "expected TRANSPORT:HOST:PORT"),
    (["run", "--relay-to", "http://example.com"], "unsupported URI scheme"),
    (["run", "--routes", "/nonexistent/dir"], "not a directory"),
    (["run", "--relay-to", "sip:a@b", "--routes", "."], "not allowed with"),
    (["run"], "give --routes DIR or --relay-to URI"),
    (["run", "--relay-to", "sip:a@b", "--tcp-max-per-source", "0"], "must be greater than 0"),
    (["run", "--relay-to", "sip:a@b", "--tcp-idle-timeout", "soon"], "expected a number"),
])
def test_bad_arguments_exit_non_zero_with_a_clear_message(args, message):
    result = run(*args)
    assert result.returncode != 0
    assert message in result.stderr


def test_port_in_use_is_reported():
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    try:
        result = run("run", "--listen", f"udp:127.0.0.1:{port}", "--relay-to", "sip:127.0.0.1:5090")
    finally:
        busy.close()
    assert result.returncode == 1
    assert "address already in use" in result.stderr


def test_sigterm_stops_the_server_cleanly():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(CMD + ["run", "--listen", f"udp:127.0.0.1:{port}", "--relay-to", "sip:127.0.0.1:5090"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "listening on udp" in line:
                break
        assert any("listening on udp" in l for l in lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_routes_toml_at_start_is_reported_with_file_and_line(tmp_path):
    (tmp_path / "main.lua").write_text("function on_request(req) end\n")
    (tmp_path / "routes.toml").write_text('default = "main"\n[[match]]\nroute = "main"\nmethod = [1, 2\n')
    result = run("run", "--listen", "udp:127.0.0.1:0", "--routes", str(tmp_path))
    assert result.returncode == 2
    assert "routes.toml:5: TOML syntax" in result.stderr  # file:line, end of the unclosed array


def test_sigusr1_logs_route_status_with_the_last_error(tmp_path):
    (tmp_path / "main.lua").write_text("function on_request(req)\n  req:relay(\nend\n")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(CMD + ["run", "--listen", f"udp:127.0.0.1:{port}", "--routes", str(tmp_path)],
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("listening on udp" in l for l in lines):
            lines.append(proc.stderr.readline())
        proc.send_signal(signal.SIGUSR1)
        while time.monotonic() < deadline and not any("status:" in l for l in lines):
            lines.append(proc.stderr.readline())
        status = next(l for l in lines if "status:" in l)
        assert '"main"' in status and "main.lua" in status and '"line": 3' in status
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tcp_limit_flags_reach_the_transport():
    """--tcp-max-per-source 2: a third connection from one address is closed
    at once while the first two are served."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(CMD + ["run", "--listen", f"tcp:127.0.0.1:{port}", "--relay-to",
                                   "sip:127.0.0.1:5090", "--tcp-max-per-source", "2"],
                            stderr=subprocess.PIPE, text=True)
    conns = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if "listening on tcp" in proc.stderr.readline():
                break
        conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        conns[2].settimeout(5)
        try:
            refused = conns[2].recv(1) == b""
        except ConnectionResetError:
            refused = True
        assert refused
        options = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKc1\r\n"
                   "From: <sip:a@b>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: cli-tcp\r\nCSeq: 1 OPTIONS\r\n"
                   "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        conns[0].sendall(options)
        assert conns[0].recv(65535).startswith(b"SIP/2.0 200")
    finally:
        for conn in conns:
            conn.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_check_loads_every_route_and_names_each_problem_by_file_and_line(tmp_path):
    import subprocess
    import sys
    good = tmp_path / "good"
    good.mkdir()
    (good / "main.lua").write_text("function on_request(req) req:reply(200) end\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "main.lua").write_text("function on_request(req)\n  req:reply(200\nend\n")
    (bad / "other.py").write_text("def on_request(req)\n    pass\n")

    def check(folder):
        return subprocess.run([sys.executable, "-m", "host", "check", "--routes", str(folder)],
                              capture_output=True, text=True, timeout=60)

    ok = check(good)
    assert ok.returncode == 0 and ok.stdout.strip() == "main: ok (lua54)", ok.stdout + ok.stderr
    failed = check(bad)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stdout.splitlines()
    assert any(line.startswith(f"{bad / 'main.lua'}:3: ") for line in lines), lines
    assert any(line.startswith(f"{bad / 'other.py'}:1: SyntaxError") for line in lines), lines
    assert failed.stderr == ""     # no second copy of each problem in the log
    empty = check(tmp_path)       # holds only folders: no route
    assert empty.returncode == 1 and "no route" in empty.stdout
