"""host/logs.py: `--log-format json` lines, and the route, generation and
Call-ID that route log lines carry (Lua print, a Python route's log(), a
script failure) through a real registry and real runtimes."""

from __future__ import annotations

import io
import logging
import shutil
import sys

import orjson
import pytest
import trio

from host.logs import JsonFormatter, configure_logging
from host.routes.registry import RouteRegistry
from host.routes.runtimes_table import default_runtime_factory
from host.routes.verbs import ON_REQUEST


def record(message="hello %s", args=("world",), name="babelsip", level=logging.INFO, **extra):
    rec = logging.LogRecord(name, level, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_json_line_has_time_level_logger_message_and_the_fields_it_carries():
    line = orjson.loads(JsonFormatter().format(record(route="main", generation=2, call_id="c1@h")))
    assert line.pop("time").endswith("Z")
    assert line == {"level": "info", "logger": "babelsip", "message": "hello world",
                    "route": "main", "generation": 2, "call_id": "c1@h"}
    plain = orjson.loads(JsonFormatter().format(record(call_id=None)))
    assert "call_id" not in plain and "route" not in plain


def test_a_route_loggers_lines_carry_the_route_and_a_traceback_is_kept():
    line = orjson.loads(JsonFormatter().format(record(name="babelsip.route.lcr", message="x", args=())))
    assert line["route"] == "lcr"
    try:
        raise ValueError("broken \"quote\"\nand a newline")
    except ValueError:
        rec = logging.LogRecord("babelsip", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = JsonFormatter().format(rec)
    assert "\n" not in text                 # one object per line, whatever the message holds
    assert "ValueError: broken" in orjson.loads(text)["exception"]


def test_configure_logging_writes_one_json_object_per_line():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", "json", stream=stream)
        logging.getLogger("babelsip.test").info("one %d", 1, extra={"route": "main"})
        logging.getLogger("babelsip.test").debug("not shown")
        configure_logging("info", "text", stream=stream)
        logging.getLogger("babelsip.test").info("two")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    first, second = stream.getvalue().splitlines()
    assert orjson.loads(first)["message"] == "one 1" and orjson.loads(first)["route"] == "main"
    assert second.endswith(" INFO babelsip.test: two")


def event(call_id: str, user: str = "bob") -> dict:
    return {"hook": ON_REQUEST, "method": "INVITE", "ruri": f"sip:{user}@example.com", "ruri_user": user,
            "ruri_host": "example.com", "ruri_local": False, "call_id": call_id, "cseq": "1 INVITE",
            "from_uri": "sip:alice@example.com", "from_tag": "t", "to_uri": f"sip:{user}@example.com",
            "to_tag": "", "source_ip": "127.0.0.1", "source_port": 5070, "transport": "udp",
            "in_dialog": False, "vars": {}, "headers": [], "body": ""}


async def run_events(folder, events):
    registry = RouteRegistry(folder, runtime_factory=default_runtime_factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        for ev in events:
            await registry.select(ev).handle(ON_REQUEST, ev)
        nursery.cancel_scope.cancel()


def route_records(caplog, route):
    return [r for r in caplog.records if getattr(r, "route", None) == route]


async def test_a_lua_print_carries_route_generation_and_call_id(tmp_path, caplog):
    (tmp_path / "main.lua").write_text(
        'function on_request(req)\n'
        '  if req.ruri_user == "boom" then error("no such user") end\n'
        '  print("routing " .. req.ruri_user)\n'
        '  req:reply(200)\nend\n')
    caplog.set_level(logging.INFO)
    await run_events(tmp_path, [event("call-1@test"), event("call-2@test", "boom")])
    printed = [r for r in route_records(caplog, "main") if "routing bob" in r.getMessage()]
    assert [(r.generation, r.call_id) for r in printed] == [(1, "call-1@test")]
    assert printed[0].getMessage() == "main: routing bob"        # the text format names the route too
    failed = [r for r in route_records(caplog, "main") if "no such user" in r.getMessage()]
    assert [(r.levelno, r.generation, r.call_id) for r in failed] == [(logging.WARNING, 1, "call-2@test")]
    loaded = [r for r in route_records(caplog, "main") if "generation 1 loaded" in r.getMessage()]
    assert loaded and loaded[0].generation == 1
    line = orjson.loads(JsonFormatter().format(printed[0]))
    assert (line["route"], line["generation"], line["call_id"]) == ("main", 1, "call-1@test")


WORKER_ROUTES = {
    "python": ("main.py", "import sys\nfrom babelsip_sdk import log\n\n"
                          "def on_request(req):\n"
                          "    log('deciding for ' + req.ruri_user)\n"
                          "    print('to stderr', file=sys.stderr, flush=True)\n"
                          "    req.reply(200)\n"),
    "perl": ("main.pl", "sub on_request {\n    my ($req) = @_;\n"
                        "    $req->log('deciding for ' . $req->ruri_user);\n"
                        "    print STDERR \"to stderr\\n\";\n"
                        "    $req->reply(200);\n}\n1;\n"),
}


@pytest.mark.parametrize("language", sorted(WORKER_ROUTES))
async def test_a_worker_routes_log_lines_carry_its_route_and_call_id(tmp_path, caplog, monkeypatch, language):
    if language == "perl" and shutil.which("perl") is None:
        pytest.skip("perl is not installed")
    monkeypatch.setenv("BABELSIP_STATE_DIR", str(tmp_path / "state"))
    routes = tmp_path / "routes"
    routes.mkdir()
    name, source = WORKER_ROUTES[language]
    (routes / name).write_text(source)
    caplog.set_level(logging.INFO)
    await run_events(routes, [event("py-call@test")])
    mine = route_records(caplog, "main")
    logged = [r for r in mine if "deciding for bob" in r.getMessage()]
    assert [(r.generation, r.call_id) for r in logged] == [(1, "py-call@test")], [r.getMessage() for r in mine]
    with trio.move_on_after(5):   # stderr is read by its own task: give it its turn
        while not any("to stderr" in r.getMessage() for r in route_records(caplog, "main")):
            await trio.sleep(0.05)
    stderr = [r for r in route_records(caplog, "main") if "to stderr" in r.getMessage()]
    assert stderr and stderr[0].name == "babelsip.route.main"
