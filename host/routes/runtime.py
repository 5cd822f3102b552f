"""The Runtime interface: what the host's route registry asks of a runtime.

The interface is the host's own, so it lives on the host side: the registry
(`host.routes.registry`) owns generations, deadlines, fallbacks and restarts;
a runtime adapter (`runtimes.lua`, `runtimes.jsonline`) implements this and
only loads a script, hands it events and returns `Decision`s. Which adapter
serves which runtime name is the table in `host.routes.runtimes_table`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from host.routes.verbs import Decision


class LoadError(Exception):
    """A route file that cannot become a generation: syntax error, missing hook,
    failed compile, a worker that exits at start."""

    def __init__(self, file: str | Path, line: int | None, message: str):
        self.file, self.line, self.message = str(file), line, message
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {message}")


class ScriptError(Exception):
    """The script failed while handling one event (error, budget, memory).
    The event gets the route's fallback. `damaged` asks the registry to recreate
    the runtime before the next event."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 damaged: bool = False, kind: str = "error"):
        self.message, self.file, self.line = message, file, line
        self.damaged, self.kind = damaged, kind  # kind: error|budget|memory|crash|protocol|timeout
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}{message}")


def script_key_prefix(route: str) -> str:
    """The namespace of one route's store keys (unless shared_store)."""
    return f"route:{route}:"


@dataclass(frozen=True)
class RuntimeSpec:
    """What the registry tells a runtime about the route it runs."""

    route: str                 # route name (file stem, lower case)
    path: Path                 # the route file
    runtime: str               # "lua54", "luajit", "python", "perl", "java", "exec", "tcp"
    deadline: float = 1.0      # seconds per event
    pool: int = 1              # workers (external runtimes)
    memory_mb: int = 64        # Lua state memory cap / worker address space
    options: tuple = ()        # runtime-specific (key, value) pairs from routes.toml
    shared_store: bool = False  # routes.toml shared_store: script keys unprefixed
    confine: object = None     # routes.toml confine: a host.privileges Confinement, or None

    @property
    def store_prefix(self) -> str:
        """What the host puts before the keys of this route's kv.* calls, so
        two routes writing the same key do not see each other's value."""
        return "" if self.shared_store else script_key_prefix(self.route)


class Runtime(ABC):
    """One loaded generation of one route."""

    hooks: frozenset[str] = frozenset()
    # A runtime that can answer without a task per event (in-process Lua, a
    # pool of line-JSON workers) also offers `submit(hook, event, deadline_at,
    # done)`: it queues the event and returns at once, and calls done(result)
    # later on the trio thread (or before returning, when it can answer at
    # once) with the Decision or a ScriptError. It keeps `deadline_at`
    # (time.monotonic()) itself and always answers, so the server spends no
    # task and no cancel scope on the event. It may return False instead
    # (nothing queued, done never called) when it cannot take the event now;
    # the caller then uses `handle`. `event` may be lazy (ScriptEvent: a
    # runtime that serializes it whole takes `plain()`).
    submit = None
    # Set by the registry before start() when the route's previous
    # generation serves meanwhile (a reload): a runtime that starts several
    # processes may then start them one after another. Each worker start is
    # ~100 ms of CPU; N at once took the server's CPU on a 2-core machine
    # (Python route, pool 2, 750 calls/s: 80-115 ms INVITE->200 around each
    # reload, ~30 ms with one worker starting).
    unhurried = False

    @property
    def log_fields(self) -> dict:
        """The `extra=` fields of this runtime's log lines (host/logs.py): its
        route, and its generation once the registry installed it. One dict,
        kept: log calls pass it as is."""
        fields = self.__dict__.get("_log_fields")
        if fields is None:
            spec = getattr(self, "spec", None)
            fields = self.__dict__["_log_fields"] = {"route": spec.route} if spec is not None else {}
        return fields

    @abstractmethod
    async def start(self) -> None:
        """Load and check the script; raise LoadError if it cannot serve."""

    @abstractmethod
    async def handle(self, hook: str, event: dict) -> Decision:
        """Run one hook; raise ScriptError on failure. The caller applies the
        per-event deadline by cancellation, so this must be cancel-safe."""

    async def aclose(self) -> None:
        """Release the runtime (stop workers, drop the Lua state)."""

    def statistics(self) -> dict:
        return {}
