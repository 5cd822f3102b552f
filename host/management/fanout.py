"""The management methods for the parent of several core processes
(`--workers N`): each method is asked of every worker, over the worker's
own JSON-RPC UNIX socket, and the answers merged into one — so `babelsip
ctl` and one Prometheus scrape see the whole server.

How answers merge:
  * counters (stats.*, tm.stats, metrics, route events...) are summed;
  * lists are concatenated; where summing makes no sense (a route's state
    and generation, a pid, a reload outcome) each worker's answer is kept
    under a `workers` key, in the order the endpoints were given;
  * ul.*, dlg.list and store.get read the shared store: one worker answers;
  * dlg.end asks the workers in turn until the one that tracks the call ends it.
A worker that does not answer makes the method fail with its socket named:
a merged answer missing one worker would be wrong without saying so.
"""

from __future__ import annotations

import orjson
import trio

from host.management.jsonrpc import NOT_FOUND, SERVER_ERROR, RpcError, request
from host.management.unix import call_unix


def merge_sum(a, b):
    """Numbers added, dicts merged key by key, anything else: the first."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge_sum(out[k], v) if k in out else v
        return out
    return a


def merge_latency(a: dict | None, b: dict | None) -> dict | None:
    """Two LatencyHistogram snapshots with the same bounds: counts added."""
    if not a or not b:
        return a or b
    return {"buckets": [[x[0], x[1] + y[1]] for x, y in zip(a["buckets"], b["buckets"])],
            "sum": a["sum"] + b["sum"], "count": a["count"] + b["count"]}


ROUTE_SUMMED = ("events", "fallbacks", "errors", "timeouts", "restarts", "inflight")


def merge_routes(per_worker: list[list[dict]]) -> list[dict]:
    """routes.list's rows from every worker: counters summed per route,
    state/generation/last error per worker under `workers`."""
    merged: dict[str, dict] = {}
    for index, rows in enumerate(per_worker):
        for row in rows:
            name = row["route"]
            detail = {"worker": index, "state": row["state"], "generation": row["generation"],
                      "last_error": row["last_error"]}
            m = merged.get(name)
            if m is None:
                m = merged[name] = {**row, "decisions": dict(row["decisions"]), "workers": []}
            else:
                for field in ROUTE_SUMMED:
                    m[field] += row[field]
                m["decisions"] = merge_sum(m["decisions"], row["decisions"])
                m["latency"] = merge_latency(m.get("latency"), row.get("latency"))
                if row["state"] != "ok":
                    m["state"] = row["state"]          # the worst shows
                m["last_error"] = m["last_error"] or row["last_error"]
            m["workers"].append(detail)
    return [merged[n] for n in sorted(merged)]


class FanoutAdapter:
    """The adapter interface of local.py, answered by N workers (module doc)."""

    def __init__(self, endpoints: list[str], *, timeout: float = 10.0):
        if not endpoints:
            raise ValueError("a fan-out needs at least one worker endpoint")
        self.endpoints = list(endpoints)
        self.timeout = timeout

    async def _ask(self, index: int, method: str, params) -> object:
        path = self.endpoints[index]
        try:
            raw = await call_unix(path, request(method, params), self.timeout)
        except (OSError, trio.TooSlowError) as exc:
            raise RpcError(SERVER_ERROR, "worker not answering", f"worker {index} ({path}): {exc}") from None
        answer = orjson.loads(raw)
        if "error" in answer:
            err = answer["error"]
            raise RpcError(err["code"], err["message"], err.get("data"))
        return answer["result"]

    async def _all(self, method: str, params=()) -> list:
        results: list = [None] * len(self.endpoints)
        errors: list[RpcError] = []

        async def one(i):
            try:
                results[i] = await self._ask(i, method, list(params))
            except RpcError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(len(self.endpoints)):
                nursery.start_soon(one, i)
        if errors:
            raise errors[0]
        return results

    async def _one(self, method: str, params=()):
        return await self._ask(0, method, list(params))

    # ------------------------------------------------------------- core.*
    async def core_version(self) -> dict:
        """Name and version of the server, and of what it runs on."""
        return await self._one("core.version")

    async def core_uptime(self) -> dict:
        """When the server started and for how long it has run (seconds)."""
        results = await self._all("core.uptime")
        first = min(results, key=lambda r: r["up_since"])
        return {**first, "workers": results}

    async def core_info(self) -> dict:
        """Process, listeners, routes folder, store and domains, per worker."""
        results = await self._all("core.info")
        return {**results[0], "workers": len(results), "per_worker": results}

    # ----------------------------------------------------- stats, tm, metrics
    async def stats_get_statistics(self, *names: str) -> dict:
        """Counters as "group:name", summed over the workers."""
        return _sum(await self._all("stats.get_statistics", names))

    async def stats_reset_statistics(self, *names: str) -> dict:
        """Reset counters on every worker."""
        results = await self._all("stats.reset_statistics", names)
        return {"reset": results[0]["reset"], "workers": len(results)}

    async def tm_stats(self) -> dict:
        """Transactions over every worker (summed)."""
        return _sum(await self._all("tm.stats"))

    async def metrics_snapshot(self) -> dict:
        """Every worker's numbers, summed; registrations from the store once."""
        snaps = await self._all("metrics.snapshot")
        merged = {k: v for k, v in snaps[0].items()}
        for snap in snaps[1:]:
            for key, value in snap.items():
                if key in ("registrations", "start_time", "workers", "routes"):
                    continue
                merged[key] = merge_sum(merged[key], value)
        routes: dict = {}
        for snap in snaps:
            for name, r in snap["routes"].items():
                if name not in routes:
                    routes[name] = dict(r)
                    continue
                m = routes[name]
                latency = merge_latency(m.get("latency"), r.get("latency"))
                routes[name] = {**merge_sum(m, {k: v for k, v in r.items() if k not in ("latency", "up")}),
                                "latency": latency, "up": min(m["up"], r["up"])}
        merged["routes"] = routes
        merged["workers"] = len(snaps)
        merged["start_time"] = min(s["start_time"] for s in snaps)
        return merged

    # -------------------------------------------------------------- routes.*
    async def routes_list(self) -> dict:
        """Every route, counters summed; state and last error per worker."""
        results = await self._all("routes.list")
        return {"routes": merge_routes([r["routes"] for r in results]),
                "default": results[0]["default"],
                "config_error": next((r["config_error"] for r in results if r["config_error"]), None),
                "unrouted": _sum([r["unrouted"] for r in results])}

    async def routes_reload(self, route: str | None = None) -> dict:
        """Reload on every worker; loaded only when every worker loaded."""
        results = await self._all("routes.reload", [] if route is None else [route])
        return {"loaded": all(r["loaded"] for r in results), "routes": results[0]["routes"],
                "workers": results}

    async def routes_workers(self) -> dict:
        """Each worker process's route runtimes."""
        return {"workers": await self._all("routes.workers")}

    # -------------------------------------------- store-backed: one worker
    async def ul_dump(self) -> dict:
        """Every address-of-record with its live bindings."""
        return await self._one("ul.dump")

    async def ul_lookup(self, aor: str) -> dict:
        """The live bindings of one address-of-record."""
        return await self._one("ul.lookup", [aor])

    async def ul_rm(self, aor: str) -> dict:
        """Remove every binding of an address-of-record."""
        return await self._one("ul.rm", [aor])

    async def ul_rm_contact(self, aor: str, contact: str) -> dict:
        """Remove one binding (by its Contact URI) of an address-of-record."""
        return await self._one("ul.rm_contact", [aor, contact])

    async def dlg_list(self) -> dict:
        """The dialogs the cluster tracks (the store's copy)."""
        return await self._one("dlg.list")

    async def dlg_end(self, id: str) -> dict:   # noqa: A002 - the parameter's name on the wire
        """End a confirmed call: asked of each worker until its owner ends it."""
        for index in range(len(self.endpoints)):
            try:
                result = await self._ask(index, "dlg.end", [id])
            except RpcError as exc:
                if exc.code == NOT_FOUND:
                    continue
                raise
            return {**result, "worker": index}
        raise RpcError(NOT_FOUND, "no confirmed dialog with this id on any worker", id)

    async def store_get(self, key: str) -> dict:
        """A script data value from the key/value store (null when absent)."""
        return await self._one("store.get", [key])

    async def status_summary(self) -> dict:
        """What the status page shows, for the whole server."""
        results = await self._all("status.summary")
        first = results[0]
        return {**first, "routes": merge_routes([r["routes"] for r in results]),
                "calls": {**first["calls"], "started": sum(r["calls"]["started"] for r in results)},
                "requests": _sum([r["requests"] for r in results]), "workers": len(results)}


def _sum(results: list):
    out = results[0]
    for r in results[1:]:
        out = merge_sum(out, r)
    return out
