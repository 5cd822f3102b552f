"""Route handles: the route chosen for one transaction, pinned to one
generation, and the two ways the engine runs a hook on it.

    decision = await handle.handle(hook, event)   # any runtime; never raises (but trio.Cancelled)
    queued = handle.submit(hook, event, done)     # a runtime that needs no task (Lua, line-JSON); False: use handle()

Both count the same: an event that reaches the script counts in
`events` and in its decision kind, a failure in `fallbacks` (and `errors`,
or `timeouts` for a deadline), a hook the script lacks counts nothing. The
handle reads and writes the route's record directly (records.py) and asks
the registry through its public handle API for the rest: `answer_unrouted`,
`script_failed` and `generation_released`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import trio

from host.routes.records import RESTARTING, Generation, RouteRecord
from host.routes.runtime import ScriptError
from host.routes.settings import Fallback
from host.routes.verbs import ON_REPLY, Decision

if TYPE_CHECKING:
    from host.routes.registry import RouteRegistry

HUNG_AFTER = 3            # deadline overruns in a row that count as a hung runtime


def fallback_decision(hook: str, fallback: Fallback) -> Decision:
    """What an event gets when its route cannot decide."""
    # A failed on_reply has nothing to answer: the reply goes on unchanged.
    return Decision() if hook == ON_REPLY else fallback.decision()


async def _outcome(call) -> Decision | Exception:
    """The runtime's answer or the exception it raised (cancellation passes)."""
    try:
        return await call
    except Exception as exc:
        return exc


class RouteHandle:
    """The route chosen for one transaction, pinned to one generation."""

    __slots__ = ("route", "_registry", "_route", "_gen")

    def __init__(self, registry: "RouteRegistry", name: str, route: RouteRecord | None,
                 gen: Generation | None):
        self.route, self._registry, self._route, self._gen = name, registry, route, gen

    @property
    def generation(self) -> Generation | None:
        return self._gen

    def release(self) -> None:
        """Unpin the generation (the transaction is over). Idempotent; also
        done when the handle is garbage collected."""
        gen, self._gen = self._gen, None
        if gen is not None:
            gen.handles -= 1
            self._registry.generation_released(gen)

    def __del__(self):
        gen = self._gen
        if gen is not None:   # only a counter: no trio calls from a finalizer
            self._gen = None
            gen.handles -= 1

    async def handle(self, hook: str, event: dict) -> Decision:
        route = self._route
        if route is None:
            return self._registry.answer_unrouted(self.route, hook)
        gen = route.usable_generation(self._gen)
        settings = route.settings
        # One deadline covers waiting for a restart and running the hook.
        with trio.move_on_after(settings.deadline):
            if gen is None and route.state == RESTARTING:
                await route.ready.wait()
                gen = route.usable_generation(None)
            if gen is None:
                return self._no_generation(route, hook)
            if hook not in gen.runtime.hooks:
                return Decision()
            self._begin(route, gen)
            started = time.perf_counter()
            try:
                return self._settle(route, gen, hook, await _outcome(gen.runtime.handle(hook, event)), event)
            finally:
                route.latency.observe(time.perf_counter() - started)
                self._done(gen)
        # The deadline passed (while waiting for a restart or inside the hook).
        route.timeouts += 1
        if gen is None or not gen.usable:   # still restarting
            return self._no_generation(route, hook)
        gen.overruns += 1
        return self._registry.script_failed(
            route, gen, hook, "timeout", f"{hook} exceeded its deadline of {settings.deadline:g} s",
            damaged=gen.overruns >= HUNG_AFTER, call_id=_call_id(event))

    def submit(self, hook: str, event: dict, done: Callable[[Decision], None]) -> bool:
        """`handle` for a runtime that answers without a task per event
        (Lua's thread, a line-JSON worker pool): queue the event and return True; done(decision) follows on
        the trio thread (possibly before this returns), with the fallback
        when the script failed — never an exception. The runtime keeps the
        route's deadline. False, and `done` is never called, when the event
        must take `handle` instead (restarting, no current generation, a
        runtime without submit or one that declines the event now)."""
        found = self._runnable("submit")
        if found is None:
            return False
        route, gen, run = found
        if hook not in gen.runtime.hooks:
            done(Decision())
            return True
        self._begin(route, gen)
        answered = declined = False
        started = time.perf_counter()

        def finish(result) -> None:
            nonlocal answered
            if answered or declined:   # a runtime answering twice: the first answer stands
                return
            answered = True
            route.latency.observe(time.perf_counter() - started)
            if isinstance(result, ScriptError) and result.kind == "timeout":
                route.timeouts += 1   # late in its queue, or abandoned
            try:
                decision = self._settle(route, gen, hook, result, event)
            finally:
                self._done(gen)
            done(decision)

        try:
            queued = run(hook, event, time.monotonic() + route.settings.deadline, finish)
        except Exception as exc:   # a runtime's bug: the event still gets its answer
            if answered:
                raise
            finish(exc)
            return True
        if queued is False and not answered:
            # Nothing was queued (every worker busy, say): undo _begin; the
            # caller takes handle(), which waits for room.
            declined = True
            route.events -= 1
            gen.inflight -= 1
            return False
        return True

    # ---- accounting shared by the three paths -------------------------------

    def _runnable(self, entry: str):
        """(route, generation, its runtime's `entry`) for an event that may
        skip the async path, or None when it must take `handle`."""
        route = self._route
        if route is None:
            return None
        gen = route.usable_generation(self._gen)
        if gen is None:
            return None
        run = getattr(gen.runtime, entry)
        return None if run is None else (route, gen, run)

    @staticmethod
    def _begin(route: RouteRecord, gen: Generation) -> None:
        route.events += 1
        gen.inflight += 1

    def _done(self, gen: Generation) -> None:
        gen.inflight -= 1
        self._registry.generation_released(gen)

    @staticmethod
    def _no_generation(route: RouteRecord, hook: str) -> Decision:
        route.events += 1
        route.fallbacks += 1
        return fallback_decision(hook, route.settings.fallback)

    def _settle(self, route: RouteRecord, gen: Generation, hook: str, result, event) -> Decision:
        """The decision for an event that ran: the runtime's Decision,
        counted, or the fallback for what went wrong."""
        reg = self._registry
        if isinstance(result, ScriptError):
            # A pool heals one dead worker itself; only a runtime that says
            # it is damaged (a broken Lua state, a failed pool) is replaced.
            return reg.script_failed(route, gen, hook, result.kind, result.message, file=result.file,
                                     line=result.line, damaged=result.damaged, call_id=_call_id(event))
        if isinstance(result, Exception):
            # The supervisor is where a runtime's bug stops.
            return reg.script_failed(route, gen, hook, "crash", f"runtime raised {result!r}", damaged=True,
                                     call_id=_call_id(event))
        if not isinstance(result, Decision):
            return reg.script_failed(route, gen, hook, "protocol",
                                     f"runtime returned {type(result).__name__}, not a Decision",
                                     damaged=True)
        gen.overruns = 0
        kind = result.verb or "none"
        route.decisions[kind] = route.decisions.get(kind, 0) + 1
        return result


def _call_id(event) -> str | None:
    """The Call-ID a failure's log line carries (host/logs.py)."""
    return event.get("call_id") if isinstance(event, dict) else None
