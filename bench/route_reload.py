"""Hot reloads during a step: rewrite a route file while calls run through it.

Each rewrite appends a comment naming the reload (so the content, and the
server's hash of it, changes while the behaviour does not) and saves the way
editors do: a hidden temporary file renamed over the route, so the server
never reads a half-written file. The server notices through its folder
watcher and loads a new generation; calls in progress finish on the old one.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

# The line comment of each route language, by file suffix.
COMMENT = {".lua": "--", ".py": "#", ".pl": "#", ".java": "//"}
# What the registry logs at info when a generation replaced the previous one.
LOADED = re.compile(r"route \S+: generation (\d+) loaded")


def rewritten(text: str, suffix: str, number: int) -> str:
    """The route text with one comment line naming the reload appended."""
    ending = "" if text.endswith("\n") else "\n"
    return f"{text}{ending}{COMMENT[suffix]} bench reload {number}\n"


def save(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")   # dotfile: the watcher ignores it
    temporary.write_text(text)
    os.replace(temporary, path)


def loads_logged(lines: list[str]) -> int:
    """How many generation loads the server logged in `lines`."""
    return sum(1 for line in lines if LOADED.search(line))


class RouteReloader:
    """Rewrites `path` `count` times, evenly spread over `seconds` from start()
    (none in the first or last 1/(count+1) of it); stop() ends it early. The
    last rewrite stays: it behaves as the original."""

    def __init__(self, path: Path, count: int, seconds: float):
        self.path, self.count, self.seconds = path, count, seconds
        self.original = path.read_text()
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        gap = self.seconds / (self.count + 1)
        for number in range(1, self.count + 1):
            if self._stop.wait(gap):
                return
            save(self.path, rewritten(self.original, self.path.suffix, number))
            self.done = number

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
