"""Stdio runner: `python -m babelsip_sdk.runner ROUTE.py`, started by the host.

File descriptor 1 carries the protocol; the route's own print() output is
redirected to stderr so it cannot corrupt the stream. Before anything else
the runner forks its lifeline watcher (`lifeline.watch`): when the host
dies, it ends this worker and every process the route started.
`--dump-contract` prints the verbs, event accessors and store calls this SDK
offers instead (babelsip_sdk.dump; tests/contract compares them).
"""

from __future__ import annotations

import os
import sys

from babelsip_sdk import lifeline, wire
from babelsip_sdk.loader import RouteLoadError, load_route
from babelsip_sdk.session import Session


def _fd_writer(fd):
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    return write


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--dump-contract"]:
        from babelsip_sdk.dump import dump   # only this mode needs it
        print(wire.dumps(dump()).decode(), end="")
        return 0
    if len(argv) != 1:
        print("usage: python -m babelsip_sdk.runner ROUTE.py", file=sys.stderr)
        return 2
    lifeline.watch()   # first: while this process has one thread, and before the route runs
    proto_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    write = _fd_writer(proto_out)
    try:
        route = load_route(argv[0])
    except RouteLoadError as e:
        msg = {"type": "fatal", "message": e.message}
        if e.file:
            msg["file"] = e.file
        if e.line:
            msg["line"] = e.line
        write(wire.dumps(msg))
        return 1
    return Session(route, lambda n: os.read(0, n), write).run()


if __name__ == "__main__":
    sys.exit(main())
