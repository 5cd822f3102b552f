"""Discovery: which files of a routes folder are routes, and which routes a
batch of file changes touches.

A route is one file whose name says its runtime (`EXTENSIONS`, or an
executable with a shebang); its name is the file's stem, lower case. The
watcher (`watcher.py`) reports changed paths; `changed_routes` turns them into
route names for the registry to reload.
"""

from __future__ import annotations

import os
from pathlib import Path

from host.routes.runtimes_table import EXTENSIONS
from host.routes.settings import CONFIG_NAME, route_name
from host.routes.watcher import is_scratch_name


def runtime_of_file(path: Path) -> str | None:
    """The runtime a file's name asks for, or None when it is not a route."""
    if is_scratch_name(path.name) or path.name == CONFIG_NAME:
        return None
    runtime = EXTENSIONS.get(path.suffix.lower())
    if runtime is not None:
        return runtime
    try:
        if path.is_file() and os.access(path, os.X_OK):
            with open(path, "rb") as f:
                return "exec" if f.read(2) == b"#!" else None
    except OSError:
        pass
    return None


def scan_routes(directory: Path) -> dict[str, list[Path]]:
    """Route name -> its files (more than one is an error for that route)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(Path(directory).iterdir()):
        if path.is_file() and runtime_of_file(path) is not None:
            found.setdefault(route_name(path.stem), []).append(path)
    return found


def changed_routes(paths: set[Path]) -> tuple[set[str], bool]:
    """The route names a batch of changed paths may concern, and whether
    routes.toml is among them. Names, not files: a deleted or renamed file
    still names the route that must notice it is gone; editors' scratch
    files name nothing."""
    names: set[str] = set()
    config_changed = False
    for path in paths:
        if path.name == CONFIG_NAME:
            config_changed = True
        elif not is_scratch_name(path.name):
            names.add(route_name(path.stem))
    return names, config_changed
