"""The table of runtimes the server is wired with: file extension -> runtime
name -> adapter class.

The registry and discovery know runtimes only by name; this table is the one
place that names the adapters (`runtimes.*`). Classes are given as
"module:Class" and imported on first use, so a missing runtime (no lupa, say)
only breaks the routes that need it, and importing the host imports no
runtime.
"""

from __future__ import annotations

import importlib

from host.routes.runtime import LoadError, Runtime, RuntimeSpec

# File extension -> runtime; an executable file with a shebang is "exec".
# (`NAME.remote` is a TOML file listing the logic servers of a TCP route.)
EXTENSIONS = {".lua": "lua54", ".py": "python", ".pl": "perl", ".java": "java", ".remote": "tcp"}

_LUA, _STDIO, _TCP = "runtimes.lua:LuaRuntime", "runtimes.jsonline:StdioRuntime", "runtimes.jsonline:TcpRuntime"
RUNTIME_CLASSES = {"lua54": _LUA, "luajit": _LUA, "python": _STDIO, "perl": _STDIO, "java": _STDIO,
                   "exec": _STDIO, "tcp": _TCP}


def default_runtime_factory(spec: RuntimeSpec) -> Runtime:
    """A new, not yet started runtime for `spec`, from RUNTIME_CLASSES."""
    try:
        module, _, cls = RUNTIME_CLASSES[spec.runtime].partition(":")
        return getattr(importlib.import_module(module), cls)(spec)
    except (KeyError, ImportError, AttributeError) as exc:
        raise LoadError(spec.path, None, f"runtime {spec.runtime!r} is not available: {exc}") from None
