"""A private redis-server for tests: start, stop, restart on one port.

Only 127.0.0.1, no persistence, its own temporary directory. Every wait is
bounded; `stop()` is idempotent and escalates SIGTERM -> SIGKILL, so a
failing test never leaves a server behind (use it as a context manager or
call stop() in a finally).

`RawRedis` is a tiny blocking RESP client (no coredis) the tests use to look
at keys behind the store's back: TTLs, cleanup by prefix, injected writes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REDIS_SERVER = shutil.which("redis-server")
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, port: int | None = None):
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="babelsip-redis-")
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--dir", self._dir, "--daemonize", "no",
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited "
                                   f"with {self._proc.returncode}")
            try:
                with RawRedis(self.port, timeout=0.2) as r:
                    if r.command("PING") == "PONG":
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)   # in case it was paused
        proc.terminate()            # redis-server shuts down on SIGTERM (no save: --save '')
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung server)."""
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RawRedis:
    """Blocking RESP2 client: enough for PING, SCAN, DEL, PTTL, HSET."""

    def __init__(self, port: int, host: str = HOST, db: int = 0, timeout: float = 2.0):
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        if db:
            self.command("SELECT", db)

    @classmethod
    def from_url(cls, url: str, timeout: float = 2.0) -> RawRedis:
        from urllib.parse import urlsplit
        p = urlsplit(url)
        path = p.path.strip("/")
        return cls(p.port or 6379, p.hostname or HOST, int(path) if path.isdigit() else 0, timeout)

    def command(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self._sock.sendall(b"".join(out))
        return self._reply()

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix` (no glob characters in it)."""
        removed, cursor = 0, "0"
        for _ in range(100_000):       # bounded: SCAN always ends
            cursor, keys = self.command("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
            if keys:
                removed += self.command("DEL", *keys)
            if cursor == "0":
                break
        return removed

    def keys(self, prefix: str) -> list[str]:
        return sorted(self.command("KEYS", prefix + "*"))

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self._buf) < n + 2:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                self._buf += chunk
            data, self._buf = self._buf[:n], self._buf[n + 2:]
            try:
                return data.decode()
            except UnicodeDecodeError:
                return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"unexpected RESP reply {line!r}")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RawRedis:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
