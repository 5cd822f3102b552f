"""The route registry: route files become supervised, hot-reloaded generations.

One `RouteRegistry` serves one routes folder (which files are routes:
discovery.py; its records: records.py). The SIP engine asks it two things:

    handle = registry.select(event)            # sync: table lookup, pins a generation
    decision = await handle.handle(hook, event)  # never raises (but trio.Cancelled)

and keeps `handle` for the transaction, so on_failure/on_reply run on the
generation that ran on_request. For a runtime that needs no task per event
(Lua, line-JSON pools) the engine calls `handle.submit(hook, event, done)`
instead: no task, no cancel scope; done(decision) follows on the trio thread,
and False means "use handle()" (restarting, a runtime that has no submit, or
every worker busy). `handle.release()`
(or dropping the handle) unpins it. Handles (handle.py) count events on the
route's record and call back only through the registry's public handle API:
`answer_unrouted`, `script_failed`, `generation_released`.

Generations. Every successful load of a route file is a new generation. It is
started (compiled, hooks checked) before it replaces the old one; the swap is a
dict assignment between two messages. A file that fails to load never replaces
a working generation: the old keeps serving and the error (file, line, message)
is logged on "babelsip.routes" and kept in the route's status. A replaced
generation is closed once no event runs on it and no handle pins it (or after
`linger` seconds, longer than an INVITE's Timer C of 3 min, RFC 3261 §16.6).

What a call gets when its route cannot decide (the route's *fallback*, see
settings.py; default 500 Server Internal Error):
  * script error, deadline overrun, garbage from the runtime: the fallback;
  * the route was deleted, never loaded, or has failed: the fallback configured
    for that route name in routes.toml (else the default fallback) — a deleted
    route is not a 404, the caller's request was fine;
  * in on_reply there is nothing to answer: the reply is forwarded (no decision);
  * a hook the script does not define: "no decision" at once, the engine does
    its default (verbs.py).

Supervision. A ScriptError with `damaged`, any unexpected exception, or
HUNG_AFTER (handle.py) deadline overruns in a row mark the runtime damaged:
it is never used again and a fresh runtime of the same file is started in the
background, under the route's RestartPolicy. Events arriving during the restart
wait for it within their own deadline, then get the fallback (a Lua state
restarts in milliseconds, so waiting saves those calls). Past the restart
budget the route is *failed*: it answers its fallback and is retried every
`retry_every` seconds and on its next file change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Callable

import trio

from host.routes.discovery import changed_routes, runtime_of_file, scan_routes
from host.routes.handle import RouteHandle, fallback_decision
from host.routes.records import (ABSENT, FAILED, OK, RESTARTING, Generation, RouteError, RouteRecord,
                                 RouteStatistics)
from host.routes.runtime import LoadError, Runtime, RuntimeSpec
from host.routes.runtimes_table import default_runtime_factory
from host.routes.settings import ConfigError, Fallback, RoutesConfig, RouteSettings, load_config, route_name
from host.routes.verbs import ON_REQUEST, Decision
from host.routes.watcher import watch_folder
from host.supervision.policy import GIVE_UP, next_retry, plan_restart

log = logging.getLogger("babelsip.routes")

DELETE_GRACE = 0.15       # a save by rename may briefly remove the file: look twice
LOG_EVERY = 1.0           # at most one script-error log line per route per second


class RouteRegistry:
    """Loads, supervises and hot-reloads the routes of one folder (module doc)."""

    def __init__(self, routes_dir: Path, *, default_fallback: Fallback | None = None,
                 defaults: RouteSettings | None = None,
                 runtime_factory: Callable[[RuntimeSpec], Runtime] = default_runtime_factory,
                 load_timeout: float = 30.0, close_timeout: float = 5.0,
                 linger: float = 200.0, housekeeping_every: float = 0.25):
        # Absolute: runtimes hand file paths to workers in other directories.
        self.directory = Path(os.path.abspath(routes_dir))
        # Settings of routes routes.toml does not mention; default_fallback wins over defaults.fallback.
        self.defaults = defaults or RouteSettings()
        if default_fallback is not None:
            self.defaults = dataclasses.replace(self.defaults, fallback=default_fallback)
        self.config = RoutesConfig(defaults=self.defaults)
        self.config_error: RouteError | None = None
        self.unrouted: dict[str, int] = {}
        self._factory = runtime_factory
        self._load_timeout, self._close_timeout = load_timeout, close_timeout
        self._linger, self._housekeeping_every = linger, housekeeping_every
        self._routes: dict[str, RouteRecord] = {}
        self._retired: set[Generation] = set()
        self._nursery: trio.Nursery | None = None

    # ---- the engine's side -------------------------------------------------

    def select(self, event: dict) -> RouteHandle:
        """Pick the route for an initial request and pin its current generation."""
        name = self.config.table.select(event)
        route = self._routes.get(name)
        gen = route.current if route is not None else None
        if gen is not None:
            gen.handles += 1
        return RouteHandle(self, name, route, gen)

    def statistics(self) -> dict[str, RouteStatistics]:
        return {name: r.statistics() for name, r in sorted(self._routes.items())}

    def status(self) -> dict:
        """Everything an operator asks about, as plain data (management API)."""
        def err(e):
            return None if e is None else {"file": e.file, "line": e.line, "message": e.message,
                                           "kind": e.kind, "at": e.at}
        routes = {}
        for name, s in self.statistics().items():
            d = dict(s.__dict__)
            d["last_error"], d["load_error"] = err(s.last_error), err(s.load_error)
            routes[name] = d
        return {"directory": str(self.directory),
                "config": {"file": self.config.file, "error": err(self.config_error),
                           "default": self.config.table.default},
                "routes": routes, "unrouted": dict(self.unrouted),
                "retired_generations": len(self._retired)}

    async def reload(self, route: str | None = None) -> dict[str, dict]:
        """Reload one route (or routes.toml and every route) now, as a file
        change would. Returns, per route, whether a new generation loaded
        (else the error that kept the old one serving) — the management
        API's `routes.reload` answer."""
        if route is None:
            names = self._reload_config() | set(scan_routes(self.directory)) | set(self._routes)
        else:
            names = {route_name(route)}
        before = {n: r.last_number for n, r in self._routes.items()}
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(self._load_route, name, True)
        outcome = {}
        for name in sorted(names):
            record = self._routes.get(name)
            if record is None:
                outcome[name] = {"loaded": False, "generation": None, "state": ABSENT,
                                 "error": {"file": str(self.directory / name), "line": None,
                                           "message": "no such route file"}}
                continue
            loaded = record.last_number != before.get(name, 0) and record.load_error is None
            error = record.load_error
            outcome[name] = {"loaded": loaded, "state": record.state,
                             "generation": record.current.number if record.current else None,
                             "error": None if loaded or error is None else
                             {"file": error.file, "line": error.line, "message": error.message}}
        return outcome

    def runtime_statistics(self) -> dict[str, dict]:
        """Each route's current runtime as it reports itself (workers, pids,
        in flight): the management API's `routes.workers`."""
        out = {}
        for name, record in sorted(self._routes.items()):
            gen = record.current
            out[name] = {"generation": gen.number if gen else None,
                         "runtime": gen.spec.runtime if gen else None,
                         "pool": gen.spec.pool if gen else None,
                         **(gen.runtime.statistics() if gen else {})}
        return out

    # ---- lifetime ------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load the folder, report started, then follow its changes until
        cancelled. A bad routes.toml at startup raises ConfigError (there is
        no working version to keep); a bad route file only fails that route."""
        if not self.directory.is_dir():
            raise ConfigError(self.directory, None, "routes folder not found")
        self.config = load_config(self.directory, known_routes=set(scan_routes(self.directory)),
                                  defaults=self.defaults)
        send, receive = trio.open_memory_channel(64)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # Watch before scanning, so nothing written meanwhile is missed.
                await nursery.start(watch_folder, self.directory, send)
                async with trio.open_nursery() as loading:
                    for name in scan_routes(self.directory):
                        loading.start_soon(self._load_route, name, True)
                states = {n: r.state for n, r in self._routes.items()}
                log.info("routes loaded from %s: %s", self.directory,
                         ", ".join(f"{n} ({s})" for n, s in sorted(states.items())) or "none")
                if not states:
                    inner = Path(self.directory) / "routes"
                    hint = f" (did you mean {inner}?)" if inner.is_dir() else ""
                    log.warning("no route in %s%s: every request is answered 500 until one "
                                "is added", self.directory, hint)
                nursery.start_soon(self._housekeeping)
                task_status.started()
                async with receive:
                    async for paths in receive:
                        self._apply_changes(paths)
        finally:
            self._nursery = None
            gens = list(self._retired) + [r.current for r in self._routes.values() if r.current]
            self._retired.clear()
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as closing:
                    for gen in gens:
                        closing.start_soon(self._close_generation, gen)

    def _apply_changes(self, paths: set[Path]) -> None:
        names, config_changed = changed_routes(paths)
        if config_changed or (self.config_error is not None and names):
            # A routes.toml that named a route before its file existed is
            # retried when the folder's files change.
            names |= self._reload_config()
        for name in names:
            self._nursery.start_soon(self._load_route, name, False)

    def _reload_config(self) -> set[str]:
        """Apply routes.toml again; returns the routes whose runtime settings
        changed (they need a new generation)."""
        try:
            config = load_config(self.directory, known_routes=set(scan_routes(self.directory)),
                                 defaults=self.defaults)
        except ConfigError as exc:
            self.config_error = RouteError(exc.file, exc.line, exc.message, "config", time.time())
            log.error("%s — keeping the previous routes.toml", exc)
            return set()
        self.config, self.config_error = config, None
        log.info("routes.toml applied: %r", config.table)
        changed = set()
        for name, route in self._routes.items():
            new = config.settings(name)
            if new.runtime_fields() != route.settings.runtime_fields():
                changed.add(name)
            route.settings = new   # fallback, restart policy: from the next event on
        return changed

    # ---- loading and swapping generations ---------------------------------------

    async def _load_route(self, name: str, force: bool) -> None:
        route = self._routes.get(name)
        if route is None:
            if not scan_routes(self.directory).get(name):
                return   # not a route file (README.md, a deleted stranger)
            route = self._routes[name] = RouteRecord(name, self.config.settings(name))
        async with route.lock:
            files = scan_routes(self.directory).get(name, [])
            if not files and route.current is not None:
                await trio.sleep(DELETE_GRACE)
                files = scan_routes(self.directory).get(name, [])
            if not files:
                self._remove(route)
                return
            if len(files) > 1:
                names = ", ".join(p.name for p in files)
                self._load_failed(route, LoadError(files[0], None,
                                  f"two files for route {name!r}: {names}; remove all but one"))
                return
            path = files[0]
            try:
                digest = hashlib.sha256(path.read_bytes()).digest()
            except OSError:
                return   # gone between scan and read: the watcher reports what follows
            settings = route.settings = self.config.settings(name)
            spec = RuntimeSpec(route=name, path=path, runtime=settings.runtime or runtime_of_file(path) or "exec",
                               deadline=settings.deadline, pool=settings.pool,
                               memory_mb=settings.memory_mb, options=settings.options,
                               shared_store=settings.shared_store, confine=settings.confine)
            cur = route.current
            if not force and cur is not None and cur.usable and cur.digest == digest and cur.spec == spec:
                return   # same content and settings: nothing to do (touch, duplicate event)
            try:
                runtime = await self._start_runtime(spec, unhurried=cur is not None and cur.usable)
            except LoadError as exc:
                self._load_failed(route, exc)
                return
            route.last_number += 1
            self._install(route, Generation(name, route.last_number, runtime, spec, digest))
            route.path, route.load_error, route.history = path, None, ()
            log.info("route %s: generation %d loaded from %s (%s)", name, route.last_number,
                     path.name, spec.runtime, extra=runtime.log_fields)

    async def _start_runtime(self, spec: RuntimeSpec, unhurried: bool = False) -> Runtime:
        """A started runtime, or LoadError. Never leaves a half-started one
        open. `unhurried`: a generation serves meanwhile (Runtime.unhurried)."""
        if spec.confine is not None:   # by its file's extension: routes.toml could not tell
            from host.privileges.confinement import ConfinementError, check_runtime
            try:
                check_runtime(spec.runtime)
            except ConfinementError as exc:
                raise LoadError(spec.path, None, str(exc)) from None
        try:
            runtime = self._factory(spec)
        except LoadError:
            raise
        except Exception as exc:
            raise LoadError(spec.path, None, f"cannot create the {spec.runtime} runtime: {exc!r}") from None
        runtime.unhurried = unhurried
        try:
            with trio.fail_after(self._load_timeout):
                await runtime.start()
            if ON_REQUEST not in runtime.hooks:
                raise LoadError(spec.path, None, f"no {ON_REQUEST} hook defined")
        except BaseException as exc:
            with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout):
                try:
                    await runtime.aclose()
                except Exception:
                    log.exception("route %s: closing a runtime that failed to start", spec.route)
            if isinstance(exc, LoadError):
                raise
            if isinstance(exc, trio.TooSlowError):
                raise LoadError(spec.path, None, f"did not start within {self._load_timeout:g} s") from None
            if isinstance(exc, Exception):
                raise LoadError(spec.path, None, f"start failed: {exc!r}") from None
            raise
        return runtime

    def _install(self, route: RouteRecord, gen: Generation) -> None:
        gen.runtime.log_fields.update(route=route.name, generation=gen.number)
        old, route.current = route.current, gen   # the atomic swap
        route.state, route.retry_at = OK, None
        route.ready.set()
        if old is not None:
            self._retire(old)

    def _load_failed(self, route: RouteRecord, exc: LoadError) -> None:
        err = RouteError(exc.file, exc.line, exc.message, "load", time.time())
        repeat = route.load_error is not None and route.load_error.message == err.message
        route.load_error = route.last_error = err
        route.errors += 1
        if route.current is not None:
            log.error("route %s: %s — the previous generation keeps serving", route.name, exc,
                      extra={"route": route.name, "generation": route.current.number})
        else:
            (log.debug if repeat else log.error)("route %s: %s — answering its fallback", route.name, exc,
                                                 extra={"route": route.name})
            self._mark_failed(route)

    def _remove(self, route: RouteRecord) -> None:
        if route.current is not None:
            self._retire(route.current)
            log.info("route %s: file removed, route unloaded", route.name)
        route.current, route.path, route.load_error = None, None, None
        route.state, route.retry_at = ABSENT, None
        route.ready.set()

    def _mark_failed(self, route: RouteRecord) -> None:
        route.state = FAILED
        route.retry_at = next_retry(route.settings.restart, trio.current_time())
        route.ready.set()

    # ---- the handles' side (handle.py), and supervision -------------------------

    def answer_unrouted(self, name: str, hook: str) -> Decision:
        """The answer for an event of a route name with no record at all
        (never loaded, no file): counted, and its configured fallback."""
        self.unrouted[name] = self.unrouted.get(name, 0) + 1
        return fallback_decision(hook, self.config.settings(name).fallback)

    def generation_released(self, gen: Generation) -> None:
        """A handle or an event let go of `gen`: close it if it is retired
        and nothing else holds it."""
        if gen.retired_at is not None:
            self._close_if_done(gen)

    def script_failed(self, route: RouteRecord, gen: Generation, hook: str, kind: str, message: str, *,
                      file: str | None = None, line: int | None = None, damaged: bool = False,
                      call_id: str | None = None) -> Decision:
        """An event failed on `gen` (kind: error|budget|memory|crash|protocol|timeout):
        count and log it, replace the runtime if `damaged`, and return the
        route's fallback."""
        err = RouteError(file or str(gen.spec.path), line, message, kind, time.time())
        route.last_error = err
        route.fallbacks += 1
        if kind != "timeout":
            route.errors += 1
        now = trio.current_time()
        if now - route.logged_at >= LOG_EVERY:
            more = f" (+{route.unlogged} more since)" if route.unlogged else ""
            where = f"{err.file}:{line}" if line else err.file
            log.warning("route %s#%d %s: %s: %s [%s]%s", route.name, gen.number, hook, where, message, kind, more,
                        extra={"route": route.name, "generation": gen.number, "call_id": call_id})
            route.logged_at, route.unlogged = now, 0
        else:
            route.unlogged += 1
        if damaged:
            self._damaged(route, gen)
        return fallback_decision(hook, route.settings.fallback)

    def _damaged(self, route: RouteRecord, gen: Generation) -> None:
        if gen.damaged:
            return
        gen.damaged = True
        self._retire(gen)
        if route.current is not gen:
            return   # already replaced by a reload
        route.current = None
        self._restart_or_give_up(route, gen.spec, gen.digest, gen.number)

    def _restart_or_give_up(self, route: RouteRecord, spec: RuntimeSpec, digest: bytes, number: int) -> bool:
        plan = plan_restart(route.settings.restart, route.history, trio.current_time())
        route.history = plan.history
        if plan.verdict is GIVE_UP:
            policy = route.settings.restart
            log.error("route %s: more than %d restarts in %g s — failed; answering its fallback, "
                      "retrying every %g s and on file change", route.name, policy.intensity,
                      policy.period, policy.retry_every)
            self._mark_failed(route)
            return False
        route.restarts += 1
        if route.state != RESTARTING:
            route.state, route.ready = RESTARTING, trio.Event()
        if self._nursery is not None:
            self._nursery.start_soon(self._restart, route, spec, digest, number, plan.delay)
        return True

    async def _restart(self, route: RouteRecord, spec: RuntimeSpec, digest: bytes, number: int,
                       delay: float) -> None:
        """A fresh runtime of the same file and settings (same generation number),
        after the policy's backoff."""
        if delay:
            await trio.sleep(delay)
        async with route.lock:
            if route.current is not None or route.state != RESTARTING:
                return   # a reload got there first
            try:
                runtime = await self._start_runtime(spec)
            except LoadError as exc:
                route.last_error = route.load_error = RouteError(exc.file, exc.line, exc.message,
                                                                 "load", time.time())
                route.errors += 1
                log.error("route %s: restart failed: %s", route.name, exc)
                if self._restart_or_give_up(route, spec, digest, number):
                    route.state = RESTARTING   # the new attempt runs once we release the lock
                return
            self._install(route, Generation(route.name, number, runtime, spec, digest))
            log.info("route %s: runtime restarted (generation %d)", route.name, number)

    async def _housekeeping(self) -> None:
        """Close retired generations nobody uses; retry failed routes."""
        while True:
            await trio.sleep(self._housekeeping_every)
            now = trio.current_time()
            for gen in list(self._retired):
                self._close_if_done(gen, now)
            for route in self._routes.values():
                if route.state == FAILED and route.retry_at is not None and now >= route.retry_at:
                    route.retry_at = next_retry(route.settings.restart, now)
                    log.info("route %s: retrying after failure", route.name)
                    self._nursery.start_soon(self._load_route, route.name, True)

    def _retire(self, gen: Generation) -> None:
        if gen.retired_at is None:
            gen.retired_at = trio.current_time()
            self._retired.add(gen)
            self._close_if_done(gen)

    def _close_if_done(self, gen: Generation, now: float | None = None) -> None:
        now = trio.current_time() if now is None else now
        if self._nursery is not None and gen.closable(now, self._linger):
            gen.closing = True
            self._retired.discard(gen)
            self._nursery.start_soon(self._close_generation, gen)

    async def _close_generation(self, gen: Generation) -> None:
        gen.closing = True
        with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout) as scope:
            try:
                await gen.runtime.aclose()
            except Exception:
                log.exception("route %s: closing generation %d failed", gen.route, gen.number)
        if scope.cancelled_caught:
            log.warning("route %s: generation %d did not close within %g s", gen.route, gen.number,
                        self._close_timeout)
