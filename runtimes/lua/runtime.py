"""`LuaRuntime`: one route script running in-process in a sandboxed Lua state.

The per-event path is one Python -> Lua call (`dispatch`) with the event dict
passed as is; Lua reads its fields lazily and calls the Recorder directly for
each verb. Nothing is converted back except the simple contents of `req.vars`,
and only when the script touched them.

Lua is single-threaded and fast enough per event that `handle` runs it
synchronously inside the async method: no thread hop, and no way for two
events to interleave in one Lua state. The per-event deadline is enforced
inside Lua by the count hook (see prelude.lua), because the caller's
cancellation cannot interrupt a synchronous call.

Options (RuntimeSpec.options, from routes.toml):
  ("instructions", N)  Lua VM instructions per event (default 10 million).
  ("pattern_steps", N) worst-case steps allowed to one Lua pattern match (default
                       100 million; 0 turns the check off).
  ("jit", True)        LuaJIT only, for trusted scripts: leave the JIT on. Compiled
                       traces ignore debug hooks, so a hot loop is then stopped by
                       neither the instruction budget nor the deadline, and it blocks
                       the whole process. Without it the JIT is off (jit.off()).
"""

from __future__ import annotations

import logging
import math
import re
import time

from host.routes.verbs import HOOKS, ON_REQUEST, VERBS, Decision, Recorder, VerbError
from runtimes.base import LoadError, Runtime, RuntimeSpec, ScriptError

from .bridge import header_values, to_python
from .sandbox import HOOK_EVERY, install_prelude, lupa_module, new_state

# ~20-50 ms of plain Lua on the reference machine: far above what a routing
# decision needs, low enough that a runaway script costs little.
DEFAULT_INSTRUCTIONS = 10_000_000

# Worst-case steps a string.find/match/gmatch/gsub may take (see prelude.lua);
# Lua's matcher does ~100-500 M steps/s, so this is well under a second.
DEFAULT_PATTERN_STEPS = 100_000_000

# After a failed event, a state this close to its memory cap is recreated:
# the next event would most likely fail too.
DAMAGED_MEMORY_SHARE = 0.9

# How many arguments each verb takes (optional ones included).
_ARITY = {name: len(verb.params) for name, verb in VERBS.items()}


class LuaRuntime(Runtime):
    """A route script in Lua 5.4 (spec.runtime "lua54") or LuaJIT ("luajit")."""

    def __init__(self, spec: RuntimeSpec):
        self.spec = spec
        options = dict(spec.options)
        self._instructions = int(options.get("instructions", DEFAULT_INSTRUCTIONS))
        self._pattern_steps = int(options.get("pattern_steps", DEFAULT_PATTERN_STEPS))
        self._jit_on = bool(options.get("jit", False)) and spec.runtime == "luajit"
        self._ticks = max(1, math.ceil(self._instructions / HOOK_EVERY))
        self._file = str(spec.path)
        self._chunkname = "@" + spec.path.name
        self._position = re.compile(re.escape(spec.path.name) + r":(\d+): ", re.S)
        self._log = logging.getLogger(f"babelsip.route.{spec.route}")
        self.hooks = frozenset()
        self._lua = None
        self._module = None
        self._dispatch = None
        self._table_type = None
        # The event being handled; set only for the duration of one dispatch.
        self._recorder: Recorder | None = None
        self._event: dict | None = None
        self._reply: dict | None = None
        self._events = self._errors = self._budget_stops = self._memory_errors = 0

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

        lua = new_state(module, spec.memory_mb)
        self._table_type = type(lua.table())
        api = install_prelude(
            lua, clock=time.monotonic, verb=self._call_verb, header=self._find_header,
            vars_in=self._vars_in, vars_out=self._vars_out, log=self._log_line,
            jit_on=self._jit_on, pattern_steps=self._pattern_steps)
        try:
            result = api.load_script(source, self._chunkname, self._ticks,
                                     time.monotonic() + spec.deadline)
        except module.LuaMemoryError:
            raise LoadError(self._file, None, "ran out of memory while loading") from None
        except module.LuaError as exc:
            raise LoadError(self._file, None, f"failed to load: {exc}") from None
        result = result if isinstance(result, tuple) else (result,)
        status = result[0]
        if status != "ok":
            raise self._load_error(status, result)
        hooks = frozenset(result[1:])
        if ON_REQUEST not in hooks:
            raise LoadError(self._file, None, "the script must define a global function on_request(req)")

        self._lua, self._module = lua, module
        self._dispatch = api.dispatch
        self.hooks = hooks

    async def aclose(self) -> None:
        self._lua = self._dispatch = None

    # ----------------------------------------------------------------- events

    async def handle(self, hook: str, event: dict) -> Decision:
        return self.handle_now(hook, event)

    def handle_now(self, hook: str, event: dict) -> Decision:
        """Run a hook to completion: Lua never waits, and the instruction
        hook enforces the deadline inside the script."""
        if self._dispatch is None:
            raise ScriptError("the Lua runtime is not running", file=self._file,
                              damaged=True, kind="crash")
        if hook not in self.hooks:
            if hook not in HOOKS:
                raise ScriptError(f"unknown hook {hook!r}", file=self._file, kind="protocol")
            return Decision()  # the route does not define it: default behaviour
        recorder = Recorder(hook)
        reply = event.get("reply")
        self._recorder, self._event, self._reply = recorder, event, reply
        self._events += 1
        try:
            failure = self._dispatch(hook, event, reply, self._ticks,
                                     time.monotonic() + self.spec.deadline)
        except self._module.LuaMemoryError:
            failure = ("memory", "not enough memory")
        except self._module.LuaError as exc:  # the prelude itself failed: start over
            self._errors += 1
            raise ScriptError(f"Lua runtime failure: {exc}", file=self._file,
                              damaged=True, kind="crash") from None
        finally:
            self._recorder = self._event = self._reply = None
        if failure is None:
            return recorder.decision
        raise self._script_error(failure if isinstance(failure, tuple) else (failure,))

    def statistics(self) -> dict:
        stats = {
            "runtime": self.spec.runtime,
            "events": self._events,
            "errors": self._errors,
            "budget_stops": self._budget_stops,
            "memory_errors": self._memory_errors,
            "memory_limit": self.spec.memory_mb * 1024 * 1024,
        }
        if self._lua is not None:
            stats["memory_used"] = self._lua.get_memory_used()
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
        self._log.info("%s: %s", self.spec.route, line)

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
