"""Every SDK, the Lua runtime and PROTOCOL.md against the one contract table.

Python, Perl and Java are asked what they offer (each runner's
--dump-contract); the Lua runtime runs a route that reports which verb
functions and fields `req` has; PROTOCOL.md's tables are parsed. The tests
at the end feed doctored dumps and documents to the same checks, so each
check is shown to fail for what its message names.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from host.routes import contract, verbs
from runtimes.jsonline import calls

from tests.contract.checks import SERVICE_OBJECTS, camel, check_dump, check_protocol, snake

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk"
PROTOCOL = SDK / "PROTOCOL.md"


def _run(cmd, **env) -> dict:
    result = subprocess.run(cmd, capture_output=True, timeout=60, cwd=ROOT,
                            env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **env})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


@functools.cache
def python_dump() -> dict:
    return _run([sys.executable, "-m", "babelsip_sdk.runner", "--dump-contract"],
                PYTHONPATH=str(SDK / "python"))


@functools.cache
def perl_dump() -> dict:
    return _run(["perl", "-I", str(SDK / "perl"), str(SDK / "perl" / "runner.pl"), "--dump-contract"])


def java_dump(tmp_path_factory) -> dict:
    classes = tmp_path_factory.mktemp("java-contract")
    sources = sorted(str(p) for p in (SDK / "java" / "babelsip").glob("*.java"))
    subprocess.run(["javac", "-J-XX:TieredStopAtLevel=1", "-nowarn", "-encoding", "UTF-8",
                    "-d", str(classes), *sources], check=True, capture_output=True, timeout=300)
    return _run(["java", "-XX:TieredStopAtLevel=1", "-cp", str(classes), "babelsip.Runner",
                 "--dump-contract"])


# ------------------------------------------------------------- the table itself

def test_contract_json_is_generated_from_the_table():
    committed = contract.JSON_PATH.read_text(encoding="utf-8")
    assert committed == contract.render(), "sdk/contract.json is stale: python -m host.routes.contract --write"


def test_stale_contract_json_is_reported(tmp_path, monkeypatch, capsys):
    stale = json.loads(contract.render())
    stale["verbs"].pop()
    path = tmp_path / "contract.json"
    path.write_text(json.dumps(stale))
    monkeypatch.setattr(contract, "JSON_PATH", path)
    assert contract.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert contract.main(["--write"]) == 0 and contract.main(["--check"]) == 0


def test_python_sdk_reads_the_generated_json():
    # The SDK's copy is the generated file itself (a link in the source tree).
    from babelsip_sdk import contract as sdk_contract
    assert sdk_contract.PATH.read_bytes() == contract.JSON_PATH.read_bytes()


def test_host_verbs_derive_from_the_table():
    assert verbs.HOOKS == contract.HOOKS
    assert list(verbs.VERBS) == [v.name for v in contract.VERBS]
    for v in contract.VERBS:
        host = verbs.VERBS[v.name]
        assert (host.kind, host.hooks, host.params) == (v.kind, frozenset(v.hooks),
                                                          tuple(p.spec for p in v.params))
        assert callable(getattr(verbs.Recorder, v.name, None)), f"Recorder has no method for verb {v.name!r}"


def test_optional_params_come_last():
    # Recorder.apply and every SDK drop trailing optional arguments.
    for row in (*contract.VERBS, *contract.HOST_CALLS):
        flags = [p.optional for p in row.params]
        assert flags == sorted(flags), getattr(row, "name", getattr(row, "op", None))


def test_host_serves_every_host_call_of_the_table():
    assert sorted(calls.OPS) == sorted(c.op for c in contract.HOST_CALLS)


# ------------------------------------------------------------- the SDKs

def test_python_sdk_offers_the_contract():
    assert check_dump(python_dump(), snake) == []


@pytest.mark.skipif(shutil.which("perl") is None, reason="no perl")
def test_perl_sdk_offers_the_contract():
    assert check_dump(perl_dump(), snake) == []


@pytest.mark.skipif(shutil.which("javac") is None, reason="no JDK")
def test_java_sdk_offers_the_contract(tmp_path_factory):
    assert check_dump(java_dump(tmp_path_factory), camel) == []


def test_protocol_md_tables_match_the_contract():
    assert check_protocol(PROTOCOL.read_text(encoding="utf-8")) == []


# ------------------------------------------------------------- Lua

_VALUE = [f for f in contract.FIELDS if f.access == contract.VALUE]


def _lua_event(hook):
    """An event whose every value field holds a value no other field has."""
    ev = {}
    for i, f in enumerate(contract.FIELDS):
        ev[f.name] = {"string": f"<{f.name}>", "integer": 1000 + i, "boolean": True,
                      "list": [["X-Probe", "probe"]], "object": {}}[f.type]
    ev["hook"] = hook
    ev["reply"] = {"code": 486, "reason": "Busy Here", "headers": [["X-Reply", "r"]]}
    return ev


_LUA_ROUTE = """
local VERBS = {%(verbs)s}
local FIELDS = {%(fields)s}
local CALLS = {%(calls)s}   -- {object, method} of each host call
-- Per-call variables keep only flat tables of scalars: keys say what was read.
local function report(req, reply)
  local out = {}
  for _, name in ipairs(VERBS) do out["verb:" .. name] = type(req[name]) end
  for _, name in ipairs(FIELDS) do out["field:" .. name] = req[name] end
  for _, c in ipairs(CALLS) do
    out["call:" .. c[1] .. "." .. c[2]] = type(req[c[1]][c[2]])
  end
  out.header = req:header("x-probe")
  out.headers = #req:headers("X-Probe")
  out.vars = type(req.vars)
  if reply then
    out.reply = table.concat({reply.code, reply.reason, reply:header("x-reply")}, " ")
  end
  req.vars = out
end
function on_request(req) report(req) end
function on_failure(req, reply) report(req, reply) end
"""


@functools.cache
def lua_report() -> dict:
    try:
        from host.routes.runtime import RuntimeSpec
    except ImportError:  # before the Runtime interface moved to the host side (issue 8)
        from runtimes.base import RuntimeSpec
    from runtimes.lua import LuaRuntime

    async def collect(path):
        rt = LuaRuntime(RuntimeSpec(route=path.stem, path=path, runtime="lua54"))
        await rt.start()
        try:
            return {hook: (await rt.handle(hook, _lua_event(hook))).vars
                    for hook in (contract.ON_REQUEST, contract.ON_FAILURE)}
        finally:
            await rt.aclose()

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "contract.lua"
        path.write_text(_LUA_ROUTE % {
            "verbs": ", ".join(f'"{v.name}"' for v in contract.VERBS),
            "fields": ", ".join(f'"{f.name}"' for f in _VALUE),
            "calls": ", ".join('{"%s", "%s"}' % _lua_call(c.op) for c in contract.HOST_CALLS)})
        return trio.run(collect, path)


def _lua_call(op):
    """(object, method) a Lua route calls an op by: req.store:get, req.registrar:lookup."""
    service, _, method = op.partition(".")
    return SERVICE_OBJECTS[service], method


@pytest.mark.parametrize("op", [c.op for c in contract.HOST_CALLS])
def test_lua_req_has_host_call(op):
    obj, method = _lua_call(op)
    got = lua_report()[contract.ON_REQUEST].get(f"call:{obj}.{method}")
    assert got == "function", f"lua: host call {op!r} missing (req.{obj}:{method} is {got})"


@pytest.mark.parametrize("name", [v.name for v in contract.VERBS])
def test_lua_req_has_verb(name):
    got = lua_report()[contract.ON_REQUEST].get("verb:" + name)
    assert got == "function", f"lua: verb {name!r} missing (req:{name} is {got})"


_LUA_GAPS: dict[str, str] = {}   # field -> why Lua lacks it (strict xfail); none today


@pytest.mark.parametrize("name", [
    pytest.param(f.name, marks=pytest.mark.xfail(strict=True, reason=_LUA_GAPS[f.name]))
    if f.name in _LUA_GAPS else f.name for f in _VALUE])
def test_lua_req_has_field(name):
    ev = _lua_event(contract.ON_REQUEST)
    got = lua_report()[contract.ON_REQUEST].get("field:" + name)
    assert got == ev[name], f"lua: field {name!r} reads {got!r}, the event holds {ev[name]!r}"


def test_lua_headers_vars_and_reply():
    req, fail = lua_report()[contract.ON_REQUEST], lua_report()[contract.ON_FAILURE]
    assert (req["header"], req["headers"], req["vars"]) == ("probe", 1, "table"), "lua: headers/vars"
    assert "reply" not in req
    assert fail["reply"] == "486 Busy Here r", "lua: field 'reply' (the hook's second argument)"


# ------------------------------------------------------------- the checks can fail

def _doctored(edit):
    dump = copy.deepcopy(python_dump())
    edit(dump)
    return check_dump(dump, snake)


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["verbs"].pop("record_route"), "python: verb 'record_route' missing"),
    (lambda d: d["verbs"].__setitem__("recordroute", d["verbs"].pop("record_route")),
     "python: verb 'record_route' missing"),
    (lambda d: d["verbs"]["set_ruri"].__setitem__("sends", "set_uri"),
     "python: verb method 'set_ruri' sends 'set_uri'"),
    (lambda d: d["verbs"]["drop"]["hooks"].remove("on_reply"), "python: verb 'drop' allowed in"),
    (lambda d: d["verbs"]["set_ruri"].__setitem__("decision", True), "python: verb 'set_ruri' is a decision"),
    (lambda d: d["verbs"].__setitem__("teleport", {"sends": "teleport", "hooks": [], "decision": True}),
     "python: offers verb method 'teleport'"),
    (lambda d: d["fields"].pop("ruri_host"), "python: field 'ruri_host' missing"),
    (lambda d: d["fields"].__setitem__("ruri_user", ["ruri_usr"]), "python: accessor 'ruri_user' reads ['ruri_usr']"),
    (lambda d: d["fields"].__setitem__("ruri_user", ["ruri_usr"]), "reads event key 'ruri_usr'"),
    (lambda d: d["fields"].pop("reply_info"), "python: field 'reply' missing (no accessor 'reply_info')"),
    (lambda d: d["fields"].__setitem__("headers", []), "python: field 'headers': accessor 'headers'"),
    (lambda d: d["store"].pop("incr"), "python: host call 'kv.incr' missing"),
    (lambda d: d["store"].__setitem__("delete", "kv.del"), "python: store method 'delete' calls 'kv.del'"),
    (lambda d: d["registrar"].pop("lookup"),
     "python: host call 'registrar.lookup' missing (no registrar method 'lookup')"),
    (lambda d: d["dialog"].__setitem__("count", "dialog.size"),
     "python: dialog method 'count' calls 'dialog.size', not 'dialog.count'"),
    (lambda d: d["dialog"].__setitem__("active", "dialog.active"),
     "python: dialog method 'active' calls 'dialog.active', not a host call"),
    (lambda d: d["fields"].pop("dialog"), "python: host call 'dialog.count': the request has no accessor 'dialog'"),
    (lambda d: d["fields"].pop("auth_user"), "python: field 'auth_user' missing"),
    (lambda d: d.__setitem__("hooks", ["on_request"]), "python: hooks are"),
])
def test_sdk_check_names_what_is_wrong(edit, expected):
    problems = _doctored(edit)
    assert any(expected in p for p in problems), problems


def test_camel_case_idiom_is_checked_by_its_names():
    # Java's dump names methods in camelCase: read as snake_case it must fail.
    dump = copy.deepcopy(python_dump())
    dump["verbs"] = {camel(k): v for k, v in dump["verbs"].items()}
    dump["fields"] = {camel(k): v for k, v in dump["fields"].items()}
    assert check_dump(dump, camel) == []
    assert "python: verb 'set_ruri' missing (no verb method 'set_ruri')" in check_dump(dump, snake)


def test_a_new_host_service_needs_its_rule(monkeypatch):
    row = contract.HostCallSpec("presence.status", (contract.Param("aor", "string"),), "string", "")
    monkeypatch.setattr(contract, "HOST_CALLS", (*contract.HOST_CALLS, row))
    assert "python: no rule yet for checking host call 'presence.status'" in check_dump(python_dump())
    assert "PROTOCOL.md: host call 'presence.status' missing from the table of §5" in check_protocol(
        PROTOCOL.read_text(encoding="utf-8"))


@pytest.mark.parametrize("old, new, expected", [
    ("| `kv.incr`   |", "| `kv.inc`    |", "PROTOCOL.md: host call 'kv.incr' missing"),
    ("`[key, delta?, ttl?]`", "`[key, delta, ttl?]`", "PROTOCOL.md: host call 'kv.incr' args"),
    ("| `record_route` | — | edit | on_request |", "| `record_route` | — | edit | all |",
     "PROTOCOL.md: verb 'record_route' allowed in 'all'"),
    ("| `set_ruri` | `uri` | edit |", "| `set_uri` | `uri` | edit |", "PROTOCOL.md: verb 'set_ruri' missing"),
    ("| `set_ruri` | `uri` | edit |", "| `set_uri` | `uri` | edit |", "PROTOCOL.md: verb 'set_uri' in §7"),
    ("| `drop` | — | decision |", "| `drop` | — | edit |", "PROTOCOL.md: verb 'drop' kind is 'edit'"),
    ("`reply` | `code, reason?, headers?`", "`reply` | `code, reason?`", "PROTOCOL.md: verb 'reply' args"),
    ("| `body` | string |", "| `payload` | string |", "PROTOCOL.md: field 'body' missing"),
    ("| `cseq` | integer |", "| `cseq` | string |", "PROTOCOL.md: field 'cseq' has type 'string'"),
])
def test_protocol_check_names_what_is_wrong(old, new, expected):
    text = PROTOCOL.read_text(encoding="utf-8")
    assert old in text, "the doctoring no longer matches PROTOCOL.md"
    problems = check_protocol(text.replace(old, new))
    assert any(expected in p for p in problems), problems
