"""TcpRuntime: the same protocol to logic servers on other hosts.

One connection per endpoint, each a slot of `pool.PooledRuntime`: health is
the protocol's ping/pong, and a dead or hung connection is reconnected with
backoff. Dispatch is "failover" by default (every event to the first healthy
endpoint in the listed order, so a backup takes over when the primary stops
and hands back when it returns) or "least" (least in flight across healthy endpoints).

An event in flight on a connection that closes or breaks goes once more, to
the next healthy endpoint, by its own deadline: a logic host that dies takes
no call with it (so an event may reach two servers, the first of which never
answered). One in flight on a hung connection (missed pings, its deadline
passed) gets the route's fallback, since that server may still act on it.

Endpoints come from the route's options (routes.toml `endpoints = [...]`)
or, for a `NAME.remote` route file, from that TOML file:

    endpoints = ["10.0.0.5:7001", "10.0.0.6:7001"]
    balance = "failover"        # or "least"
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import trio

from host.storage import Store
from host.routes.runtime import LoadError, RuntimeSpec
from runtimes.jsonline.pool import Link, PooledRuntime

CONNECT_TIMEOUT = 2.0


def parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class SocketLink(Link):
    def __init__(self, stream: trio.SocketStream, label: str):
        self.stream, self.label = stream, label

    async def describe_end(self) -> str:
        return "logic server closed the connection"

    async def finish(self, graceful: bool, grace: float) -> None:
        if graceful:
            # Give the server a moment to finish and close its side first.
            with trio.move_on_after(grace):
                try:
                    while await self.stream.receive_some(1 << 16):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        await self.stream.aclose()


class TcpRuntime(PooledRuntime):
    need_all_at_start = False
    resend_lost = True

    def __init__(self, spec: RuntimeSpec, *, store: Store | None = None):
        super().__init__(spec, store=store)
        self.endpoints: list[tuple[str, int]] = []
        self.connect_timeout = float(self.options.get("connect_timeout", CONNECT_TIMEOUT))

    def _config(self) -> dict:
        if "endpoints" in self.options:
            return self.options
        path = Path(self.spec.path)
        try:
            with open(path, "rb") as f:
                conf = tomllib.load(f)
        except OSError as e:
            raise LoadError(path, None, f"cannot read: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise LoadError(path, getattr(e, "lineno", None), f"bad TOML: {e}") from None
        return {**conf, **self.options}

    async def prepare(self) -> None:
        conf = self._config()
        raw = conf.get("endpoints")
        if isinstance(raw, str):
            raw = [raw]
        if not raw:
            raise LoadError(self.spec.path, None, "no endpoints (endpoints = [\"host:port\", ...])")
        try:
            self.endpoints = [parse_endpoint(e) for e in raw]
        except ValueError as e:
            raise LoadError(self.spec.path, None, str(e)) from None
        balance = conf.get("balance", "failover")
        if balance not in ("failover", "least"):
            raise LoadError(self.spec.path, None, f"balance must be 'failover' or 'least', got {balance!r}")
        self.balance = balance

    def slot_count(self) -> int:
        return len(self.endpoints)

    async def open_link(self, index: int, nursery: trio.Nursery) -> Link:
        host, port = self.endpoints[index]
        with trio.fail_after(self.connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
        return SocketLink(stream, f"{self.spec.route}@{host}:{port}")

    def statistics(self) -> dict:
        stats = super().statistics()
        stats["endpoints"] = [
            {"endpoint": f"{h}:{p}", "up": s is not None and s.end is None,
             "in_flight": s.in_flight if s is not None else 0}
            for (h, p), s in zip(self.endpoints, self._sessions)]
        return stats
