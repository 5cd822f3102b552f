"""End to end: the dialog services of a Lua route, with sipp on both sides.

- `req:limit_duration(2)`: a caller that never hangs up
  (scenarios/services_uac_wait_bye.xml) and the callee (the route-set aware
  uas) each get a BYE from the proxy about 2 s after the call is answered,
  and the proxy reports the call ended (its SIGUSR1 status: timed out, no
  dialog active).
- `req:add_profile("caller", req.from_uri)` with
  `req.dialog:count("caller", req.from_uri) >= 1 -> 486`: one call at a time
  per caller; a second concurrent call from the same caller is refused 486
  (scenarios/services_uac_expect_486.xml), another caller is not, and once
  the first call ended a new one from the first caller goes through.
"""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

from tests.e2e import routes_support as rs
from tests.e2e import sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None,
                       reason="sipp is not installed (Debian package sip-tester; `make test` installs it)"),
]

LIMIT = 2          # seconds: the route's limit_duration
SIPP_RUN_TIMEOUT = 20.0

LIMITED_ROUTE = """
function on_request(req)
  req:record_route()
  {cap}
  req:limit_duration({limit})
  req:add_profile("caller", req.from_uri)
  req:relay("sip:" .. req.ruri_user .. "@127.0.0.1:{port}")
end
"""
CAP = """if req.method == "INVITE" and req.dialog:count("caller", req.from_uri) >= 1 then
    req:reply(486)
    return
  end"""


def route(uas_port: int, cap: bool) -> str:
    return LIMITED_ROUTE.format(cap=CAP if cap else "", limit=LIMIT, port=uas_port)


def start_caller(server: rs.RoutesServer, scenario: str, caller: str) -> sipp.SippProcess:
    return sipp.start_sipp(scenario, server.workdir, name=f"{scenario}-{caller}-{uuid.uuid4().hex[:6]}",
                           port=sipp.free_port(), remote=(sipp.LOCALHOST, server.port), calls=1,
                           timeout=SIPP_RUN_TIMEOUT,
                           extra=rs.STATS_EVERY + rs.ABORT_UNEXPECTED
                           + ["-s", "callee", "-key", "caller", caller])


def status(server: rs.RoutesServer) -> dict:
    """The server's status as it logs it on SIGUSR1 (host/cli.py)."""
    mark = server.proxy.log_mark()
    server.proxy.proc.send_signal(signal.SIGUSR1)
    line = rs.wait_until(lambda: [l for l in server.proxy.log_since(mark) if "status: {" in l], 5.0)
    assert line, server.why()
    return json.loads(line[0].split("status: ", 1)[1])


def bye_delay_ms(result: sipp.SippResult) -> float | None:
    return rs.response_time_ms(result, "bye")


def test_limit_duration_ends_the_call_with_a_bye_each_way(tmp_path):
    with rs.uas(tmp_path, "uas") as (uas_port, uas):
        routes = rs.make_routes(tmp_path / "routes", {"main.lua": route(uas_port, cap=False)})
        with rs.routes_server(routes, tmp_path) as server:
            started = time.monotonic()
            with start_caller(server, "services_uac_wait_bye", "alice") as uac:
                result = uac.wait()
            elapsed = time.monotonic() - started
            (uas_result,) = rs.stop_all(uas)
            # The caller got its BYE (else its recv times out and the call fails) ...
            assert result.successful == 1 and result.failed == 0, server.why(result, uas_result)
            # ... about LIMIT seconds after the 200, not at once and not much later.
            delay = bye_delay_ms(result)
            assert delay is not None and LIMIT * 1000 - 100 <= delay <= LIMIT * 1000 + 2000, \
                (delay, server.why(result))
            assert elapsed < LIMIT + 4, (elapsed, server.why(result))
            # The callee got one too and answered it (the uas completes on BYE).
            assert uas_result.successful == 1 and uas_result.failed == 0, server.why(result, uas_result)
            state = status(server)
            assert state["core"]["dialogs_timed_out"] == 1, state
            assert state["dialogs"]["active"] == 0, state
            assert state["dialogs"]["errors"] == 0, state


def test_per_caller_cap_refuses_a_second_concurrent_call(tmp_path):
    with rs.uas(tmp_path, "uas") as (uas_port, uas):
        routes = rs.make_routes(tmp_path / "routes", {"main.lua": route(uas_port, cap=True)})
        with rs.routes_server(routes, tmp_path) as server:
            with start_caller(server, "services_uac_wait_bye", "alice") as first:
                # Wait until the first call is up (the uas saw its INVITE and answered).
                up = rs.wait_until(lambda: status(server)["dialogs"]["active"] >= 1, 5.0, interval=0.1)
                assert up, server.why(first.snapshot())
                # The same caller again while the first call lasts: 486.
                with start_caller(server, "services_uac_expect_486", "alice") as second:
                    busy = second.wait()
                # Another caller is not counted against alice.
                with start_caller(server, "services_uac_wait_bye", "bob") as other:
                    other_result = other.wait()
                first_result = first.wait()
            assert busy.successful == 1 and busy.failed == 0, server.why(busy, first_result)
            assert other_result.successful == 1, server.why(other_result)
            assert first_result.successful == 1, server.why(first_result)
            # Ended (by its limit): alice may call again.
            with start_caller(server, "services_uac_wait_bye", "alice") as again:
                again_result = again.wait()
            assert again_result.successful == 1 and again_result.failed == 0, server.why(again_result)
            (uas_result,) = rs.stop_all(uas)
            # The uas answered exactly the three calls that were let through.
            assert uas_result.successful == 3 and uas_result.failed == 0, server.why(uas_result)
            state = status(server)
            assert state["dialogs"]["active"] == 0, state
