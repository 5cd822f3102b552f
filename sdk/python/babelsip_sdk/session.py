"""Worker side of one protocol connection (stdio pipes or one TCP socket).

Concurrency model (see sdk/python README in PROTOCOL.md "SDK notes"):
  * CONCURRENCY = 1 (default): handlers run inline on the reading thread, one
    after another, while the host keeps many events queued in the pipe. The
    answers of a whole read are written in one write. A store call inside a
    handler writes its call and keeps reading: pings are answered, events
    that arrive meanwhile wait in a backlog, the result ends the wait.
  * CONCURRENCY = N: handlers run on N threads (for handlers that wait on
    databases or the network); the reading thread only routes messages.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from babelsip_sdk import wire
from babelsip_sdk.loader import Route, where
from babelsip_sdk.request import Request, Store, StoreError

PROTOCOL_VERSION = 1
SDK_NAME = "babelsip-python/0.1.0"
READ_SIZE = 1 << 16
THREAD_STACK = 1 << 20

_active = None  # the session of this process, for log()
_handling = threading.local()  # .event: the id of the event this thread runs, for log()


def log(message, level="info"):
    """Send a log line to the host (it lands in the host's log for this route,
    with the Call-ID of the event being handled, when there is one)."""
    session = _active
    if session is None:
        print(message, file=sys.stderr)
        return
    msg = {"type": "log", "level": level, "message": str(message)}
    event = getattr(_handling, "event", None)
    if event is not None:
        msg["event"] = event
    session.send(msg)


class HostGone(ConnectionError):
    """The host closed the connection while a handler waited for it."""


class Session:
    def __init__(self, route: Route, read, write):
        self.route = route
        self._read = read      # read(n) -> bytes, b"" at end of input
        self._write = write    # write(bytes), writes everything
        self._lock = threading.Lock()
        self._out: list[bytes] = []
        self._buf = b""
        self._reader = None
        self._results: dict = {}
        self._futures: dict = {}
        self._next_call = 0
        self._backlog: deque = deque()
        self._busy = False
        self._stopping = False
        self._pool = None
        self.settings: dict = {}

    # ------------------------------------------------------------ output
    def send(self, msg) -> None:
        try:
            data = wire.dumps(msg)
        except (TypeError, ValueError) as e:
            if msg.get("type") != "decision":
                raise
            data = wire.dumps({"type": "error", "id": msg["id"],
                               "message": f"decision is not JSON-serialisable: {e}"})
        if threading.get_ident() == self._reader:
            self._out.append(data)
        else:
            with self._lock:
                self._write(data)

    def flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            with self._lock:
                self._write(data)

    # ------------------------------------------------------------ input
    def _messages(self):
        """The messages of one read; None at end of input."""
        data = self._read(READ_SIZE)
        if not data:
            return None
        lines = (self._buf + data).split(b"\n")
        self._buf = lines.pop()
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                msg = wire.loads(line)
            except ValueError:
                print(f"babelsip_sdk: ignoring a line that is not JSON: {line[:80]!r}", file=sys.stderr)
                continue
            if isinstance(msg, dict):
                out.append(msg)
        return out

    # ------------------------------------------------------------ run
    def run(self) -> int:
        """Serve until shutdown or end of input; return an exit status."""
        global _active
        _active = self
        self._reader = threading.get_ident()
        hello = None
        while hello is None:
            msgs = self._messages()
            if msgs is None:
                return 0
            if msgs:
                hello, rest = msgs[0], msgs[1:]
        if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL_VERSION:
            self.send({"type": "fatal", "message":
                       f"expected hello for protocol {PROTOCOL_VERSION}, got {hello!r}"[:500]})
            self.flush()
            return 2
        self.settings = hello.get("settings") or {}
        self.send({"type": "ready", "protocol": PROTOCOL_VERSION, "sdk": SDK_NAME,
                   "hooks": sorted(self.route.hooks)})
        self.flush()  # 'ready' must precede anything a handler thread writes
        if self.route.concurrency > 1:
            # Small stacks: the host caps the worker's address space, and
            # 8 MiB per thread (the default) would exhaust it at ~30 threads.
            threading.stack_size(THREAD_STACK)
            self._pool = ThreadPoolExecutor(self.route.concurrency, thread_name_prefix="route")
        for msg in rest:
            self._dispatch(msg)
        self._drain_backlog()
        self.flush()
        while not self._stopping:
            msgs = self._messages()
            if msgs is None:
                break
            for msg in msgs:
                self._dispatch(msg)
            self._drain_backlog()
            self.flush()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.flush()
        return 0

    def _dispatch(self, msg) -> None:
        kind = msg.get("type")
        if kind == "event":
            if self._pool is not None:
                self._pool.submit(self._run_event, msg)
            elif self._busy:
                self._backlog.append(msg)
            else:
                self._run_event(msg)
        elif kind == "ping":
            self.send({"type": "pong", "id": msg.get("id")})
        elif kind == "result":
            fut = self._futures.pop(msg.get("id"), None)
            if fut is not None:
                fut.set_result(msg)
            else:
                self._results[msg.get("id")] = msg
        elif kind == "shutdown":
            self._stopping = True
        # Unknown types are ignored: a newer host may send more (PROTOCOL.md).

    def _drain_backlog(self) -> None:
        while self._backlog:
            self._run_event(self._backlog.popleft())

    def _run_event(self, msg) -> None:
        ident, hook = msg.get("id"), msg.get("hook")
        event = msg.get("event") or {}
        req = Request(hook, event, Store(self, ident))
        fn = self.route.hooks.get(hook)
        self._busy = True
        outer, _handling.event = getattr(_handling, "event", None), ident
        try:
            if fn is not None:
                if hook == "on_request":
                    fn(req)
                else:
                    fn(req, req.reply_info)
            out = req.decision_message(ident)
        except Exception as e:
            out = {"type": "error", "id": ident, "message": f"{type(e).__name__}: {e}"}
            file, line = where(e, self.route.path)
            if file:
                out["file"], out["line"] = file, line
        finally:
            self._busy = False
            _handling.event = outer
        self.send(out)

    # ------------------------------------------------------------ host calls
    def call(self, op: str, args: list, event_id):
        with self._lock:
            self._next_call += 1
            cid = self._next_call
        msg = {"type": "call", "id": cid, "event": event_id, "op": op, "args": args}
        if threading.get_ident() == self._reader:
            self.send(msg)
            self.flush()
            while cid not in self._results:
                msgs = self._messages()
                if msgs is None:
                    raise HostGone("host closed the connection")
                for m in msgs:
                    self._dispatch(m)
                self.flush()
            res = self._results.pop(cid)
        else:
            fut: Future = Future()
            self._futures[cid] = fut
            self.send(msg)
            res = fut.result()
        if "error" in res:
            raise StoreError(f"{op}: {res['error']}")
        return res.get("value")
