"""Private Redis topologies for tests: a 3-primary Redis Cluster and a
Sentinel setup (primary + replica + one Sentinel), on free 127.0.0.1 ports.

Like redis_server.RedisServer: no persistence, temporary directories, every
wait bounded, close() idempotent and kills whatever it started.

`ClusterRaw` is RawRedis for a cluster: a command on a key is sent to the
node that owns it (it follows MOVED), and prefix scans/deletes visit every
primary, so the conformance suite can look behind the store's back the same
way on both.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.storage.redis_server import HOST, REDIS_SERVER, RawRedis, RedisServer

REDIS_CLI = shutil.which("redis-cli")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """`count` ports whose cluster bus port (+10000) is free as well; drawn
    below the ephemeral range so port + 10000 stays a valid port."""
    rng = random.Random()
    chosen: list[int] = []
    for _ in range(2000):
        port = rng.randrange(20000, 30000)
        if port in chosen or port + 10000 in chosen:
            continue
        if _bindable(port) and _bindable(port + 10000):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free ports for a Redis Cluster")


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready after {timeout} s")


class _Process:
    """One redis-server (or sentinel) started with the given arguments."""

    def __init__(self, args: list[str], port: int):
        self.port = port
        self.proc = subprocess.Popen([REDIS_SERVER, *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def ping(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis on port {self.port} exited with {self.proc.returncode}")
        with RawRedis(self.port, timeout=0.3) as r:
            return r.command("PING") == "PONG"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _server_args(port: int, directory: str) -> list[str]:
    return ["--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", directory, "--daemonize", "no", "--loglevel", "warning"]


class RedisClusterServers:
    """Three primaries, no replicas, all 16384 slots covered."""

    def __init__(self, primaries: int = 3):
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise RuntimeError("redis-server and redis-cli are needed for a Redis Cluster")
        self.ports = cluster_ports(primaries)
        self.url = "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports)
        self._dir = tempfile.mkdtemp(prefix="babelsip-cluster-")
        self._nodes: list[_Process] = []

    def start(self, timeout: float = 20.0) -> None:
        try:
            for port in self.ports:
                d = Path(self._dir) / str(port)
                d.mkdir()
                self._nodes.append(_Process(_server_args(port, str(d)) + [
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "2000"], port))
            for node in self._nodes:
                _wait(node.ping, 5, f"cluster node {node.port}")
            create = subprocess.run(
                [REDIS_CLI, "--cluster", "create", *[f"{HOST}:{p}" for p in self.ports],
                 "--cluster-replicas", "0", "--cluster-yes"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, text=True)
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-2000:]}")
            _wait(self._all_ok, timeout, "cluster_state:ok on every node")
        except BaseException:
            self.close()
            raise

    def _all_ok(self) -> bool:
        for port in self.ports:
            with RawRedis(port, timeout=0.5) as r:
                if "cluster_state:ok" not in r.command("CLUSTER", "INFO"):
                    return False
        return True

    def raw(self) -> ClusterRaw:
        return ClusterRaw(self.ports)

    def close(self) -> None:
        nodes, self._nodes = self._nodes, []
        for node in nodes:
            node.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterServers:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ClusterRaw:
    """A blocking client over every node of a cluster (see the module doc)."""

    def __init__(self, ports: list[int], timeout: float = 2.0):
        self._conns = {p: RawRedis(p, timeout=timeout) for p in ports}
        self._first = ports[0]

    def command(self, *args):
        port = self._first
        for _ in range(3):     # at most one MOVED (no resharding in tests), with margin
            try:
                return self._conn(port).command(*args)
            except RuntimeError as exc:
                words = str(exc).split()
                if words[:1] != ["MOVED"]:
                    raise
                port = int(words[2].rpartition(":")[2])
        raise RuntimeError(f"{args[0]}: too many redirections")

    def _conn(self, port: int) -> RawRedis:
        if port not in self._conns:
            self._conns[port] = RawRedis(port)
        return self._conns[port]

    def delete_prefix(self, prefix: str) -> int:
        removed = 0
        for conn in list(self._conns.values()):
            for key in conn.keys(prefix):
                removed += conn.command("DEL", key)   # one key per DEL: keys differ in slot
        return removed

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for conn in self._conns.values() for k in conn.keys(prefix))

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()

    def __enter__(self) -> ClusterRaw:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RedisSentinelSetup:
    """A primary, one replica of it, and one Sentinel monitoring them as
    `service` with quorum 1 and short timeouts, so a failover takes a few
    seconds: the primary is down after 500 ms, the Sentinel promotes the
    replica at once."""

    def __init__(self, service: str = "babelsip"):
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.service = service
        self.primary = RedisServer()
        self._dir = tempfile.mkdtemp(prefix="babelsip-sentinel-")
        from tests.storage.redis_server import free_port
        self.replica_port, self.sentinel_port = free_port(), free_port()
        self.url = f"redis+sentinel://{HOST}:{self.sentinel_port}/{service}/0"
        self._replica: _Process | None = None
        self._sentinel: _Process | None = None

    def start(self, timeout: float = 10.0) -> None:
        try:
            self.primary.start()
            rdir = Path(self._dir) / "replica"
            rdir.mkdir()
            self._replica = _Process(_server_args(self.replica_port, str(rdir)) + [
                "--replicaof", HOST, str(self.primary.port)], self.replica_port)
            _wait(self._replica.ping, 5, "replica")
            _wait(self._replica_in_sync, timeout, "replica in sync")
            conf = Path(self._dir) / "sentinel.conf"
            conf.write_text(
                f"port {self.sentinel_port}\nbind {HOST}\ndir {self._dir}\n"
                f"sentinel monitor {self.service} {HOST} {self.primary.port} 1\n"
                f"sentinel down-after-milliseconds {self.service} 500\n"
                f"sentinel failover-timeout {self.service} 5000\n"
                f"sentinel parallel-syncs {self.service} 1\n")
            self._sentinel = _Process([str(conf), "--sentinel", "--loglevel", "warning"],
                                      self.sentinel_port)
            _wait(self._sentinel.ping, 5, "sentinel")
            _wait(self._sentinel_sees_replica, timeout, "sentinel knows the replica")
        except BaseException:
            self.close()
            raise

    def _replica_in_sync(self) -> bool:
        with RawRedis(self.replica_port, timeout=0.5) as r:
            return "master_link_status:up" in r.command("INFO", "replication")

    def _sentinel_sees_replica(self) -> bool:
        with RawRedis(self.sentinel_port, timeout=0.5) as r:
            return bool(r.command("SENTINEL", "REPLICAS", self.service))

    def primary_port(self) -> int:
        """The port the Sentinel names as the primary now."""
        with RawRedis(self.sentinel_port, timeout=1.0) as r:
            return int(r.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])

    def kill_primary(self) -> None:
        self.primary.stop()

    def close(self) -> None:
        for proc in (self._sentinel, self._replica):
            if proc is not None:
                proc.stop()
        self._sentinel = self._replica = None
        self.primary.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisSentinelSetup:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
