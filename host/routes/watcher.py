"""Watch the routes folder and send batches of changed paths.

watchfiles' `awatch` is anyio-based and runs under trio (../shared/FACTS.md:
12-15 ms detection with step=10, debounce=100). Two details matter:

* awatch waits in a worker thread that trio cannot abandon, so cancelling it
  only returns when the Rust side checks its `stop_event`. A side task sets
  that event when the watch is cancelled, so shutdown takes one `step`.
* The Rust watcher exists only once awatch has been iterated, so readiness is
  reported on the first yield; `yield_on_timeout` makes that first yield come
  after `READY_PROBE_MS` even when nothing changes.

Editors save through a temporary file and a rename, and leave swap and backup
files around; those names are filtered here, and the registry rescans the
folder for the route a change touches, so a rename looks like an edit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import trio
from watchfiles import Change, awatch

log = logging.getLogger("babelsip.routes")

STEP_MS = 10          # how often the Rust side looks at its event queue
DEBOUNCE_MS = 100     # group an editor's write+rename into one batch
READY_PROBE_MS = 100  # empty yields this often; the first proves the watcher is live


def is_scratch_name(name: str) -> bool:
    """Dotfiles, editor swap/backup files (vim .swp/.swx/~, emacs #x# and .#x)
    and temporaries never name a route."""
    return (
        not name
        or name.startswith((".", "#"))
        or name.endswith(("~", ".swp", ".swx", ".swo", ".tmp", ".bak", ".orig"))
        or name == "4913"   # vim's probe for a writable directory
    )


def _keep(change: Change, path: str) -> bool:
    return not is_scratch_name(Path(path).name)


async def watch_folder(directory: Path, send_channel: trio.MemorySendChannel, *,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Send each batch of changed paths (a set of Path, scratch files removed)
    until cancelled. Reports started once changes are being watched."""
    stop = anyio.Event()
    started = False
    async with send_channel, trio.open_nursery() as nursery:
        nursery.start_soon(_set_when_cancelled, stop)
        async for changes in awatch(
            directory, watch_filter=_keep, step=STEP_MS, debounce=DEBOUNCE_MS,
            stop_event=stop, rust_timeout=READY_PROBE_MS, yield_on_timeout=True,
            recursive=False,
        ):
            if not started:
                started = True
                task_status.started()
            if changes:
                paths = {Path(p) for _change, p in changes}
                log.debug("routes folder changed: %s", sorted(p.name for p in paths))
                await send_channel.send(paths)
        # awatch returns only when `stop` is set, i.e. we are being cancelled.
        nursery.cancel_scope.cancel()


async def _set_when_cancelled(stop: anyio.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        stop.set()
