"""What the stdio and TCP runtimes share: a set of slots, each keeping one
live `Session` (a worker process or a connection to a logic server) up,
restarting it with backoff, and a dispatcher choosing a session per event.

Restarts follow `WORKER_RESTART`, a `RestartPolicy` decided by the same
`plan_restart` as the route registry's (host.supervision): each slot keeps the
times of its recent restarts; a restart that fits the budget waits its
backoff; past the budget the route is failed (when no other slot has a live
session), so events fail fast and the registry replaces the runtime under the
route's own policy, while the slot keeps retrying every `retry_every`. A
remote logic server that is down therefore costs one connection attempt per
`retry_every`, not a busy loop.

Task model: `start()` spawns one trio *system task* that owns a nursery with
one supervising task per slot, and returns once the slots have started (or
raises LoadError). The runtime's tasks therefore outlive the caller of
`start()` without the registry passing a nursery around; `aclose()` drains,
stops the workers and waits for that task to end. When the trio run ends
first, the system task is cancelled and the workers are killed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from host.routes.verbs import Decision
from host.storage import Store, shared_store
from host.supervision.policy import GIVE_UP, RestartPolicy, backoff_delay, plan_restart
from host.routes.runtime import LoadError, Runtime, RuntimeSpec, ScriptError
from runtimes.jsonline.codec import MAX_LINE
from runtimes.jsonline.session import HandshakeError, Overruns, Session

# Defaults, overridable per route in routes.toml options.
MAX_IN_FLIGHT = 256     # per worker; beyond it handle() waits (backpressure)
PING_INTERVAL = 1.0     # seconds; two missed pongs = hung (the rule)
START_TIMEOUT = 10.0    # hello -> ready; Java's JVM start fits well inside
GRACE = 2.0             # shutdown -> exit before SIGTERM, then SIGTERM -> SIGKILL
# The registry's budget (5 restarts in 10 s, 50 ms backoff doubling) for each
# worker or connection; out of budget, the slot is tried every 5 s, the cap
# the pool's backoff always had (a down logic server is probed that often).
WORKER_RESTART = RestartPolicy(intensity=5, period=10.0, retry_every=5.0, backoff=0.05, max_backoff=5.0)

log = logging.getLogger("babelsip.runtimes")


def restart_delay(failures: int) -> float:
    """The pool's backoff after `failures` restarts in a row (WORKER_RESTART)."""
    return backoff_delay(WORKER_RESTART, failures)


@dataclass
class Outcome:
    ready: bool
    kind: str
    message: str
    file: str | None = None
    line: int | None = None


class Link:
    """One connection a slot opened. Subclasses: a process's pipes, a socket."""

    stream: trio.abc.Stream
    label: str

    async def describe_end(self) -> str:
        return "closed the connection"

    async def finish(self, graceful: bool, grace: float) -> None:
        """Release the connection; graceful = shutdown was sent."""
        await self.stream.aclose()


def _lost(error: ScriptError, session: Session) -> bool:
    """Whether `error` is an event's loss with its session's connection
    (closed or broken), not an answer, a deadline or a protocol error."""
    return error.kind == "crash" and session.end is not None and session.end[0] == "crash"


def _option(opts: dict, key: str, default, cast):
    try:
        return cast(opts.get(key, default))
    except (TypeError, ValueError):
        raise LoadError("routes.toml", None, f"option {key}: cannot use {opts.get(key)!r}") from None


class PooledRuntime(Runtime):
    balance = "least"           # or "failover": first ready slot in order
    need_all_at_start = True    # stdio: every worker must start; tcp: one endpoint
    # Whether an event whose connection closed before it was answered goes
    # once more, to another ready slot (tcp). Not for a worker process: its
    # crash may be the event's doing, and the next worker would get it too.
    resend_lost = False
    restart_policy: RestartPolicy = WORKER_RESTART

    def __init__(self, spec: RuntimeSpec, *, store: Store | None = None):
        self.spec = spec
        self.options = opts = dict(spec.options)
        self.store = store if store is not None else shared_store()
        self.cap = _option(opts, "max_in_flight", MAX_IN_FLIGHT, int)
        self.ping_interval = _option(opts, "ping_interval", PING_INTERVAL, float)
        self.start_timeout = _option(opts, "start_timeout", START_TIMEOUT, float)
        self.grace = _option(opts, "grace", GRACE, float)
        self.max_line = _option(opts, "max_line", MAX_LINE, int)
        self.hooks = frozenset()
        self.failure: str | None = None
        self.restarts = 0
        self.failures = {"crash": 0, "protocol": 0, "timeout": 0}
        self._sessions: list[Session | None] = []
        self._overruns = Overruns()   # shared by the sessions: one count per runtime
        self._waiters = 0
        self._changed = trio.Event()
        self._closing = trio.Event()
        self._done = trio.Event()
        self._cancel: trio.CancelScope | None = None
        self._start_pending = 0
        self._start_ok = 0
        self._start_error: LoadError | None = None
        self._start_settled = trio.Event()
        self._first_over: list[trio.Event] = []   # per slot: its first attempt ended

    # ------------------------------------------------------------ subclass API
    def slot_count(self) -> int:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Before any slot starts (e.g. compile); may raise LoadError."""

    async def open_link(self, index: int, nursery: trio.Nursery) -> Link:
        """Open slot `index`'s connection; raise OSError/LoadError on failure."""
        raise NotImplementedError

    def settings(self) -> dict:
        """hello.settings: the route's options plus the host's limits."""
        out = {k: v for k, v in self.options.items() if _jsonable(v)}
        out.update(deadline=self.spec.deadline, ping_interval=self.ping_interval)
        return out

    # ------------------------------------------------------------ Runtime
    async def start(self) -> None:
        await self.prepare()
        n = self.slot_count()
        self._sessions = [None] * n
        self._first_over = [trio.Event() for _ in range(n)]
        self._start_pending = n
        trio.lowlevel.spawn_system_task(self._main, name=f"route {self.spec.route}")
        await self._start_settled.wait()
        if self._start_error is not None:
            await self.aclose()
            raise self._start_error

    async def handle(self, hook: str, event: dict) -> Decision:
        if hook not in self.hooks:
            return Decision()  # the route does not implement it: "just return"
        may_resend = self.resend_lost
        while True:
            session = self._pick()
            if session is not None:
                try:
                    return await session.request(hook, event)
                except ScriptError as e:
                    if not (may_resend and _lost(e, session)):
                        raise
                    may_resend = False   # once: the next session, or wait for one
                    continue
            if self._closing.is_set():
                raise ScriptError(f"route {self.spec.route} is closing", kind="crash")
            if self.failure is not None and not any(self._sessions):
                raise ScriptError(f"route failed: {self.failure}", kind="crash", damaged=True)
            # No worker ready or all at the cap: wait (the caller's deadline bounds it).
            self._waiters += 1
            try:
                await self._changed.wait()
            finally:
                self._waiters -= 1

    def submit(self, hook: str, event: dict, deadline_at: float, done) -> bool:
        """`handle` without a task (Runtime.submit): the event goes to the
        least busy ready worker, and done(Decision | ScriptError) follows
        on this thread by `deadline_at`. False when no worker can take it
        now (restarting, all at the cap): the caller then takes `handle`,
        which waits for one."""
        if hook not in self.hooks:
            done(Decision())
            return True
        session = self._pick()
        if session is None:
            return False
        # A lazy ScriptEvent (host/routes/event.py) is written whole.
        plain = getattr(event, "plain", None)
        if plain is not None:
            event = plain()
        if self.resend_lost:
            done = self._resending(hook, event, deadline_at, done, session)
        session.submit(hook, event, deadline_at, done)
        return True

    def _resending(self, hook: str, event: dict, deadline_at: float, done, first: Session):
        """done, but an event lost with `first`'s connection goes once to
        another ready session (by the same deadline); only its answer, or
        the loss when none is ready, reaches done."""
        def deliver(result) -> None:
            if isinstance(result, ScriptError) and _lost(result, first):
                other = self._pick()
                if other is not None:
                    other.submit(hook, event, deadline_at, done)
                    return
            done(result)
        return deliver

    def _pick(self) -> Session | None:
        best = None
        for s in self._sessions:
            if s is None or s.end is not None or s.shutting_down or s.in_flight >= self.cap:
                continue
            if self.balance == "failover":
                return s
            if best is None or s.in_flight < best.in_flight:
                best = s
                if not s.in_flight:
                    break
        return best

    def _notify(self) -> None:
        if self._waiters:
            self._changed.set()
            self._changed = trio.Event()

    async def wait_idle(self) -> None:
        """Return when no event is in flight."""
        while any(s is not None and s.in_flight for s in self._sessions):
            self._waiters += 1
            try:
                await self._changed.wait()
            finally:
                self._waiters -= 1

    async def aclose(self) -> None:
        """Drain in-flight events (bounded by the event deadline plus grace),
        ask workers to shut down, then stop them: SIGTERM, SIGKILL."""
        if self._closing.is_set():
            await self._done.wait()
            return
        self._closing.set()
        self._notify()
        if not self._start_settled.is_set():  # closed while starting
            self._start_settled.set()
        with trio.move_on_after(self.spec.deadline + self.grace):
            await self.wait_idle()
        for s in self._sessions:
            if s is not None:
                s.shutdown()
        with trio.move_on_after(2 * self.grace + 1):
            await self._done.wait()
        if self._cancel is not None:
            self._cancel.cancel()
        await self._done.wait()

    def statistics(self) -> dict:
        live = [s for s in self._sessions if s is not None]
        return {
            "workers": len(self._sessions),
            "ready": sum(1 for s in live if s.end is None),
            "in_flight": sum(s.in_flight for s in live),
            "restarts": self.restarts,
            "failures": dict(self.failures),
            "failed": self.failure,
        }

    # ------------------------------------------------------------ supervision
    async def _main(self) -> None:
        try:
            with trio.CancelScope() as self._cancel:
                async with trio.open_nursery() as nursery:
                    for i in range(len(self._sessions)):
                        nursery.start_soon(self._slot, i)
        except Exception:  # a system task must not raise; this is the supervisor
            log.exception("route %s: runtime supervisor failed", self.spec.route)
        finally:
            self._start_settled.set()
            self._done.set()

    def _started(self, index: int, outcome: Outcome | None) -> None:
        """First attempt of slot `index` is over (outcome None = ready)."""
        self._first_over[index].set()
        if self._start_settled.is_set():
            return
        self._start_pending -= 1
        if outcome is None:
            self._start_ok += 1
        elif self.need_all_at_start or self._start_pending == 0 and not self._start_ok:
            self._start_error = LoadError(outcome.file or self.spec.path, outcome.line, outcome.message)
        if (self._start_error is not None or self._start_pending == 0
                or (not self.need_all_at_start and self._start_ok)):
            self._start_settled.set()

    async def _slot(self, index: int) -> None:
        history: tuple[float, ...] = ()   # this slot's recent restarts (plan_restart)
        first = True
        if self.unhurried and index:   # a reload: after the slot before it (Runtime.unhurried)
            await self._first_over[index - 1].wait()
            if self._start_error is not None:
                return
        while not self._closing.is_set():
            outcome = await self._run_once(index, first)
            if self._closing.is_set():
                return
            if first:
                first = False
                if not outcome.ready:
                    self._started(index, outcome)
                    if self.need_all_at_start:
                        return  # start() reports LoadError and closes us
            if outcome.kind in self.failures:
                self.failures[outcome.kind] += 1
            plan = plan_restart(self.restart_policy, history, trio.current_time())
            history = plan.history
            log.warning("route %s: %s (%s); %s in %g s", self.spec.route, outcome.message, outcome.kind,
                        "restart budget spent, retrying" if plan.verdict is GIVE_UP else "restarting",
                        plan.delay)
            if plan.verdict is GIVE_UP and not any(self._sessions):
                self.failure = outcome.message
                self._notify()
            with trio.move_on_after(plan.delay):
                await self._closing.wait()
            self.restarts += 1

    async def _run_once(self, index: int, first: bool) -> Outcome:
        async with trio.open_nursery() as nursery:
            try:
                link = await self.open_link(index, nursery)
            except (OSError, LoadError, trio.TooSlowError) as e:
                nursery.cancel_scope.cancel()
                if isinstance(e, LoadError):
                    return Outcome(False, "crash", e.message, e.file, e.line)
                return Outcome(False, "crash", f"cannot start: {e}")
            session = Session(link.stream, route=self.spec.route, label=link.label,
                              store=self.store, key_prefix=self.spec.store_prefix,
                              settings=self.settings(), max_line=self.max_line,
                              ping_interval=self.ping_interval, start_timeout=self.start_timeout,
                              notify=self._notify, describe_end=link.describe_end,
                              log_fields=self.log_fields, overruns=self._overruns)
            outcome = None
            try:
                try:
                    await nursery.start(session.serve)
                except HandshakeError as e:
                    outcome = Outcome(False, "crash", e.message, e.file, e.line)
                else:
                    self._sessions[index] = session
                    self.hooks = session.hooks
                    self.failure = None
                    if first:
                        self._started(index, None)
                    self._notify()
                    if self._closing.is_set():
                        # aclose() asked the sessions it saw to shut down
                        # while this one was starting: ask it too, rather
                        # than wait for aclose's timeout and cancel it.
                        session.shutdown()
                    await session.closed.wait()
                    kind, message = session.end
                    outcome = Outcome(True, kind, f"{link.label}: {message}")
            finally:
                self._sessions[index] = None
                with trio.CancelScope(shield=True):
                    await link.finish(session.end is not None and session.end[0] == "shutdown"
                                      or self._closing.is_set(), self.grace)
                nursery.cancel_scope.cancel()
        return outcome


def _jsonable(v) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, dict, tuple))
