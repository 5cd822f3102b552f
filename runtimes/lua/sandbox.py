"""Creating a sandboxed Lua state through lupa.

The sandbox is built in two layers:

* lupa itself: no `python.eval`, no `python.builtins`, a memory cap, and an
  attribute filter that refuses every attribute of every Python object (Lua
  only ever *calls* the host's functions, so it needs none; refusing all is a
  superset of refusing names that start with "_").
* `prelude.lua`: removes os, io, require, load, loadstring, dofile, loadfile,
  package, debug, collectgarbage, string.dump, the `python` table, and on
  LuaJIT jit/ffi/newproxy; installs the instruction/deadline hook.

Runtimes are imported explicitly: plain `import lupa` would pick Lua 5.5.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

# "runtime" names of RuntimeSpec -> the lupa module that implements them.
LUPA_MODULES = {"lua54": "lupa.lua54", "luajit": "lupa.luajit21"}

# The count hook runs every HOOK_EVERY VM instructions: often enough that a
# runaway loop is stopped within ~1 ms of its deadline, rarely enough that the
# clock read it does costs nothing measurable on a normal route.
HOOK_EVERY = 1000

# The deadline is read every CLOCK_EVERY hook calls (~10,000 instructions,
# 20-80 us of Lua): the clock is a Python call and needs the GIL, which the
# event loop's thread holds most of the time while the script runs beside it.
CLOCK_EVERY = 10

PRELUDE_SOURCE = (Path(__file__).with_name("prelude.lua")).read_text(encoding="utf-8")


def lupa_module(runtime: str) -> ModuleType:
    """The lupa extension module for a RuntimeSpec.runtime name.

    Raises KeyError for an unknown name, ImportError when lupa was built
    without that Lua.
    """
    return importlib.import_module(LUPA_MODULES[runtime])


def refuse_attributes(obj, name, is_setting):
    raise AttributeError(f"routes cannot access Python attributes ({name!r})")


def new_state(module: ModuleType, memory_mb: int):
    """A fresh lupa LuaRuntime with lupa's own sandboxing switched on."""
    return module.LuaRuntime(
        register_eval=False,
        register_builtins=False,
        attribute_filter=refuse_attributes,
        unpack_returned_tuples=True,  # Python tuples arrive as multiple Lua values
        max_memory=memory_mb * 1024 * 1024,
    )


def install_prelude(lua, *, clock, verb, header, vars_in, vars_out, log, jit_on: bool,
                    pattern_steps: int, max_bytes: int, vars_max_bytes: int, log_line_max: int,
                    inline_pattern_steps: int = 0):
    """Run prelude.lua in `lua` with the host callbacks and limits; return its
    API table (load_script, dispatch, resume, forget, parked, per_thread_hooks)."""
    host = lua.table_from({
        "clock": clock, "verb": verb, "header": header, "vars_in": vars_in,
        "vars_out": vars_out, "log": log, "hook_every": HOOK_EVERY, "clock_every": CLOCK_EVERY,
        "jit_on": jit_on, "pattern_steps": pattern_steps, "max_bytes": max_bytes,
        "vars_max_bytes": vars_max_bytes, "log_line_max": log_line_max,
        "inline_pattern_steps": inline_pattern_steps,
    })
    return lua.execute(PRELUDE_SOURCE, host)
