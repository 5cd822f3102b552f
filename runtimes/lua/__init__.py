"""In-process Lua route runtime (lupa), sandboxed, with per-event budgets."""

from .runtime import DEFAULT_INSTRUCTIONS, LuaRuntime

__all__ = ["LuaRuntime", "DEFAULT_INSTRUCTIONS"]
