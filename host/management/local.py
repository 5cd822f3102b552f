"""The management methods over one running `Server` (host/shell/server.py).

Each public coroutine here is one JSON-RPC method (the table in methods.py
names them as Kamailio does); all return plain JSON data. The parent of
`--workers N` answers the same methods with fanout.py's adapter instead,
which asks every worker and merges.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

from host.management.jsonrpc import INVALID_PARAMS, NOT_FOUND, SERVER_ERROR, RpcError
from host.management.statistics import Baseline, flatten, select
from host.services.location import binding_record, canonical_aor
from host.sip.registrar import RegistrarError, live
from host.storage import StoreError


def version() -> str:
    try:
        return metadata.version("babelsip")
    except metadata.PackageNotFoundError:
        return "0+source"


class LocalAdapter:
    """Management methods over one Server (read its state, call its parts)."""

    def __init__(self, server, *, clock=time.time):
        self.server = server
        self.clock = clock
        self.started_at = clock()
        self.baseline = Baseline()

    # ---------------------------------------------------------------- core
    async def core_version(self) -> dict:
        """Name and version of the server, and of what it runs on."""
        import trio
        return {"name": "babelsip", "version": version(), "python": platform.python_version(),
                "trio": trio.__version__}

    async def core_uptime(self) -> dict:
        """When the server started and for how long it has run (seconds)."""
        now = self.clock()
        return {"now": now, "up_since": self.started_at, "uptime": round(now - self.started_at, 3)}

    async def core_info(self) -> dict:
        """Process, listeners, routes folder, store and domains of this core."""
        s = self.server
        store = s.store.statistics() if hasattr(s.store, "statistics") else {}
        return {"version": version(), "pid": os.getpid(), "core_id": s.core_id,
                "listen": [f"{t}:{h}:{p}" for t, (h, p) in s.core.listen.items()] if s.core else [],
                "routes_dir": s.config.routes_dir, "relay_to": s.config.relay_to,
                "domains": list(s.config.names),
                "store": store.get("backend", type(s.store).__name__),
                "workers": 1, "uptime": round(self.clock() - self.started_at, 3),
                **({"worker": s.config.fleet.index} if s.config.fleet is not None else {})}

    # ---------------------------------------------------------- statistics
    def flat_statistics(self) -> dict:
        flat = flatten(self.server.statistics())
        registry = self.server.registry
        if registry is not None:
            for name, r in registry.statistics().items():
                for field in ("events", "fallbacks", "errors", "timeouts", "restarts", "inflight"):
                    flat[f"routes:{name}_{field}"] = getattr(r, field)
                for kind, n in r.decisions.items():
                    flat[f"routes:{name}_decisions_{kind}"] = n
        return flat

    async def stats_get_statistics(self, *names: str) -> dict:
        """Counters as "group:name": all (no argument or "all"), a group
        ("core:"), or names ("core:received")."""
        return select(self.baseline.apply(self.flat_statistics()), _names(names))

    async def stats_reset_statistics(self, *names: str) -> dict:
        """Reset counters (as stats.get_statistics selects them) to zero for
        this API; gauges and the Prometheus counters are not touched."""
        return {"reset": self.baseline.reset(self.flat_statistics(), _names(names))}

    async def tm_stats(self) -> dict:
        """Transactions: in use now, created, retransmissions absorbed."""
        s = self.server
        core = s.core
        if core is None:
            return {}
        st = core.stats
        return {"current": len(core.server_txns), "client_current": len(core.client_txns),
                "created": st.server_txns, "client_created": st.client_txns,
                "retransmissions": st.retransmissions, "unanswered": core.unanswered(),
                "stateless_replies": {str(k): v for k, v in st.stateless.items()},
                "replies_forwarded": st.as_dict()["forwarded_replies"]}

    # -------------------------------------------------------------- routes
    def _registry(self):
        if self.server.registry is None:
            raise RpcError(SERVER_ERROR, "this server serves no routes folder (--relay-to mode)")
        return self.server.registry

    async def routes_list(self) -> dict:
        """Every route: state, generation, runtime, counters, last error (file:line)."""
        status = self._registry().status()
        routes = []
        for name, r in sorted(status["routes"].items()):
            error = r["last_error"]
            routes.append({
                "route": name, "state": r["state"], "generation": r["generation"],
                "runtime": r["runtime"], "file": r["file"], "events": r["events"],
                "decisions": r["decisions"], "fallbacks": r["fallbacks"], "errors": r["errors"],
                "timeouts": r["timeouts"], "restarts": r["restarts"], "inflight": r["inflight"],
                "latency": r.get("latency"),
                "last_error": None if error is None else {
                    "where": f"{error['file']}:{error['line']}" if error["line"] else error["file"],
                    "message": error["message"], "kind": error["kind"], "at": error["at"]},
            })
        return {"routes": routes, "default": status["config"]["default"],
                "config_error": status["config"]["error"], "unrouted": status["unrouted"]}

    async def routes_reload(self, route: str | None = None) -> dict:
        """Reload one route (or routes.toml and all): per route, whether the
        new generation loaded, else the error and the generation still serving."""
        if route is not None and not isinstance(route, str):
            raise RpcError(INVALID_PARAMS, "Invalid params", "route must be a name")
        outcome = await self._registry().reload(route)
        return {"loaded": all(o["loaded"] for o in outcome.values()) if outcome else False,
                "routes": outcome}

    async def routes_workers(self) -> dict:
        """Per route, its runtime's workers (pids, ready, in flight, restarts)."""
        return {"pid": os.getpid(), "routes": self._registry().runtime_statistics()}

    # ---------------------------------------------------- location (ul.*)
    async def ul_dump(self) -> dict:
        """Every address-of-record with its live bindings."""
        store, now = self.server.store, time.time()
        out = {}
        for aor in sorted(await _store(store.aors())):
            found = live(await _store(store.bindings(aor)), now)
            if found:
                out[aor] = [binding_record(b, now) for b in found]
        return {"aors": out, "count": len(out), "contacts": sum(len(v) for v in out.values())}

    async def ul_lookup(self, aor: str) -> dict:
        """The live bindings of one address-of-record."""
        key = _aor(aor)
        now = time.time()
        found = live(await _store(self.server.store.bindings(key)), now)
        if not found:
            raise RpcError(NOT_FOUND, "AoR not found", key)
        return {"aor": key, "contacts": [binding_record(b, now) for b in found]}

    async def ul_rm(self, aor: str) -> dict:
        """Remove every binding of an address-of-record."""
        key = _aor(aor)
        before = await _store(self.server.store.update_bindings(key, lambda cur: ([], list(cur))))
        self._bindings_changed(key, before, [])
        if not before:
            raise RpcError(NOT_FOUND, "AoR not found", key)
        return {"aor": key, "removed": len(before)}

    async def ul_rm_contact(self, aor: str, contact: str) -> dict:
        """Remove one binding (by its Contact URI) of an address-of-record."""
        key = _aor(aor)
        target = contact.strip().strip("<>")

        def change(current):
            kept = [b for b in current if b.contact != target]
            return kept, (list(current), kept)

        before, after = await _store(self.server.store.update_bindings(key, change))
        if len(after) == len(before):
            raise RpcError(NOT_FOUND, "contact not found", f"{key} {target}")
        self._bindings_changed(key, before, after)
        return {"aor": key, "removed": len(before) - len(after), "left": len(after)}

    def _bindings_changed(self, aor, before, after) -> None:
        keepalive = self.server.keepalive
        if keepalive is not None and before:
            keepalive.bindings_changed(aor, before, after)

    # ------------------------------------------------------ dialogs (dlg.*)
    async def dlg_list(self) -> dict:
        """The dialogs the cluster tracks (the store's copy), oldest first."""
        records = await _store(self.server.store.dialogs())
        records.sort(key=lambda r: r.get("created_at") or 0)
        return {"dialogs": records, "count": len(records),
                "confirmed": sum(1 for r in records if r.get("state") == "confirmed"),
                "early": sum(1 for r in records if r.get("state") in ("early", "trying"))}

    async def dlg_end(self, id: str) -> dict:   # noqa: A002 - the parameter's name on the wire
        """End a confirmed call this core tracks: a BYE to each side."""
        core = self.server.core
        actions = core.end_dialog(id) if core is not None and isinstance(id, str) else None
        if actions is None:
            raise RpcError(NOT_FOUND, "no confirmed dialog with this id on this core", id)
        self.server._execute(actions)
        return {"id": id, "ended": True}

    # ------------------------------------------------------------- store.*
    async def store_get(self, key: str) -> dict:
        """A script data value from the key/value store (null when absent)."""
        if not isinstance(key, str):
            raise RpcError(INVALID_PARAMS, "Invalid params", "key must be a string")
        return {"key": key, "value": await _store(self.server.store.get(key))}

    # --------------------------------------------------- status page, metrics
    async def metrics_snapshot(self) -> dict:
        """Every number /metrics shows, as plain data (the parent of several
        workers merges these)."""
        from host.management.metrics import snapshot_of
        ul = await self.ul_dump()
        snap = await snapshot_of(self.server, {"aors": ul["count"], "contacts": ul["contacts"]})
        snap["start_time"] = self.started_at
        return snap

    async def status_summary(self) -> dict:
        """What the status page shows: routes, registrations, calls, counters."""
        routes = (await self.routes_list())["routes"] if self.server.registry is not None else []
        ul = await self.ul_dump()
        dialogs = await self.dlg_list()
        core = self.server.core
        st = core.stats if core is not None else None
        return {"now": self.clock(), "uptime": round(self.clock() - self.started_at, 3),
                "version": version(), "routes": routes,
                "registrations": {"aors": ul["count"], "contacts": ul["contacts"],
                                  "list": [{"aor": a, "contacts": len(c)} for a, c in ul["aors"].items()][:100]},
                "calls": {"active": dialogs["confirmed"], "early": dialogs["early"],
                          "started": st.dialogs if st else 0},
                "requests": dict(st.requests) if st else {}}


def _names(names) -> list[str]:
    flat = []
    for n in names:
        if isinstance(n, list):
            flat.extend(n)
        else:
            flat.append(n)
    if not all(isinstance(n, str) for n in flat):
        raise RpcError(INVALID_PARAMS, "Invalid params", "statistics are named by strings")
    return flat


def _aor(aor) -> str:
    if not isinstance(aor, str) or not aor:
        raise RpcError(INVALID_PARAMS, "Invalid params", "aor must be a SIP URI, e.g. sip:alice@example.com")
    if ":" not in aor:
        aor = "sip:" + aor
    try:
        return canonical_aor(aor)
    except RegistrarError as exc:
        raise RpcError(INVALID_PARAMS, "Invalid params", f"{aor}: {exc.reason}") from None


async def _store(call):
    try:
        return await call
    except StoreError as exc:
        raise RpcError(SERVER_ERROR, "store error", str(exc)) from None
