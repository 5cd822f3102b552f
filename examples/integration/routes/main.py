"""Least-cost routing from a SQLite table, with a per-caller rate limit.

The database sits next to this file (the worker's working directory is its
own state directory, so paths are resolved from __file__). Handlers run on
a few threads (CONCURRENCY) because each one waits on SQLite and on the
host's key/value store; each thread keeps its own SQLite connection.
"""

import sqlite3
import threading
from pathlib import Path

CONCURRENCY = 4
DB = Path(__file__).resolve().parent.parent / "lcr.sqlite"
CALLS_PER_MINUTE = 30

_local = threading.local()


def _db():
    conn = getattr(_local, "conn", None)
    if conn is None:
        # read-only: the route never writes, and a missing file is an error, not a new empty DB
        conn = _local.conn = sqlite3.connect(f"file:{DB}?mode=ro", uri=True)
    return conn


def gateways_for(number: str) -> list[str]:
    """Gateways of the longest matching prefix, cheapest first."""
    rows = _db().execute(
        "SELECT prefix, gateway FROM rates WHERE ? LIKE prefix || '%' "
        "ORDER BY length(prefix) DESC, cost ASC", (number,)).fetchall()
    if not rows:
        return []
    longest = len(rows[0][0])
    return [gw for prefix, gw in rows if len(prefix) == longest]


def on_request(req):
    if req.method != "INVITE":
        req.relay()
        return
    n = req.store.incr("calls:" + req.from_uri, 1, ttl=60)
    if n > CALLS_PER_MINUTE:
        req.reply(403, "Rate limit exceeded")
        return
    targets = [f"sip:{req.ruri_user}@{gw}" for gw in gateways_for(req.ruri_user)]
    if not targets:
        req.reply(404, "No route to destination")
        return
    req.record_route()
    req.vars["gateways"] = len(targets)
    # try the cheapest gateway first, the next one when it fails or is slow
    req.relay(targets, mode="serial", timeout=4)


def on_failure(req, reply):
    req.reply(reply.code if reply.code >= 400 else 503, "All gateways failed")
