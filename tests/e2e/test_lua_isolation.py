"""End to end: no Lua route can keep the server from serving others (issue 7 §3).

Each test runs `babelsip run --routes DIR` on 127.0.0.1 and, while a hostile
or slow Lua route works, probes two things every PROBE_EVERY seconds: an
OPTIONS to the proxy itself (Request-URI without a user: the core answers 200)
and an OPTIONS to a fast Lua route beside the bad one. Every probe must be
answered within PROBE_LIMIT.

The hostile cases are C library calls the count hook cannot interrupt (it
fires between VM instructions only); when Lua ran on the event loop each one
left the server answering nothing, per event, at start (the server never came
up) and on hot reload. The slow route is the issue's: 0.8 s per event, under
its 1 s deadline, five events 0.2 s apart (OPTIONS waited up to 3.8 s).
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid

import pytest

from tests.e2e import routes_support as rs
from tests.e2e import sipp

pytestmark = [pytest.mark.e2e]

PROBE_LIMIT = 0.1    # the issue: OPTIONS and the fast route answered within 100 ms
PROBE_EVERY = 0.02
ANSWER_WAIT = 3.0    # a request not answered in this long counts as lost
FALLBACK = 503

FAST_LUA = 'function on_request(req)\n  req:reply(200, "fast")\nend\n'

# route name -> the C call (as in tests/runtimes/test_lua.py C_CALLS)
C_CALLS = {
    "rep": 'local s = string.rep("", 2^50)',
    "move": "table.move({}, 1, 2^40, 1)",
    "insertlen": 'table.insert(setmetatable({}, {__len = function() return 2^40 end}), 1, "x")',
    "optional": 'local s = string.rep("a", 20000):find(string.rep("a?", 12) .. string.rep("a", 12) .. "b")',
    "balance": 'local s = string.rep("(", 300000):find("%b()")',
    "backref": 'local s = string.rep("a", 9999):find("(a*)%1b")',  # the old guard let 9,999 bytes through
}


def per_event(call: str) -> str:
    return f"function on_request(req)\n  {call}\n  req:reply(200, 'escaped')\nend\n"


def top_level(call: str) -> str:
    return f"{call}\nfunction on_request(req) req:reply(200, 'escaped') end\n"


def routes_toml(routes, *, deadline: float = 1.0, options: str = "") -> str:
    """Each route takes the requests whose user is its name; fast is the default."""
    parts = ['default = "fast"\n']
    for route in routes:
        parts.append(f'[[match]]\nroute = "{route}"\nruri_user = "^{route}$"\n')
    for route in routes:
        parts.append(f"[routes.{route}]\ndeadline = {deadline}\nfallback = {FALLBACK}\n{options}")
    return "\n".join(parts)


def options_to(port: int, local_port: int, user: str | None) -> tuple[bytes, str]:
    call_id = uuid.uuid4().hex
    if user is None:
        return sipp.options_request(sipp.LOCALHOST, port, local_port, call_id=call_id), call_id
    uri = f"sip:{user}@{sipp.LOCALHOST}:{port}"
    return (f"OPTIONS {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {sipp.LOCALHOST}:{local_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:probe@{sipp.LOCALHOST}>;tag={uuid.uuid4().hex[:10]}\r\n"
            f"To: <{uri}>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n").encode(), call_id


def ask(port: int, user: str | None, wait: float = ANSWER_WAIT) -> tuple[int | None, float]:
    """(final status code or None, seconds) of an OPTIONS to `user` (None: the proxy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((sipp.LOCALHOST, 0))
        request, call_id = options_to(port, sock.getsockname()[1], user)
        t0 = time.monotonic()
        sock.sendto(request, (sipp.LOCALHOST, port))
        end = t0 + wait
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recvfrom(65535)[0]
            except socket.timeout:
                break
            code = sipp.status_code(data)
            if call_id.encode() in data and code is not None and code >= 200:
                return code, time.monotonic() - t0
        return None, time.monotonic() - t0


class Prober:
    """Probes the proxy and the fast route in turn until stopped; keeps
    (what, code, seconds) of every probe."""

    def __init__(self, port: int):
        self.port, self.results = port, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        targets = [(None, 200), ("fast", 200)]
        i = 0
        while not self._stop.is_set():
            user, _ = targets[i % 2]
            code, took = ask(self.port, user)
            self.results.append((user or "proxy", code, took))
            i += 1
            self._stop.wait(PROBE_EVERY)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(ANSWER_WAIT + 1)

    def check(self, server, minimum: int = 10) -> None:
        assert len(self.results) >= minimum, f"only {len(self.results)} probes: {self.results}\n" + server.why()
        late = [(what, code, round(took, 3)) for what, code, took in self.results
                if code != 200 or took >= PROBE_LIMIT]
        assert not late, (f"{len(late)} of {len(self.results)} probes not answered 200 within "
                          f"{PROBE_LIMIT} s: {late[:10]}\n" + server.why())


def ask_all(port: int, users: list[str]) -> dict[str, tuple[int | None, float]]:
    """OPTIONS to every user at once (one thread each); user -> (code, seconds)."""
    out: dict = {}
    threads = [threading.Thread(target=lambda u=u: out.__setitem__(u, ask(port, u)), daemon=True)
               for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ANSWER_WAIT + 1)
    return out


def test_c_calls_in_events_leave_the_server_serving(tmp_path):
    routes = rs.make_routes(tmp_path / "routes", {
        "fast.lua": FAST_LUA, "routes.toml": routes_toml(C_CALLS),
        **{f"{name}.lua": per_event(call) for name, call in C_CALLS.items()}})
    with rs.routes_server(routes, tmp_path, ready_timeout=15) as server:
        with Prober(server.port) as prober:
            time.sleep(0.2)
            answers = [ask_all(server.port, list(C_CALLS)) for _ in range(2)]
            time.sleep(0.2)
        prober.check(server)
        for batch in answers:
            for route, (code, took) in batch.items():
                # Refused by the prelude at once: a script error, the fallback.
                assert code == FALLBACK and took < 0.5, (route, code, took, server.why())
        for route in C_CALLS:
            assert server.log_lines(rf"route {route}#\d+ on_request: .*{route}\.lua:2: .*\[error\]"), \
                server.why()


def test_c_calls_at_top_level_do_not_stop_the_server_from_starting(tmp_path):
    routes = rs.make_routes(tmp_path / "routes", {
        "fast.lua": FAST_LUA, "routes.toml": routes_toml(C_CALLS),
        **{f"{name}.lua": top_level(call) for name, call in C_CALLS.items()}})
    with rs.routes_server(routes, tmp_path, ready_timeout=15) as server:
        with Prober(server.port) as prober:
            answers = ask_all(server.port, list(C_CALLS))
            time.sleep(0.3)
        prober.check(server)
        for route in C_CALLS:
            assert answers[route][0] == FALLBACK, (route, answers[route], server.why())
            assert server.log_lines(rf"route {route}: .*{route}\.lua:1: "), server.why()


def test_c_calls_at_top_level_on_hot_reload_leave_the_server_serving(tmp_path):
    # (routes.toml cannot name a route before its file exists: they load unrouted.)
    routes = rs.make_routes(tmp_path / "routes", {"fast.lua": FAST_LUA, "routes.toml": routes_toml([])})
    with rs.routes_server(routes, tmp_path, ready_timeout=15) as server:
        with Prober(server.port) as prober:
            time.sleep(0.2)
            for name, call in C_CALLS.items():
                rs.write_atomically(routes / f"{name}.lua", top_level(call))
            for name in C_CALLS:
                assert server.wait_log(rf"route {name}: .*{name}\.lua:1: ", 10), server.why()
            time.sleep(0.3)
        prober.check(server)


def calibrated_iterations(seconds: float) -> int:
    """Iterations of SLOW_LOOP that take about `seconds` of plain Lua here."""
    import lupa.lua54
    lua = lupa.lua54.LuaRuntime()
    run = lua.eval("function(n) local x = 0 for i = 1, n do x = x + i end return x end")
    n = 1_000_000
    while True:
        t0 = time.perf_counter()
        run(n)
        took = time.perf_counter() - t0
        if took > 0.05 or n >= 10**9:
            return max(1, int(n * seconds / took))
        n *= 4


def test_a_slow_route_does_not_delay_the_proxy_or_a_fast_route(tmp_path):
    # 0.6 s of plain Lua is ~0.8 s in the server (count hook, a loaded machine);
    # past its 1 s deadline it is stopped there, which is as slow.
    n = calibrated_iterations(0.6)
    slow = ("function on_request(req)\n"
            f"  local x = 0\n  for i = 1, {n} do x = x + i end\n"
            "  req:reply(200, 'slow')\nend\n")
    # Enough instructions for 0.8 s (the default 10 million is ~50 ms).
    toml = routes_toml(["slow"], deadline=1.0, options="options = { instructions = 100000000000 }\n")
    routes = rs.make_routes(tmp_path / "routes", {"fast.lua": FAST_LUA, "slow.lua": slow,
                                                  "routes.toml": toml})
    with rs.routes_server(routes, tmp_path, ready_timeout=15) as server:
        slow_answers: list = []
        senders = []
        with Prober(server.port) as prober:
            for _ in range(5):
                t = threading.Thread(target=lambda: slow_answers.append(ask(server.port, "slow")),
                                     daemon=True)
                t.start()
                senders.append(t)
                time.sleep(0.2)
            for t in senders:
                t.join(ANSWER_WAIT + 1)
        prober.check(server, minimum=20)
        # Every slow request was answered: 200, or the fallback for those that
        # waited past their deadline behind the others (one Lua state runs one
        # event at a time).
        assert len(slow_answers) == 5 and all(code in (200, FALLBACK) for code, _ in slow_answers), \
            (slow_answers, server.why())
