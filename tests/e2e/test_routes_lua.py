"""End to end: sipp -> `babelsip run --routes DIR` with Lua routes -> sipp.

Each test writes its routes folder in tmp_path, starts its own uas(es), the
server and the uac(s) on fresh 127.0.0.1 ports, and stops them all on the way
out. Routes record-route and the sipps are route-set aware (uac_rr/uas_rr),
so ACK and BYE follow the dialog's route set and only initial requests reach
the route.

Covers issue 3's end-to-end list: a Lua route under load; hot reload during a
steady run (new calls follow the new version, none fail); a syntax error
saved mid-run (old version keeps serving, error logged with file and line);
runaway scripts (busy loop, the same loop in a coroutine, endless
allocation) answered with their fallback within the deadline while other
routes keep serving; routes.toml sending requests to different routes.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e import sipp
from tests.e2e import routes_support as rs

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None,
                       reason="sipp is not installed (Debian package sip-tester; `make test` installs it)"),
]

RELAY_LUA = """\
-- Relays every initial request to one uas, staying in the dialog's path.
function on_request(req)
  req:record_route()
  req:relay("sip:" .. req.ruri_user .. "@127.0.0.1:{port}")
end
"""


def relay_lua(port: int) -> str:
    return RELAY_LUA.format(port=port)


def test_lua_route_relays_500_calls(tmp_path):
    calls = 500
    with rs.uas(tmp_path, "uas") as (uas_port, uas):
        routes = rs.make_routes(tmp_path / "routes", {"main.lua": relay_lua(uas_port)})
        with rs.routes_server(routes, tmp_path) as server:
            uac = rs.run_uac(server, name="uac", calls=calls, rate=250)
            (uas_result,) = rs.stop_all(uas)
            rs.assert_clean(server, uac, calls, uas_result)
            assert uac.returncode == 0, server.why(uac)


def test_hot_reload_mid_run_moves_new_calls_to_the_new_target(tmp_path):
    # 600 calls at 100/s; after ~2 s main.lua is rewritten to relay to B.
    calls, rate = 600, 100
    with rs.uas(tmp_path, "uas-a") as (port_a, uas_a), rs.uas(tmp_path, "uas-b") as (port_b, uas_b):
        routes = rs.make_routes(tmp_path / "routes", {"main.lua": relay_lua(port_a)})
        with rs.routes_server(routes, tmp_path) as server:
            with rs.start_uac(server, name="uac", calls=calls, rate=rate) as uac:
                assert rs.wait_until(lambda: uas_a.snapshot().created >= 100, 10), server.why(uas_a.snapshot())
                edited = time.monotonic()
                rs.write_atomically(routes / "main.lua", relay_lua(port_b))
                assert server.wait_log(r"route main: generation 2 loaded", 5), server.why()
                # The swap reached the wire: B's counters (dumped every second) move.
                assert rs.wait_until(lambda: uas_b.snapshot().created > 0, 5), server.why(uas_b.snapshot())
                switched = time.monotonic() - edited
                # Let A's next dumps cover every call it got before the swap.
                time.sleep(2.5)
                a_after_swap = uas_a.snapshot().created
                assert uac.proc.poll() is None, "the run ended before the edit was seen: slow it down"
                result = uac.wait()
            a, b = rs.stop_all(uas_a, uas_b)
            rs.assert_clean(server, result, calls, a, b)
            assert b.successful > 0 and a.successful > 0, server.why(result, a, b)
            assert a.created == a_after_swap, (
                f"A got {a.created - a_after_swap} new calls after the swap\n" + server.why(result, a, b))
            assert switched < 3.0, f"new calls reached B only {switched:.2f} s after the edit"


def test_syntax_error_mid_run_keeps_the_old_version_serving(tmp_path):
    calls, rate = 400, 100
    broken = ("function on_request(req)\n"
              "  req:record_route()\n"
              "  req:relay(\"sip:nowhere@127.0.0.1:9\"\n"   # unclosed call: error at line 4
              "end\n")
    with rs.uas(tmp_path, "uas") as (uas_port, uas):
        routes = rs.make_routes(tmp_path / "routes", {"main.lua": relay_lua(uas_port)})
        with rs.routes_server(routes, tmp_path) as server:
            with rs.start_uac(server, name="uac", calls=calls, rate=rate) as uac:
                assert rs.wait_until(lambda: uas.snapshot().created >= 50, 10), server.why(uas.snapshot())
                rs.write_atomically(routes / "main.lua", broken)
                line = server.wait_log(r"route main: .*main\.lua:\d+: .*previous generation keeps serving", 5)
                assert line, "the syntax error was not reported\n" + server.why()
                result = uac.wait()
            assert not server.log_lines(r"route main: generation 2"), server.why(result)
            # Fixing the file afterwards is picked up as the next generation.
            rs.write_atomically(routes / "main.lua", relay_lua(uas_port) + "-- fixed\n")
            assert server.wait_log(r"route main: generation 2 loaded", 5), server.why()
            after = rs.run_uac(server, name="uac-after", calls=50, rate=50)
            (uas_result,) = rs.stop_all(uas)
    # Reported with the file and the line Lua blames (the `end` that does not
    # close the call, line 4), and the message.
    assert re.search(r"main\.lua:4: .*expected", line), line
    rs.assert_clean(server, result, calls)
    assert after.successful == 50 and after.failed == 0, server.why(after)
    assert uas_result.successful == calls + 50, server.why(result, after, uas_result)


RUNAWAY_ROUTES = {
    "spin.lua": "function on_request(req)\n  while true do end\nend\n",
    # The instruction hook must follow the loop into the coroutine (FACTS.md:
    # in Lua 5.2+ a new coroutine starts without the hook).
    "cospin.lua": ("function on_request(req)\n"
                   "  local co = coroutine.create(function() while true do end end)\n"
                   "  coroutine.resume(co)\n"
                   "  req:reply(200, \"escaped the budget\")\n"
                   "end\n"),
    "cowrap.lua": ("function on_request(req)\n"
                   "  coroutine.wrap(function() while true do end end)()\n"
                   "  req:reply(200, \"escaped the budget\")\n"
                   "end\n"),
    "hog.lua": ("function on_request(req)\n"
                "  local t, i = {}, 0\n"
                "  while true do\n"
                "    i = i + 1\n"
                "    t[i] = string.rep(\"x\", 1024) .. i\n"
                "  end\n"
                "end\n"),
}
RUNAWAY_DEADLINE = 0.2
FALLBACK = 503


def runaway_toml() -> str:
    parts = []
    for name in RUNAWAY_ROUTES:
        route = name.removesuffix(".lua")
        parts.append(f'[[match]]\nroute = "{route}"\nruri_user = "^{route}$"\n')
    for name in RUNAWAY_ROUTES:
        route = name.removesuffix(".lua")
        memory = "memory_mb = 8\n" if route == "hog" else ""
        parts.append(f"[routes.{route}]\ndeadline = {RUNAWAY_DEADLINE}\n"
                     f"fallback = {{ code = {FALLBACK}, retry_after = 5 }}\n{memory}")
    return "\n".join(parts)


def test_runaway_scripts_get_the_fallback_within_the_deadline_while_others_serve(tmp_path):
    normal_calls, runaway_calls = 100, 6
    # A final must arrive within this (sipp fails the call otherwise): the
    # deadline, plus the time other runaway events hold the event loop.
    within = 1.0
    scenario = rs.expect_final_scenario(tmp_path, FALLBACK, within=within)
    with rs.uas(tmp_path, "uas") as (uas_port, uas):
        routes = rs.make_routes(tmp_path / "routes", {
            "main.lua": relay_lua(uas_port), **RUNAWAY_ROUTES, "routes.toml": runaway_toml()})
        with rs.routes_server(routes, tmp_path) as server:
            scenarios = {name.removesuffix(".lua"): scenario for name in RUNAWAY_ROUTES}
            results, normal_result, after, uas_result = rs.run_beside_normal_calls(
                server, uas, scenarios, calls_each=runaway_calls, normal_calls=normal_calls)

    for route, result in results.items():
        assert result.successful == runaway_calls and result.failed == 0, (
            f"route {route}: every call must get {FALLBACK} within {within} s\n" + server.why(result))
        average = rs.response_time_ms(result)
        assert average is not None and average < 1000 * (RUNAWAY_DEADLINE + 0.2), (
            f"route {route}: average time to the fallback {average} ms\n" + server.why(result))
    rs.assert_clean(server, normal_result, normal_calls)
    assert after.successful == 50 and after.failed == 0, server.why(after)
    assert uas_result.successful == normal_calls + 50, server.why(normal_result, after, uas_result)
    # Why each one was stopped is in the log, with the script's file and line.
    assert server.log_lines(r"route spin#\d+ on_request: .*spin\.lua:2: .*\[(budget|timeout)\]"), server.why()
    assert server.log_lines(r"route cospin#\d+ on_request: .*cospin\.lua:\d+: .*\[(budget|timeout)\]"), server.why()
    assert server.log_lines(r"route cowrap#\d+ on_request: .*cowrap\.lua:\d+: .*\[(budget|timeout)\]"), server.why()
    # (An out-of-memory error comes without a line: Lua 5.4 does not run the
    # message handler for memory errors, where the line is taken.)
    assert server.log_lines(r"route hog#\d+ on_request: .*hog\.lua(:\d+)?: .*\[memory\]"), server.why()


def test_routes_toml_sends_requests_to_different_routes(tmp_path):
    denied_calls, relayed_calls = 30, 100
    deny = 'function on_request(req)\n  req:reply(403, "Forbidden")\nend\n'
    # Blocked users to `deny`, other INVITEs to `main`, anything else to `deny`.
    toml = ('default = "deny"\n\n'
            '[[match]]\nroute = "deny"\nruri_user = "^(blocked|spam)"\n\n'
            '[[match]]\nroute = "main"\nmethod = "INVITE"\n')
    refused = rs.expect_final_scenario(tmp_path, 403)
    with rs.uas(tmp_path, "uas") as (uas_port, uas):
        routes = rs.make_routes(tmp_path / "routes", {
            "main.lua": relay_lua(uas_port), "deny.lua": deny, "routes.toml": toml})
        with rs.routes_server(routes, tmp_path) as server:
            with rs.start_uac(server, name="uac-relayed", calls=relayed_calls, rate=50,
                              service="alice") as relayed, \
                 rs.start_uac(server, name="uac-blocked", scenario=str(refused), calls=denied_calls,
                              rate=20, service="blocked42") as blocked:
                blocked_result, relayed_result = blocked.wait(), relayed.wait()
            spam_result = rs.run_uac(server, name="uac-spam", scenario=str(refused), calls=10,
                                     rate=20, service="spam")
            (uas_result,) = rs.stop_all(uas)
    assert blocked_result.successful == denied_calls and blocked_result.failed == 0, server.why(blocked_result)
    assert spam_result.successful == 10 and spam_result.failed == 0, server.why(spam_result)
    rs.assert_clean(server, relayed_result, relayed_calls, uas_result)
