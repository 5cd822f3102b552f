"""Load a route file as a module and find its hooks."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from babelsip_sdk.contract import HOOKS


class RouteLoadError(Exception):
    def __init__(self, message, file=None, line=None):
        super().__init__(message)
        self.message, self.file, self.line = message, file, line


@dataclass
class Route:
    path: str
    hooks: dict = field(default_factory=dict)
    concurrency: int = 1   # > 1: handlers run on that many threads


def where(exc: BaseException, path: str):
    """(file, line) of the deepest frame of `exc` inside the route file."""
    file = line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == path:
            file, line = frame.filename, frame.lineno
    return file, line


def load_route(path: str) -> Route:
    path = str(Path(path).resolve())
    name = "babelsip_route_" + Path(path).stem.replace("-", "_").replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RouteLoadError(f"cannot load {path} as Python", path)
    module = importlib.util.module_from_spec(spec)
    # Helper modules next to the route file can be imported by it.
    sys.path.insert(0, str(Path(path).parent))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise RouteLoadError(f"SyntaxError: {e.msg}", e.filename or path, e.lineno) from None
    except FileNotFoundError as e:
        raise RouteLoadError(f"cannot read route file: {e}", path) from None
    except BaseException as e:  # the route's top level may raise anything
        file, line = where(e, path)
        raise RouteLoadError(f"{type(e).__name__}: {e}", file or path, line) from None
    hooks = {h: getattr(module, h) for h in HOOKS if callable(getattr(module, h, None))}
    if not hooks:
        raise RouteLoadError(f"defines none of {', '.join(HOOKS)}", path)
    concurrency = getattr(module, "CONCURRENCY", 1)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise RouteLoadError(f"CONCURRENCY must be a positive integer, got {concurrency!r}", path)
    return Route(path, hooks, concurrency)
