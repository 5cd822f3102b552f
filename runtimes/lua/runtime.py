"""`LuaRuntime`: one route script running in-process in a sandboxed Lua state.

The per-event path is one Python -> Lua call (`dispatch`) with the event dict
passed as is; Lua reads its fields lazily and calls the Recorder directly for
each verb. Nothing is converted back except the simple contents of `req.vars`,
and only when the script touched them.

A thread per state. The state's load, and every event the inline path
(below) does not take, run in a worker thread (lupa releases the GIL while
Lua runs), one at a time per state, so neither a slow script nor one long C
call (a pattern match, string.rep...) can keep the server from serving
other routes, in-dialog requests and retransmissions. Two watchdogs bound
an event in the thread:
  * inside Lua, the count hook stops the script at its instruction budget or
    its deadline (see prelude.lua), and the prelude bounds the C library
    functions whose work is not bounded by their arguments' size;
  * on the trio side, an event still running OVERRUN_GRACE after its deadline
    is abandoned: the state is marked damaged (the registry starts a fresh one)
    and the thread left behind ends when the count hook or its bounded C call
    returns. The trio side never touches a state while a thread may run in it
    (lupa would block the event loop on the state's lock).
Inline first. Handing an event to the thread and its answer back costs two
thread wake-ups and a GIL hand-over per Python callback: more than a quick
routing decision itself (measured: the loop waited ~70 us per event for the
thread, and the thread spent half its time waiting for the GIL). So when the
state's thread has nothing to do, `submit` runs the event right on the event
loop, under an inline budget of its own: INLINE_INSTRUCTIONS, INLINE_WAIT of
wall clock, and pattern matches of at most INLINE_PATTERN_STEPS. A count hook
cannot yield, so an event that outgrows that budget cannot move to the thread
where it stands; it is stopped instead (prelude.lua: spent = "inline") and
run again from the start in the thread, with its full budget — so what its
first run changed in the state's globals stays changed, and only its verbs,
vars and print() lines are dropped (held until the run stands). The state
is then not run inline for SLOW_HOLD seconds, and inline runs take at most
WAIT_SHARE of each second (worker.py), so a slow route costs the loop one
bounded stop now and then, never more. A host call's resume, and every event
while one is queued in the thread, run in the thread as before: the server
hands them over with `submit` (no trio task, no cancel scope, no lock per
event), the thread posts answers back in batches, one watchdog per state
replaces a cancel scope per event (worker.py), and when nothing is queued
ahead the loop waits up to INLINE_WAIT for the answer instead of sending it
for a ride. Each Python callback from Lua in the thread still takes the GIL
from the loop, so event fields are passed with the call (PREFETCHED) rather
than read back through Python. Never inline: LuaJIT with the JIT on (traces
ignore the count hook) and routes with pattern_steps = 0 (no bound on a
match). `handle` (tests, and the registry's async path while a route
restarts) runs through the thread's queue.

Host calls (req.store:get/set/delete/incr). Every event runs in a Lua
coroutine (a reused "runner", prelude.lua); a host call yields it, the job
returns a HostCall instead of a Decision, the trio side performs the call in
a task of this runtime's host-call nursery (started on the first call) and
submits a resume job with the answer. The thread serves other events
meanwhile; a parked event is not pending in the worker, so the watchdog does
not count it; its deadline bounds the wait (`_host_call`) and the resume
(LATE). Events without host calls take the same single job as before.

Options (RuntimeSpec.options, from routes.toml):
  ("instructions", N)  Lua VM instructions per event (default 10 million).
  ("pattern_steps", N) worst-case steps allowed to one Lua pattern match (default
                       100 million; 0 turns the check off).
  ("jit", True)        LuaJIT only, for trusted scripts: leave the JIT on. Compiled
                       traces ignore debug hooks, so a hot loop is then stopped by
                       neither the instruction budget nor the deadline: the host
                       abandons the event at its deadline, but the thread spins on.
                       Without it the JIT is off (jit.off()).

Limits a script cannot raise: vars VARS_MAX_BYTES per call (host.routes.verbs),
print() lines of LOG_LINE_MAX bytes and LOG_LINES_PER_SECOND lines per second.
"""

from __future__ import annotations

import logging
import math
import operator
import re
import sys
import time

import outcome
import trio

from host.routes.verbs import HOOKS, ON_REQUEST, VARS_MAX_BYTES, VERBS, Decision, Recorder, VerbError
from host.storage import Store, shared_store
from host.routes.runtime import LoadError, Runtime, RuntimeSpec, ScriptError
# The host-call table the line-JSON runtimes answer from: the same checks and
# the same error messages for a Lua route.
from runtimes.jsonline.calls import CallError, perform

from .bridge import header_values, to_python
from .sandbox import HOOK_EVERY, install_prelude, lupa_module, new_state
from .worker import LATE, OVERRUN, OVERRUN_GRACE, Job, StateWorker, Suspended, answer, call_safely

log = logging.getLogger("babelsip.routes.lua")

# ~20-50 ms of plain Lua on the reference machine: far above what a routing
# decision needs, low enough that a runaway script costs little.
DEFAULT_INSTRUCTIONS = 10_000_000

# Worst-case steps a string.find/match/gmatch/gsub may take (see prelude.lua);
# Lua's matcher does ~100-500 M steps/s, so this is well under a second.
DEFAULT_PATTERN_STEPS = 100_000_000

# After a failed event, a state this close to its memory cap is recreated:
# the next event would most likely fail too.
DAMAGED_MEMORY_SHARE = 0.9

# How long the event loop may block for a quick event's answer (see
# worker.py): a routing decision takes 20-200 us in the thread; 2 ms covers
# a loaded machine's wake-up and is a stall nobody notices (a UDP
# retransmission comes after 500 ms).
INLINE_WAIT = 0.002

# An event run inline (see the module doc) is stopped and run again in the
# thread past ~1 ms of plain Lua, or a pattern match past ~2-10 ms of
# backtracking; routing decisions take a few thousand instructions.
INLINE_INSTRUCTIONS = 200_000
INLINE_PATTERN_STEPS = 2_000_000

# The worker thread takes the GIL for every Python callback (a verb, a header
# lookup), and CPython hands it over only every switch interval (default 5 ms)
# while the event loop's thread is busy. Measured with the loop thread kept
# busy: a Lua call with 3 callbacks took p99 1.4 s at 5 ms, 64 ms at 0.5 ms.
# The interval only matters while a second thread waits for the GIL.
SWITCH_INTERVAL = 0.0005

# Loading: the script's chunk gets the route's deadline from when it starts;
# creating the state and running the prelude before it are ours and take a
# few ms, but on a loaded machine the thread may wait for a core and the GIL
# far longer (CI: past 0.3 s with the whole suite beside it). The load is
# abandoned (a C call that never returns) only this much past the deadline.
LOAD_SETUP_WAIT = 1.0

# print() from a route: lines cut to LOG_LINE_MAX bytes (in Lua, before the
# copy to Python) and at most LOG_LINES_PER_SECOND per route and second, the
# rest counted and reported once a second. 2 KiB holds a whole SIP header set
# of a typical request; 50 lines/s (100 KiB/s at most) is plenty to debug a
# route, and one event printing in a loop wrote 64-97 MB/s before.
LOG_LINE_MAX = 2048
LOG_LINES_PER_SECOND = 50

# Event fields handed to Lua with the call itself (the order prelude.lua's
# PREFETCHED list expects): reading one lazily would be a call back into
# Python, which waits for the GIL while the event loop holds it. The body and
# the headers stay lazy (large, and most routes never read them).
PREFETCHED = ("method", "ruri", "ruri_user", "ruri_host", "from_uri", "from_tag", "to_uri",
              "to_tag", "call_id", "cseq", "source_ip", "source_port", "transport", "in_dialog")
_prefetched = operator.itemgetter(*PREFETCHED)   # one C call for an event that has them all


def prefetched(event: dict) -> tuple:
    """The PREFETCHED fields of `event`, None for any it lacks."""
    try:
        return _prefetched(event)
    except KeyError:
        return tuple(event.get(k) for k in PREFETCHED)

# How many arguments each verb takes (optional ones included).
_ARITY = {name: len(verb.params) for name, verb in VERBS.items()}


class HostCall(Suspended):
    """An event parked in its Lua coroutine until the host answers `op(*args)`
    (see prelude.lua "Host calls"). Made in the worker thread; the trio side
    performs the call and resumes the event with a new job (`_resume_event`)."""

    __slots__ = ("runtime", "token", "op", "args", "recorder", "event", "reply", "done", "deadline_at")

    def __init__(self, runtime, token, op, args, recorder, event, reply):
        self.runtime, self.token, self.op, self.args = runtime, token, op, args
        self.recorder, self.event, self.reply = recorder, event, reply
        self.done = self.deadline_at = None

    def suspended(self, job: Job) -> None:
        self.done, self.deadline_at = job.done, job.deadline_at
        self.runtime._start_host_call(self)


class LuaRuntime(Runtime):
    """A route script in Lua 5.4 (spec.runtime "lua54") or LuaJIT ("luajit")."""

    def __init__(self, spec: RuntimeSpec, *, store: Store | None = None):
        self.spec = spec
        # As the line-JSON runtimes do: the process-wide store unless given one.
        self.store = store if store is not None else shared_store()
        options = dict(spec.options)
        self._instructions = int(options.get("instructions", DEFAULT_INSTRUCTIONS))
        self._pattern_steps = int(options.get("pattern_steps", DEFAULT_PATTERN_STEPS))
        self._jit_on = bool(options.get("jit", False)) and spec.runtime == "luajit"
        self._ticks = max(1, math.ceil(self._instructions / HOOK_EVERY))
        self._inline_ticks = min(self._ticks, max(1, INLINE_INSTRUCTIONS // HOOK_EVERY))
        # Inline runs need both bounds the prelude enforces (module doc).
        self._inline = not self._jit_on and self._pattern_steps > 0
        self._inline_events = self._inline_reruns = 0
        self._held_lines: list | None = None   # print() lines of an inline run, until it stands
        self._file = str(spec.path)
        self._chunkname = "@" + spec.path.name
        self._position = re.compile(re.escape(spec.path.name) + r":(\d+): ", re.S)
        self._log = logging.getLogger(f"babelsip.route.{spec.route}")
        self.hooks = frozenset()
        self._lua = None
        self._module = None
        self._dispatch = None
        self._resume = self._forget = None
        self._table_type = None
        # Host calls: a nursery (in one system task, started on the first
        # call) runs one task per call; routes that never call the host never
        # start it. `_closing` lets it end once the runtime is closed.
        self._calls: trio.Nursery | None = None
        self._calls_queued: list[HostCall] = []
        self._calls_started = False
        self._closing = trio.Event()
        self._host_calls = 0
        # The event being handled; set only for the duration of one dispatch.
        self._recorder: Recorder | None = None
        self._event: dict | None = None
        self._reply: dict | None = None
        self._events = self._errors = self._budget_stops = self._memory_errors = 0
        self._overruns = 0
        self._memory_used = 0
        # handle(): one event at a time, each waiting for its turn on the trio
        # side so that its deadline starts when it does (submit() instead
        # queues at once, with the caller's deadline).
        self._turn = trio.Lock()
        # Stopped once closed, or by itself once its state is abandoned
        # (`usable` says which events may still run).
        self._worker: StateWorker | None = None
        # print() rate limit: lines in the current one-second window.
        self._log_window = 0.0
        self._log_lines = 0
        self._log_suppressed = 0

    # ------------------------------------------------------------ threads

    async def _in_thread(self, timeout: float, fn, *args):
        """fn(*args) in the state's thread; its result, or the ScriptError it
        was answered with instead (late, or abandoned by the watchdog when
        still running `timeout` + OVERRUN_GRACE seconds from now). Not
        cancellable meanwhile, and needs no cancel scope: the watchdog bounds
        the wait, and a cancelled caller would leave the state running with
        nobody knowing."""
        task = trio.lowlevel.current_task()

        def done(result):
            trio.lowlevel.reschedule(task, outcome.Value(result))

        if not self._worker.submit(Job(fn, args, time.monotonic() + timeout, done)):
            await trio.lowlevel.checkpoint()
            return self._not_running()
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    def _answer_without_running(self, why: str, job: Job) -> ScriptError:
        """StateWorker's `errors`: what a job gets that did not run to its end."""
        deadline = self.spec.deadline
        self._errors += why != LATE
        if why == LATE and job.fn == self._resume_event:
            # In the thread: the parked event will not be resumed, drop it.
            self._forget_parked(job.args[0].token)
            return ScriptError(f"the host call's answer came after its deadline of {deadline:g} s; "
                               f"not resumed", file=self._file, kind="timeout")
        if why == LATE and job.fn == self._forget_parked:
            self._forget_parked(*job.args)
            return None
        if why == LATE:
            return ScriptError(f"waited past its deadline of {deadline:g} s behind slower events "
                               f"of this route; not run", file=self._file, kind="timeout")
        if why == OVERRUN:
            self._overruns += 1
            return ScriptError(f"still running {OVERRUN_GRACE:g} s past its deadline of {deadline:g} s "
                               f"(inside a Lua C library call); the Lua state is abandoned",
                               file=self._file, damaged=True, kind="timeout")
        return ScriptError("not run: the Lua state was abandoned (an earlier event overran its "
                           "deadline)", file=self._file, damaged=True, kind="timeout")

    def _not_running(self) -> ScriptError:
        return ScriptError("the Lua runtime is not running", file=self._file, damaged=True, kind="crash")

    def _drop_state(self) -> None:
        # Runs in the state's thread after its last job, so freeing the state
        # (lua_close, up to the memory cap) never runs on the event loop.
        self._lua = self._dispatch = self._module = self._resume = self._forget = None

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        spec = self.spec
        try:
            module = lupa_module(spec.runtime)
        except KeyError:
            raise LoadError(self._file, None, f"unknown Lua runtime {spec.runtime!r}") from None
        except ImportError as exc:
            raise LoadError(self._file, None, f"{spec.runtime} is not available in lupa: {exc}") from None
        try:
            source = spec.path.read_bytes()
        except OSError as exc:
            raise LoadError(self._file, None, f"cannot read the script: {exc}") from None
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._worker = StateWorker(f"lua {spec.route}", self._drop_state,
                                   self._answer_without_running, spec.deadline)
        wait = spec.deadline + LOAD_SETUP_WAIT
        result = await self._in_thread(wait, self._load, module, source)
        if result is not None:   # the state is not kept: free it and end its thread
            self._worker.stop()
        if isinstance(result, ScriptError):   # abandoned by the watchdog
            raise LoadError(self._file, None,
                            f"did not finish loading within {wait:g} s (its deadline of "
                            f"{spec.deadline:g} s plus {LOAD_SETUP_WAIT:g} s to set the state up): "
                            f"a C library call that does not return; the state is abandoned")
        if isinstance(result, BaseException):
            raise result

    def _load(self, module, source: bytes):
        """Runs in the worker thread: create the state, run the prelude and the
        script's chunk. Returns None or the LoadError."""
        spec = self.spec
        lua = new_state(module, spec.memory_mb)
        self._table_type = type(lua.table())
        api = install_prelude(
            lua, clock=time.monotonic, verb=self._call_verb, header=self._find_header,
            vars_in=self._vars_in, vars_out=self._vars_out, log=self._log_line,
            jit_on=self._jit_on, pattern_steps=self._pattern_steps,
            max_bytes=spec.memory_mb * 1024 * 1024, vars_max_bytes=VARS_MAX_BYTES,
            log_line_max=LOG_LINE_MAX,
            inline_pattern_steps=min(INLINE_PATTERN_STEPS, self._pattern_steps))
        try:
            result = api.load_script(source, self._chunkname, self._ticks,
                                     time.monotonic() + spec.deadline)
        except module.LuaMemoryError:
            return LoadError(self._file, None, "ran out of memory while loading")
        except module.LuaError as exc:
            return LoadError(self._file, None, f"failed to load: {exc}")
        result = result if isinstance(result, tuple) else (result,)
        status = result[0]
        if status != "ok":
            return self._load_error(status, result)
        hooks = frozenset(result[1:])
        if ON_REQUEST not in hooks:
            return LoadError(self._file, None, "the script must define a global function on_request(req)")
        self._memory_used = lua.get_memory_used()
        self._lua, self._module = lua, module
        self._dispatch = api.dispatch
        self._resume, self._forget = api.resume, api.forget
        self._parked_count = api.parked
        self.hooks = hooks
        return None

    async def aclose(self) -> None:
        # Never waits: the state is freed in its thread once its job (an
        # abandoned one too) is over.
        if self._worker is not None:
            self._worker.stop()
        self._closing.set()
        self._flush_log()

    # ----------------------------------------------------------------- events

    async def handle(self, hook: str, event: dict) -> Decision:
        """Run a hook in the worker thread; raise ScriptError on failure."""
        if hook not in self.hooks and self._dispatch is not None:
            if hook not in HOOKS:
                raise ScriptError(f"unknown hook {hook!r}", file=self._file, kind="protocol")
            return Decision()  # the route does not define it: default behaviour
        async with self._turn:
            if self._dispatch is None or not self._worker.usable:
                raise self._not_running()
            self._events += 1
            deadline = self.spec.deadline
            result = await self._in_thread(deadline, self._run_event, hook, event,
                                           time.monotonic() + deadline)
        if isinstance(result, Decision):
            return result
        raise result   # a ScriptError, or a bug in this module (the worker passes on what fn raised)

    def submit(self, hook: str, event: dict, deadline_at: float, done) -> None:
        """Queue one event for the worker thread and return at once; done(result)
        is called later on the trio thread (or now, for a hook the route lacks
        or a state that is gone) with the Decision or a ScriptError. The event
        runs after the ones queued before it and only if its turn comes before
        `deadline_at` (time.monotonic()), else it is answered late."""
        if hook not in self.hooks and self._dispatch is not None:
            done(ScriptError(f"unknown hook {hook!r}", file=self._file, kind="protocol")
                 if hook not in HOOKS else Decision())
            return
        if self._dispatch is None or not self._worker.usable:
            done(self._not_running())
            return
        self._events += 1
        job = Job(self._run_event, (hook, event, deadline_at), deadline_at, done)
        worker = self._worker
        wait = INLINE_WAIT
        if self._inline and worker.may_run_inline():
            started = time.monotonic()
            result = self._run_event(hook, event, deadline_at, inline=True)
            worker.ran_inline(time.monotonic() - started, slow=result is _RERUN)
            if result is not _RERUN:
                self._inline_events += 1
                job.result = result
                answer(job)
                return
            self._inline_reruns += 1
            wait = 0.0   # it is known to be slow: no waiting for it either
        worker.submit(job, wait)

    def _run_event(self, hook: str, event: dict, deadline: float, inline: bool = False):
        """Runs in the worker thread, or with `inline` on the event loop's
        (see the module doc). Returns the Decision, the ScriptError, a
        HostCall when the event waits for the host, or _RERUN when an inline
        run outgrew its budget."""
        recorder = Recorder(hook)
        reply = event.get("reply")
        self._recorder, self._event, self._reply = recorder, event, reply
        if inline:
            itk, idl = self._inline_ticks, min(deadline, time.monotonic() + INLINE_WAIT)
            self._held_lines = held = []
        else:
            itk = idl = 0
        try:
            failure = self._dispatch(hook, event, reply, self._ticks, deadline, itk, idl,
                                     *prefetched(event))
        except self._module.LuaMemoryError:
            failure = ("memory", "not enough memory")
        except self._module.LuaError as exc:  # the prelude itself failed: start over
            return self._crashed(exc)
        finally:
            self._recorder = self._event = self._reply = None
            self._held_lines = None
        self._memory_used = self._lua.get_memory_used()
        if inline:
            if type(failure) is tuple and failure[:2] == ("budget", "inline"):
                return _RERUN
            if held:
                self._event = event
                try:
                    for line in held:
                        self._log_line(line)
                finally:
                    self._event = None
        if failure is None:
            return recorder.decision
        return self._settled(failure if isinstance(failure, tuple) else (failure,),
                             recorder, event, reply)

    def _settled(self, failure: tuple, recorder, event, reply):
        """Runs in the worker thread: the answer for what dispatch/resume returned."""
        while failure[0] == "call":
            _, token, op, *args = failure
            try:
                args = self._host_args(op, args)
            except ValueError as exc:   # an argument Python cannot take: the script's error
                failure = self._resumed(token, False, str(exc), recorder, event, reply)
                continue
            self._host_calls += 1
            return HostCall(self, token, op, args, recorder, event, reply)
        if failure[0] is None:   # finished after a resume
            return recorder.decision
        return self._script_error(failure)

    def _host_args(self, op: str, args: list) -> list:
        """Lua's (a, b, c) -> the argument list of the host call: trailing nils
        dropped (kv.get takes one), tables as lists/dicts, and an integral
        float as an int (LuaJIT has no integers; incr wants one)."""
        while args and args[-1] is None:
            args.pop()
        table_type = self._table_type
        out = []
        for arg in args:
            if type(arg) is table_type:
                arg = to_python(arg, table_type)
            elif type(arg) is float and arg.is_integer() and op == "kv.incr":
                arg = int(arg)
            out.append(arg)
        return out

    def _resumed(self, token: int, ok: bool, value, recorder, event, reply) -> tuple:
        """Runs in the worker thread: resume a parked event; dispatch's answer
        as a tuple ((None,) when it finished)."""
        self._recorder, self._event, self._reply = recorder, event, reply
        try:
            if ok and isinstance(value, (dict, list)):
                value = self._lua.table_from(value, recursive=True)
            failure = self._resume(token, ok, value)
        except self._module.LuaMemoryError:
            failure = ("memory", "not enough memory")
        finally:
            self._recorder = self._event = self._reply = None
        self._memory_used = self._lua.get_memory_used()
        if failure is None:
            return (None,)
        return failure if isinstance(failure, tuple) else (failure,)

    def _resume_event(self, call: HostCall, ok: bool, value):
        """Runs in the worker thread: a parked event, with its host call's answer."""
        try:
            failure = self._resumed(call.token, ok, value, call.recorder, call.event, call.reply)
        except self._module.LuaError as exc:
            return self._crashed(exc)
        return self._settled(failure, call.recorder, call.event, call.reply)

    def _crashed(self, exc) -> ScriptError:
        """The answer when the prelude itself failed: the state starts over."""
        self._errors += 1
        return ScriptError(f"Lua runtime failure: {exc}", file=self._file,
                           damaged=True, kind="crash")

    def _forget_parked(self, token: int) -> None:
        """Runs in the worker thread: drop an event that will not be resumed."""
        if self._forget is not None:
            self._forget(token)

    # ------------------------------------------------------ host calls (trio)

    def _start_host_call(self, call: HostCall) -> None:
        """On the trio thread (HostCall.suspended): run the call in a task."""
        if not self._worker.usable:
            call_safely(call.done, self._not_running())
            return
        if self._calls is not None:
            self._calls.start_soon(self._host_call, call)
            return
        self._calls_queued.append(call)
        if not self._calls_started:
            self._calls_started = True
            trio.lowlevel.spawn_system_task(self._run_host_calls, name=f"lua {self.spec.route} host calls")

    async def _run_host_calls(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._calls = nursery
                queued, self._calls_queued = self._calls_queued, []
                for call in queued:
                    nursery.start_soon(self._host_call, call)
                await self._closing.wait()
                # Calls in flight still finish (each bounded by its deadline).
                self._calls = None
        except Exception:   # _host_call catches everything: a bug here
            log.exception("Lua host-call task failed")
        finally:
            self._calls = None
            for call in self._calls_queued:
                call_safely(call.done, self._not_running())
            self._calls_queued = []

    async def _host_call(self, call: HostCall) -> None:
        """Perform one host call, then resume its event in the state's thread;
        the event's deadline covers the wait for the store too."""
        deadline_at = call.deadline_at
        ok, value = False, None
        with trio.move_on_at(trio.current_time() + (deadline_at - time.monotonic())) as scope:
            try:
                value, ok = await perform(self.store, call.op, call.args,
                                       key_prefix=self.spec.store_prefix), True
            except CallError as exc:
                value = str(exc)
            except Exception as exc:   # a store backend's failure: the script's error
                log.warning("%s: host call %s failed: %r", self.spec.route, call.op, exc)
                value = f"{call.op} failed: {exc}"
        if scope.cancelled_caught:
            self._errors += 1
            call_safely(call.done, ScriptError(
                f"exceeded its deadline of {self.spec.deadline:g} s waiting for the host "
                f"({call.op})", file=self._file, kind="timeout"))
            self._drop_parked(call.token)
            return
        worker = self._worker
        if not worker.submit(Job(self._resume_event, (call, ok, value), deadline_at, call.done),
                             INLINE_WAIT):
            call_safely(call.done, self._not_running())

    def _drop_parked(self, token: int) -> None:
        worker = self._worker
        # Best effort: a stopped state is freed with its parked events anyway.
        worker.submit(Job(self._forget_parked, (token,), time.monotonic() + self.spec.deadline,
                          _ignore))

    def statistics(self) -> dict:
        # Never asks the state itself: a thread may be running in it.
        stats = {
            "runtime": self.spec.runtime,
            "events": self._events,
            "errors": self._errors,
            "budget_stops": self._budget_stops,
            "memory_errors": self._memory_errors,
            "overruns": self._overruns,
            "host_calls": self._host_calls,
            "inline_events": self._inline_events,
            "inline_reruns": self._inline_reruns,
            "memory_limit": self.spec.memory_mb * 1024 * 1024,
        }
        if self._dispatch is not None:
            stats["memory_used"] = self._memory_used
        return stats

    # ------------------------------------------------------ called from Lua

    def _call_verb(self, name, a=None, b=None, c=None):
        """req:<verb>(...) -> None, or the error message Lua raises at the script's line.

        Calls the Recorder method directly (not Recorder.apply): Lua always
        passes the verb's full parameter list, missing ones as nil/None, which
        the Recorder's own checks accept or reject by name.
        """
        args = (a, b, c)[:_ARITY[name]]
        table_type = self._table_type
        try:
            if table_type in map(type, args):
                args = [to_python(arg, table_type) for arg in args]
            getattr(self._recorder, name)(*args)
        except VerbError as exc:
            return str(exc)
        except ValueError as exc:  # to_python: table nested too deeply
            return f"{name}(): {exc}"
        return None

    def _find_header(self, in_reply, name, all_values):
        source = self._reply if in_reply else self._event
        headers = source.get("headers") if source else None
        return header_values(headers, name, all_values)

    def _vars_in(self):
        return self._lua.table_from(self._event.get("vars") or {}, recursive=True)

    def _vars_out(self, *flat):
        new = dict(zip(flat[::2], flat[1::2]))
        old = self._event.get("vars") or {}
        unchanged = new.keys() == old.keys() and all(
            type(v) is type(old[k]) and v == old[k] for k, v in new.items())
        self._recorder.set_vars(None if unchanged else new)

    def _log_line(self, line):
        if self._held_lines is not None:
            self._held_lines.append(line)   # an inline run's, until it stands
            return
        now = time.monotonic()
        if now - self._log_window >= 1.0:
            self._flush_log()
            self._log_window, self._log_lines = now, 0
        if self._log_lines >= LOG_LINES_PER_SECOND:
            self._log_suppressed += 1
            return
        self._log_lines += 1
        event = self._event   # the event being run, in the worker thread that prints
        extra = self.log_fields if event is None else {**self.log_fields, "call_id": event.get("call_id")}
        self._log.info("%s: %s", self.spec.route, line, extra=extra)

    def _flush_log(self) -> None:
        if self._log_suppressed:
            self._log.warning("%s: %d print() lines suppressed (more than %d per second)",
                              self.spec.route, self._log_suppressed, LOG_LINES_PER_SECOND,
                              extra=self.log_fields)
            self._log_suppressed = 0

    # ---------------------------------------------------------------- errors

    def _split_position(self, message: str, fallback_line):
        """("main.lua:12: boom", ...) -> (12, "boom"); the script's own position
        in the message wins over the innermost script frame on the stack."""
        m = self._position.match(message)
        if m:
            return int(m.group(1)), message[m.end():]
        return fallback_line, message

    def _load_error(self, status, result) -> LoadError:
        message = result[1] if len(result) > 1 else status
        line = result[2] if len(result) > 2 else None
        if status == "syntax" or status == "error":
            line, message = self._split_position(str(message), line)
            return LoadError(self._file, line, message)
        if status == "budget":
            return LoadError(self._file, line, self._budget_message(message) + " while loading")
        return LoadError(self._file, None, "ran out of memory while loading")

    def _budget_message(self, which) -> str:
        if which == "deadline":
            return f"exceeded its deadline of {self.spec.deadline:g} s"
        return f"exceeded its budget of {self._instructions} instructions"

    def _script_error(self, failure) -> ScriptError:
        kind = failure[0]
        detail = failure[1] if len(failure) > 1 else ""
        line = failure[2] if len(failure) > 2 else None
        self._errors += 1
        if kind == "memory":
            self._memory_errors += 1
            return ScriptError(f"ran out of memory (limit {self.spec.memory_mb} MB)",
                               file=self._file, line=line, damaged=True, kind="memory")
        # After a budget stop or a plain error the state is intact (Lua unwound
        # it normally), so it is kept unless it is nearly out of memory.
        damaged = self._lua.get_memory_used() > DAMAGED_MEMORY_SHARE * self.spec.memory_mb * 1024 * 1024
        if kind == "budget":
            self._budget_stops += 1
            return ScriptError(self._budget_message(detail), file=self._file, line=line,
                               damaged=damaged, kind="budget")
        line, message = self._split_position(str(detail), line)
        return ScriptError(message, file=self._file, line=line, damaged=damaged, kind="error")


_RERUN = object()   # _run_event: an inline run outgrew its budget (module doc)


def _ignore(_result) -> None:
    """done() of a job nobody waits for."""
