"""`--store` URLs for Redis/Valkey: one server, Sentinel, or Cluster (sans-IO).

    redis://[user:password@]host[:port][/db]                 one server (default port 6379)
    rediss://...                                             the same over TLS
    redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]
                                                             Sentinels (default port 26379)
                                                             that name the primary of `service`
    redis+cluster://[user:password@]host[:port][,host[:port]...]
                                                             seed nodes of a Redis Cluster
    rediss+sentinel://, rediss+cluster://                    the same over TLS

The comma-separated host list and `/service/db` for Sentinel follow the form
other clients read (the `redis+sentinel://` URLs of redis-sentinel-url and
Lettuce's `redis-sentinel://`); a cluster has one database, so no `/db`.
The user name and password are the data nodes' (the Sentinels are asked
without them). Hosts may be `[IPv6]:port`. Anything else is a StoreError
naming what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from host.storage import StoreError

MODES = {"redis": ("single", False), "rediss": ("single", True),
         "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
         "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True)}
DEFAULT_PORT = {"single": 6379, "sentinel": 26379, "cluster": 6379}


@dataclass(frozen=True)
class RedisTarget:
    mode: str                          # "single", "sentinel" or "cluster"
    tls: bool
    nodes: tuple[tuple[str, int], ...]  # the server, the Sentinels, or the cluster seeds
    db: int = 0
    service: str = ""                  # Sentinel: the monitored primary's name
    username: str | None = None
    password: str | None = None

    def display(self) -> str:
        """The URL without its credentials, for logs and errors."""
        scheme = next(s for s, m in MODES.items() if m == (self.mode, self.tls))
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        path = {"single": f"/{self.db}", "sentinel": f"/{self.service}/{self.db}",
                "cluster": ""}[self.mode]
        return f"{scheme}://{hosts}{path}"


def parse_store_url(url: str) -> RedisTarget:
    def bad(why: str):
        return StoreError(f"--store {url!r}: {why}")
    if not isinstance(url, str) or "://" not in url:
        raise bad("expected a URL such as redis://127.0.0.1:6379/0")
    scheme, rest = url.split("://", 1)
    if scheme.lower() not in MODES:
        raise bad(f"unknown scheme {scheme!r} (known: {', '.join(MODES)})")
    mode, tls = MODES[scheme.lower()]
    rest = rest.split("#", 1)[0].split("?", 1)[0]   # query options: not read (README)
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_node(part, DEFAULT_PORT[mode], bad) for part in netloc.split(","))
    parts = [p for p in path.split("/") if p]
    db, service = 0, ""
    if mode == "single":
        if len(nodes) != 1:
            raise bad("redis:// names one server; use redis+sentinel:// or redis+cluster:// for several")
        db = _db(parts[0], bad) if parts else 0
        if len(parts) > 1:
            raise bad("expected at most /db after the host")
    elif mode == "sentinel":
        if not parts:
            raise bad("Sentinel needs the service name: redis+sentinel://host:26379/SERVICE[/db]")
        service = unquote(parts[0])
        db = _db(parts[1], bad) if len(parts) > 1 else 0
        if len(parts) > 2:
            raise bad("expected /service[/db] after the Sentinels")
    elif parts:
        raise bad("a Redis Cluster has one database: nothing may follow the hosts")
    return RedisTarget(mode, tls, nodes, db, service, username, password)


def _node(text: str, default_port: int, bad) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        if tail and not tail.startswith(":"):
            raise bad(f"bad host {text!r}")
        port = tail[1:]
    else:
        host, _, port = text.partition(":")
        if ":" in port:
            raise bad(f"bad host {text!r}: write an IPv6 address as [addr]:port")
    if not host:
        raise bad(f"empty host in {text!r}" if text else "a host is missing")
    if port == "":
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise bad(f"bad port in {text!r}")
    return host, int(port)


def _db(text: str, bad) -> int:
    if not text.isdigit():
        raise bad(f"the database must be a number, got {text!r}")
    return int(text)
