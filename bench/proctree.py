"""A proxy's whole process tree, read from /proc: CPU seconds and resident memory.

A proxy under test is a tree of processes (babelsip's workers and route
runtimes, Kamailio's children, a redis-server started beside it), so every
figure here sums the root and all its descendants alive at the moment of
reading. Children that already exited are not counted: the proxies keep
theirs for the whole run.
"""

from __future__ import annotations

import os
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: str) -> list[bytes] | None:
    """/proc/PID/stat after "(comm)" (comm may hold spaces); [0] is the state."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None   # exited while we looked
    return stat[stat.rindex(b")") + 2:].split()


def _processes() -> dict[int, list[bytes]]:
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None:
                out[int(entry.name)] = fields
    return out


def _descend(root: int, processes: dict[int, list[bytes]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, fields in processes.items():
        children.setdefault(int(fields[1]), []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in processes:
            out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_pids(root: int) -> list[int]:
    """`root` (if alive) and every descendant."""
    return _descend(root, _processes())


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of the tree."""
    processes = _processes()
    return sum((int(processes[pid][11]) + int(processes[pid][12])) / CLK_TCK
               for pid in _descend(root, processes))


def tree_rss_mb(root: int) -> float:
    """Resident set size of the tree in MiB (field 24 of stat, in pages: the
    same figure as VmRSS). Shared pages count once per process, as `ps` does."""
    processes = _processes()
    return sum(int(processes[pid][21]) for pid in _descend(root, processes)) * PAGE_BYTES / 2**20


class RssSampler:
    """Samples `tree_rss_mb(root)` every `interval` seconds in a thread, from
    start() until stop(); `samples` holds (seconds since start, MiB)."""

    def __init__(self, root: int, interval: float = 1.0):
        self.root, self.interval = root, interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.samples.append((round(time.monotonic() - self._t0, 2), round(tree_rss_mb(self.root), 1)))
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
