"""End to end: `babelsip run --config FILE` serving sipp calls, with JSON logs.

The file sets the listen addresses, a routes folder relative to the file
(the server runs from another directory), and `[log] format = "json"`; one
flag overrides the file's listen address. Every line the server writes must
be one JSON object, and the route's print() lines carry the route, its
generation and the Call-ID of the call that printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None,
                       reason="sipp is not installed (Debian package sip-tester; `make test` installs it)"),
]

CALLS = 5
REPO = Path(__file__).resolve().parents[2]


def write_config(folder: Path, *, file_port: int, uas_port: int) -> Path:
    conf = folder / "etc"
    (conf / "routes").mkdir(parents=True)
    (conf / "routes" / "main.lua").write_text(
        "function on_request(req)\n"
        '  print("relaying " .. req.method .. " for " .. req.ruri_user)\n'
        f'  req:relay("sip:" .. req.ruri_user .. "@{sipp.LOCALHOST}:{uas_port}")\n'
        "end\n")
    config = conf / "babelsip.toml"
    config.write_text(
        "[server]\n"
        f'listen = ["udp:{sipp.LOCALHOST}:{file_port}"]   # replaced by the --listen flag\n'
        'routes = "routes"                              # beside this file\n'
        "[registrar]\nmax_contacts = 3\n"
        '[log]\nformat = "json"\nlevel = "info"\n')
    return config


def test_a_server_started_with_config_serves_calls_and_logs_json(tmp_path):
    port, file_port, uas_port = sipp.free_port(), sipp.free_port(), sipp.free_port()
    config = write_config(tmp_path, file_port=file_port, uas_port=uas_port)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    argv = [sys.executable, "-m", "host", "run", "--config", str(config),
            "--listen", f"udp:{sipp.LOCALHOST}:{port}"]
    env = dict(os.environ, PYTHONPATH=str(REPO))   # host from this checkout, run from elsewhere
    with sipp.start_sipp_server("uas", tmp_path, name="uas", port=uas_port, timeout=60) as uas:
        with sipp.ProxyProcess(argv, [("udp", sipp.LOCALHOST, port)], cwd=elsewhere, env=env) as proxy:
            proxy.wait_ready(15)
            uac = sipp.run_sipp("uac", tmp_path, name="uac", port=sipp.free_port(),
                                remote=(sipp.LOCALHOST, port), calls=CALLS, rate=10, timeout=30,
                                extra=["-s", "carol"])
            uas_result = uas.stop()
            alive = proxy.alive()
        log = proxy.log()
    assert uac.returncode == 0 and uac.successful == CALLS, uac.summary() + "\n" + log[-3000:]
    assert uas_result.successful == CALLS and alive, uas_result.summary()

    lines = [json.loads(line) for line in log.splitlines() if line.strip()]   # each one JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    messages = [line["message"] for line in lines]
    assert any(f"listening on udp:{sipp.LOCALHOST}:{port}" in m for m in messages), messages
    assert not any(f":{file_port}" in m for m in messages)           # the flag replaced the file's
    printed = [line for line in lines if "relaying INVITE for carol" in line["message"]]
    assert len(printed) == CALLS, messages
    assert all(line["route"] == "main" and line["generation"] == 1 for line in printed)
    assert all(line["message"].startswith("main: ") for line in printed)   # the route by name in text too
    call_ids = {line["call_id"] for line in printed}
    assert len(call_ids) == CALLS and all(call_ids)                  # each call its own Call-ID
    loaded = [line for line in lines if "generation 1 loaded" in line["message"]]
    assert loaded and loaded[0]["route"] == "main"


def test_a_bad_config_stops_run_before_serving(tmp_path):
    port = sipp.free_port()
    config = write_config(tmp_path, file_port=port, uas_port=sipp.free_port())
    config.write_text(config.read_text() + "[tcp]\nidle_timeout = -1\n")
    result = subprocess.run([sys.executable, "-m", "host", "run", "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    line = len(config.read_text().splitlines())
    assert result.stderr.strip() == \
        f"babelsip: error: {config}:{line}: tcp.idle_timeout: '-1': must be greater than 0"
