"""End to end: babelsip with `--store redis://...` (host/storage/redis.py).

Each test starts its own redis-server on a free port of 127.0.0.1 with
`--appendonly yes --dir <tmpdir>`, as an operator who wants registrations to
survive a Redis restart would run it, and babelsip cores serving a copy of
the quickstart routes (examples/quickstart/routes/main.lua: digest REGISTER
for alice/bob, calls to local users by lookup, 480/404 otherwise) with
`--store` pointing at it.

- Two cores, one Redis: alice registers (digest) at core A; a call to her
  entering at core B reaches the sipp uas that is her Contact. The binding is
  in Redis under the documented key (host/storage/README.md), read with
  redis-cli.
- Redis restarted during traffic: while it is down a REGISTER is answered
  503 with Retry-After, a call to alice still reaches her (the location
  service's last reads, host/services/location.py), a call to a user it never
  read is 503, OPTIONS to the server is answered at once; once Redis is back on
  the same port REGISTER works again within seconds and alice's binding from
  before the outage is still there. The log names both transitions.

The SIP helpers (RawUA, sipp_register, call_answered_with) are the
registrar test's (tests/e2e/test_registrar_sipp.py), imported.
Every process started here (redis-server, babelsip, sipp) is stopped by the
context manager that started it, also when an assertion fails.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e import routes_support as rs
from tests.e2e import sipp
from tests.e2e.test_registrar_sipp import (PASSWORD, QUICKSTART, SIPP_RUN_TIMEOUT, RawUA,
                                           call_answered_with, sipp_register)

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None,
                       reason="sipp is not installed (Debian package sip-tester; `make test` installs it)"),
    pytest.mark.skipif(REDIS_SERVER is None or REDIS_CLI is None,
                       reason="redis-server/redis-cli are not installed (Debian package redis-server)"),
]

ALICE_AOR_KEY = "babelsip:aor:{sip:alice@127.0.0.1}"
BACK_WITHIN = 8.0   # seconds: the breaker's longest wait is 5 s, then coredis reconnects


# ------------------------------------------------------------------ redis

class Redis:
    """One redis-server on 127.0.0.1:port, persisting to `directory` (AOF)."""

    def __init__(self, port: int, directory: Path):
        self.port, self.dir = port, directory
        self.proc: subprocess.Popen | None = None
        self.log = directory / "redis.log"

    def start(self, timeout: float = 5.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--bind", sipp.LOCALHOST, "--port", str(self.port),
             "--appendonly", "yes", "--dir", str(self.dir), "--save", "",
             "--daemonize", "no", "--protected-mode", "yes", "--logfile", str(self.log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)
        if not rs.wait_until(lambda: self.proc.poll() is not None or self.cli("PING") == "PONG", timeout):
            self.stop()
            raise RuntimeError(f"redis-server not answering on {self.port}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited {self.proc.returncode}:\n"
                               + self.log.read_text(errors="replace")[-2000:])

    def stop(self) -> None:
        """SIGTERM: with appendonly Redis flushes its AOF and exits."""
        if self.proc is not None:
            rs.stop_gently(self.proc, signal.SIGTERM, grace=5.0)
            self.proc = None

    def cli(self, *args: str) -> str:
        try:
            out = subprocess.run([REDIS_CLI, "-h", sipp.LOCALHOST, "-p", str(self.port), *args],
                                 capture_output=True, text=True, timeout=3)
        except subprocess.TimeoutExpired:
            return ""
        return out.stdout.strip()

    @property
    def url(self) -> str:
        return f"redis://{sipp.LOCALHOST}:{self.port}/0"


@pytest.fixture
def redis(tmp_path) -> Iterator[Redis]:
    server = Redis(sipp.free_port(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def core(name: str, workdir: Path, store_url: str, port: int | None = None) -> Iterator[rs.RoutesServer]:
    """A babelsip serving a copy of the quickstart routes, with `--store`."""
    here = workdir / name
    routes = here / "routes"
    shutil.copytree(QUICKSTART, routes, dirs_exist_ok=True)
    with rs.routes_server(routes, here, port=port, extra_args=["--store", store_url]) as server:
        yield server


@contextlib.contextmanager
def raw_ua(server: rs.RoutesServer) -> Iterator[RawUA]:
    ua = RawUA(server.port)
    try:
        yield ua
    finally:
        ua.close()


def call_reaches(server: rs.RoutesServer, uas: sipp.SippProcess, name: str,
                 user: str = "alice") -> tuple[bool, str]:
    """One call to `user` through `server`; True when it completed at the uac
    and the uas (still running) answered one more call than before."""
    before = uas.snapshot().successful
    call = rs.run_uac(server, name=name, service=user, calls=1, rate=1, timeout=SIPP_RUN_TIMEOUT)
    # The uas counts the call once its 1 s timewait is over; it dumps every second.
    done = rs.wait_until(lambda: uas.snapshot().successful > before, 4.0, interval=0.2)
    ok = call.successful == 1 and call.failed == 0 and bool(done)
    return ok, server.why(call, uas.snapshot())


# ------------------------------------------------------------------ tests

def test_two_cores_share_registrations_through_redis(redis, tmp_path):
    with core("A", tmp_path, redis.url) as a, core("B", tmp_path, redis.url) as b, \
            rs.uas(tmp_path, "uas-alice") as (uas_port, uas):
        reg = sipp_register(a, a.workdir, "services_register_auth", "alice", PASSWORD, uas_port)
        assert reg.successful == 1 and reg.failed == 0, a.why(reg)

        # In Redis, under the documented key: Contact URI -> binding (JSON).
        stored = redis.cli("HGETALL", ALICE_AOR_KEY)
        assert f"sip:alice@{sipp.LOCALHOST}:{uas_port}" in stored, stored
        assert int(redis.cli("PTTL", ALICE_AOR_KEY)) > 0   # expires with its last binding
        # The nonce-count the digest check recorded (replay protection), with a TTL.
        nonces = redis.cli("--scan", "--pattern", "babelsip:nc:*").split()
        assert len(nonces) == 1 and redis.cli("GET", nonces[0]) == "1", nonces
        assert int(redis.cli("PTTL", nonces[0])) > 0

        # The call enters at B, which never saw the REGISTER.
        ok, why = call_reaches(b, uas, "uac-B-to-alice")
        assert ok, why
        # bob has no binding anywhere: B answers 480 (known user, not registered).
        assert call_answered_with(b, b.workdir, "bob", 480).successful == 1, b.why()

        # A de-registration at B (digest with B's own nonce) removes it for A too.
        with raw_ua(b) as ua:
            ua.unregister_all("alice")
        assert redis.cli("EXISTS", ALICE_AOR_KEY) == "0"
        assert call_answered_with(a, a.workdir, "alice", 480).successful == 1, a.why()
        rs.stop_all(uas)
        assert a.alive() and b.alive(), a.why() + b.why()


def test_redis_restart_during_traffic(redis, tmp_path):
    with core("A", tmp_path, redis.url) as a, rs.uas(tmp_path, "uas-alice") as (uas_port, uas), \
            raw_ua(a) as ua:
        contact = f"<sip:alice@{sipp.LOCALHOST}:{uas_port}>"
        reg = sipp_register(a, a.workdir, "services_register_auth", "alice", PASSWORD, uas_port)
        assert reg.successful == 1 and reg.failed == 0, a.why(reg)
        ok, why = call_reaches(a, uas, "uac-before")   # also the location service's last read
        assert ok, why

        redis.stop()                                   # SIGTERM: the AOF is flushed
        assert redis.cli("PING") != "PONG"

        # REGISTER while Redis is down: the challenge needs no store, the
        # authenticated request (nonce-count check, then save) is 503.
        reply = ua.register_authenticated("bob", contact=f"<sip:bob@{sipp.LOCALHOST}:{ua.port}>",
                                          expires=60)
        assert sipp.status_code(reply) == 503, reply.decode()
        assert sipp.header_value(reply, "Retry-After") == "10", reply.decode()

        # The server is up and answers its own OPTIONS at once.
        started = time.monotonic()
        assert a.ping() == 200, a.why()
        assert time.monotonic() - started < 0.5

        # alice was read less than 60 s ago: her call still reaches her.
        ok, why = call_reaches(a, uas, "uac-during")
        assert ok, why
        # bob was never read here: no fallback, the lookup is 503 too.
        assert call_answered_with(a, a.workdir, "bob", 503).successful == 1, a.why()
        assert a.wait_log(r"unreachable", 2), a.why()

        redis.start()                                  # same port, same directory
        # Within seconds (the breaker waits at most 5 s) REGISTER works again.
        deadline = time.monotonic() + BACK_WITHIN
        codes = []
        while time.monotonic() < deadline:
            reply = ua.register_authenticated("bob", contact=f"<sip:bob@{sipp.LOCALHOST}:{ua.port}>",
                                              expires=60)
            codes.append(sipp.status_code(reply))
            if codes[-1] == 200:
                break
            time.sleep(0.5)
        assert codes[-1] == 200, (codes, a.why())
        assert a.wait_log(r"answers again", 2), a.why()

        # The binding from before the outage was kept by Redis (AOF): it is
        # listed by a query REGISTER, and calls reach it.
        query = ua.register_authenticated("alice")
        assert sipp.status_code(query) == 200, query.decode()
        assert f"{contact};expires=" in query.decode(), query.decode()
        ok, why = call_reaches(a, uas, "uac-after")
        assert ok, why

        ua.unregister_all("alice")
        ua.unregister_all("bob")
        rs.stop_all(uas)
        assert a.alive(), a.why()


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_two_cores_share_registrations_through_a_cluster_or_sentinel(topology, tmp_path):
    """The first test's REGISTER at A and call through B, with `--store
    redis+cluster://...` (a 3-primary Redis Cluster) or
    `redis+sentinel://.../SERVICE` (one primary, one replica, one Sentinel):
    what the cores share does not depend on the topology."""
    from tests.storage.redis_server import RawRedis
    from tests.storage.redis_topologies import RedisClusterServers, RedisSentinelSetup
    servers = RedisClusterServers() if topology == "cluster" else RedisSentinelSetup()
    with servers, core("A", tmp_path, servers.url) as a, core("B", tmp_path, servers.url) as b, \
            rs.uas(tmp_path, "uas-alice") as (uas_port, uas):
        reg = sipp_register(a, a.workdir, "services_register_auth", "alice", PASSWORD, uas_port)
        assert reg.successful == 1 and reg.failed == 0, a.why(reg)
        ok, why = call_reaches(b, uas, "uac-B-to-alice")
        assert ok, why
        if topology == "cluster":
            with servers.raw() as r:
                stored = r.command("HGETALL", ALICE_AOR_KEY)
        else:   # on the primary the Sentinel names
            with RawRedis(servers.primary_port()) as r:
                stored = r.command("HGETALL", ALICE_AOR_KEY)
        assert any(f"sip:alice@{sipp.LOCALHOST}:{uas_port}" in str(x) for x in stored), stored
        rs.stop_all(uas)
        assert a.alive() and b.alive(), a.why() + b.why()


def test_a_core_killed_and_back_while_the_other_serves(redis, tmp_path):
    """alice's phone (plain UDP, no NAT: no flow to own) registered at A, bob's
    at B. With A killed, B serves bob and calls alice directly, as the
    federation model says for a binding without a flow (README, "Several
    cores, one store"); A restarted on its port serves again, from Redis."""
    with rs.uas(tmp_path, "uas-alice") as (alice_port, alice), \
            rs.uas(tmp_path, "uas-bob") as (bob_port, bob), \
            core("B", tmp_path, redis.url) as b:
        with core("A", tmp_path, redis.url) as a:
            a_port = a.port
            reg = sipp_register(a, a.workdir, "services_register_auth", "alice", PASSWORD, alice_port)
            assert reg.successful == 1, a.why(reg)
            reg = sipp_register(b, b.workdir, "services_register_auth", "bob", PASSWORD, bob_port)
            assert reg.successful == 1, b.why(reg)
            ok, why = call_reaches(b, alice, "uac-b-alice-before")
            assert ok, why
            a.proxy.proc.kill()                  # SIGKILL: no drain, no goodbye
            a.proxy.proc.wait(timeout=5)
        ok, why = call_reaches(b, bob, "uac-b-bob-a-down", user="bob")
        assert ok, why
        ok, why = call_reaches(b, alice, "uac-b-alice-a-down")
        assert ok, why
        with core("A", tmp_path, redis.url, port=a_port) as a:
            ok, why = call_reaches(a, alice, "uac-a-alice-back")
            assert ok, why
            ok, why = call_reaches(a, bob, "uac-a-bob-back", user="bob")
            assert ok, why
        rs.stop_all(alice, bob)
        assert b.alive(), b.why()
