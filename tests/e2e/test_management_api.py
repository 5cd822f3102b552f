"""The management API against a real server (`babelsip run` on the
quickstart routes) with real traffic: two phones registered by sipp with
digest authentication, one call in progress between them. Every method is
asked over the UNIX socket (as `babelsip ctl` does) or over HTTP; /metrics
is parsed with prometheus_client's parser and checked against the traffic
sent; the status page is loaded in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import routes_support as rs
from tests.e2e import sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None,
                       reason="sipp is not installed (Debian package sip-tester; `make test` installs it)"),
]

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "routes"
REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-" + uuid.uuid4().hex


class Api:
    def __init__(self, workdir: Path, socket_path: Path, http_port: int, sip_port: int, proxy):
        self.workdir, self.socket_path, self.http_port, self.port = workdir, socket_path, http_port, sip_port
        self.proxy = proxy

    def call(self, method, *params):
        """One JSON-RPC request over the UNIX socket; the whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.socket_path))
            s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                  "params": list(params)}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                assert chunk, "the server closed the socket without answering"
                data += chunk
        return json.loads(data)

    def result(self, method, *params):
        answer = self.call(method, *params)
        assert "result" in answer, answer
        return answer["result"]

    def http(self, path, *, data=None, token=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data,
                                     method="POST" if data is not None else "GET")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def ctl(self, *args, env_socket=True):
        env = {**os.environ, "BABELSIP_STATE_DIR": str(self.workdir)} if env_socket else os.environ
        return subprocess.run([sys.executable, "-m", "host", "ctl", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mgmt")
    routes = workdir / "routes"
    shutil.copytree(QUICKSTART, routes)
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    port, http_port = sipp.free_port(), sipp.free_port()
    args = ["run", "--listen", f"udp:{sipp.LOCALHOST}:{port}", "--routes", str(routes),
            "--http", f"127.0.0.1:{http_port}", "--http-token-file", str(token_file)]
    # PYTHONPATH: this checkout's host, whatever the venv's console script points at.
    env = {**os.environ, "BABELSIP_STATE_DIR": str(workdir), "PYTHONPATH": str(REPO)}
    with sipp.start_babelsip(args, env=env, cwd=workdir) as proxy:
        socket_path = workdir / "babelsip.ctl"
        assert rs.wait_until(socket_path.exists, 5), proxy.log()[-3000:]
        yield Api(workdir, socket_path, http_port, port, proxy)


def register(api: Api, user: str, contact_port: int) -> None:
    result = sipp.run_sipp("services_register_auth", api.workdir, name=f"reg-{user}-{uuid.uuid4().hex[:6]}",
                           port=sipp.free_port(), remote=(sipp.LOCALHOST, api.port), calls=1, timeout=15,
                           extra=["-s", user, "-au", user, "-ap", "secret",
                                  "-key", "contact_port", str(contact_port)] + rs.ABORT_UNEXPECTED)
    assert result.successful == 1, result.summary()


@pytest.fixture(scope="module")
def traffic(api):
    """alice and bob registered; alice calling bob, answered, waiting for a BYE."""
    with rs.uas(api.workdir, "bob-uas") as (bob_port, bob):
        register(api, "alice", sipp.free_port())
        register(api, "bob", bob_port)
        caller = sipp.start_sipp(str(sipp.SCENARIOS / "services_uac_wait_bye.xml"), api.workdir,
                                 name="alice-calls", port=sipp.free_port(),
                                 remote=(sipp.LOCALHOST, api.port), calls=1, timeout=30,
                                 extra=["-s", "bob", "-key", "caller", "alice"] + rs.STATS_EVERY)
        try:
            confirmed = rs.wait_until(lambda: api.result("dlg.list")["confirmed"] == 1, 8)
            assert confirmed, api.proxy.log()[-3000:]
            yield {"caller": caller, "bob": bob}
        finally:
            caller.kill() if caller.proc.poll() is None else None


def test_core_methods(api):
    assert api.result("core.version")["name"] == "babelsip"
    up = api.result("core.uptime")
    assert 0 <= up["uptime"] < 600 and up["now"] >= up["up_since"]
    info = api.result("core.info")
    assert info["listen"] == [f"udp:127.0.0.1:{api.port}"] and info["pid"] == api.proxy.pid
    assert "routes.reload" in api.result("system.listMethods")
    assert api.call("no.such")["error"]["code"] == -32601
    assert api.call("ul.lookup")["error"]["code"] == -32602


def test_registrations_call_and_counters(api, traffic):
    dump = api.result("ul.dump")
    assert dump["count"] == 2 and dump["contacts"] == 2, dump
    bob = api.result("ul.lookup", "sip:bob@127.0.0.1")
    assert bob["aor"] == "sip:bob@127.0.0.1" and len(bob["contacts"]) == 1
    assert api.call("ul.lookup", "sip:carol@127.0.0.1")["error"]["code"] == -32001
    dialogs = api.result("dlg.list")
    (call,) = dialogs["dialogs"]
    assert call["state"] == "confirmed" and call["from"].startswith("sip:alice@")
    stats = api.result("stats.get_statistics", "core:")
    assert stats["core:requests_register"] == 4 and stats["core:requests_invite"] == 1, stats
    assert set(api.result("stats.get_statistics", "core:requests_invite")) == {"core:requests_invite"}
    tm = api.result("tm.stats")
    assert tm["created"] >= 5 and tm["client_created"] >= 1
    (main,) = api.result("routes.list")["routes"]
    assert main["route"] == "main" and main["state"] == "ok" and main["events"] >= 5
    assert main["latency"]["count"] == main["events"]
    workers = api.result("routes.workers")["routes"]["main"]
    assert workers["runtime"] == "lua54"
    assert api.result("store.get", "nothing-here") == {"key": "nothing-here", "value": None}


def test_metrics_match_the_traffic(api, traffic):
    status, body = api.http("/metrics")
    assert status == 200
    got = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            got[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert got[("babelsip_sip_requests_received_total", (("method", "REGISTER"),))] == 4
    assert got[("babelsip_sip_requests_received_total", (("method", "INVITE"),))] == 1
    assert got[("babelsip_registered_contacts", ())] == 2
    assert got[("babelsip_registered_aors", ())] == 2
    assert got[("babelsip_dialogs", (("state", "confirmed"),))] == 1
    assert got[("babelsip_registrar_requests_total", (("outcome", "saved"),))] == 2
    assert got[("babelsip_route_up", (("route", "main"),))] == 1
    decided = sum(v for (name, labels), v in got.items()
                  if name == "babelsip_route_decisions_total" and ("route", "main") in labels)
    assert decided == got[("babelsip_route_events_total", (("route", "main"),))] >= 5
    assert got[("babelsip_worker_processes", ())] == 1
    assert got[("babelsip_route_event_duration_seconds_count", (("route", "main"),))] >= 5


def test_http_needs_the_token(api):
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "core.uptime"}).encode()
    assert api.http("/RPC", data=body)[0] == 401
    assert api.http("/RPC", data=body, token="wrong")[0] == 401
    status, reply = api.http("/RPC", data=body, token=TOKEN)
    assert status == 200 and json.loads(reply)["id"] == 7
    assert api.http("/RPC")[0] == 405
    assert api.http("/nowhere")[0] == 404
    wrong = api.ctl("--url", f"http://127.0.0.1:{api.http_port}", "--token", "wrong", "core.info")
    assert wrong.returncode == 2 and "refused the token" in wrong.stderr


def test_ctl_tables_and_json(api, traffic):
    table = api.ctl("ul.dump")
    assert table.returncode == 0, table.stderr
    assert "sip:bob@127.0.0.1" in table.stdout and "CONTACT" in table.stdout
    as_json = api.ctl("--json", "routes.list")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["routes"][0]["route"] == "main"
    over_http = api.ctl("--url", f"http://127.0.0.1:{api.http_port}", "--token", TOKEN, "core.info")
    assert over_http.returncode == 0 and f"udp:127.0.0.1:{api.port}" in over_http.stdout
    missing = api.ctl("--socket", str(api.workdir / "absent.ctl"), "core.info")
    assert missing.returncode == 2 and "no server is running" in missing.stderr
    error = api.ctl("ul.lookup", "sip:nobody@127.0.0.1")
    assert error.returncode == 1 and "-32001" in error.stderr


def test_status_page_in_headless_chromium(api, traffic, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package chromium; `make test-deps` installs it)")
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000", "--dump-dom",
         f"http://127.0.0.1:{api.http_port}/"], capture_output=True, text=True, timeout=60)
    dom = proc.stdout
    assert '<tr data-route="main">' in dom, proc.stderr[-2000:]
    assert '<b id="reg-aors">2</b>' in dom and '<b id="reg-contacts">2</b>' in dom, dom[:3000]
    assert '<b id="calls-active">1</b>' in dom
    assert "sip:alice@127.0.0.1" in dom and "sip:bob@127.0.0.1" in dom


def test_reload_with_a_broken_file_keeps_the_old_generation(api):
    route = api.workdir / "routes" / "main.lua"
    good = route.read_text()
    before = api.result("routes.list")["routes"][0]["generation"]
    try:
        rs.write_atomically(route, good + "\nfunction broken(\n")
        outcome = api.result("routes.reload", "main")
        assert outcome["loaded"] is False
        error = outcome["routes"]["main"]["error"]
        assert error["file"].endswith("main.lua") and error["line"] is not None, outcome
        assert outcome["routes"]["main"]["generation"] == before
        (main,) = api.result("routes.list")["routes"]
        assert main["state"] == "ok" and main["generation"] == before
        assert main["last_error"]["where"].startswith(str(route))
        # Still serving: an unknown user of this server gets the route's 404.
        scenario = rs.expect_final_scenario(api.workdir, 404)
        result = sipp.run_sipp(str(scenario), api.workdir, name="after-broken", port=sipp.free_port(),
                               remote=(sipp.LOCALHOST, api.port), calls=1, timeout=15,
                               extra=["-s", "nobody"])
        assert result.successful == 1, result.summary()
    finally:
        rs.write_atomically(route, good)
    outcome = api.result("routes.reload", "main")
    assert outcome["loaded"] is True and outcome["routes"]["main"]["generation"] > before


def test_dlg_end_hangs_up_both_sides_then_ul_rm(api, traffic):
    (call,) = api.result("dlg.list")["dialogs"]
    assert api.result("dlg.end", call["id"]) == {"id": call["id"], "ended": True}
    caller = traffic["caller"].wait(timeout=15)
    assert caller.successful == 1, caller.summary()      # it got its BYE
    assert rs.wait_until(lambda: traffic["bob"].snapshot().successful == 1, 5), \
        traffic["bob"].snapshot().summary()
    assert rs.wait_until(lambda: api.result("dlg.list")["count"] == 0, 3)
    assert api.call("dlg.end", call["id"])["error"]["code"] == -32001
    bob = api.result("ul.lookup", "sip:bob@127.0.0.1")["contacts"][0]["contact"]
    assert api.result("ul.rm_contact", "sip:bob@127.0.0.1", bob)["removed"] == 1
    assert api.result("ul.rm", "sip:alice@127.0.0.1")["removed"] == 1
    assert api.result("ul.dump")["count"] == 0
