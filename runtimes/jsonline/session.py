"""One live protocol connection to one worker, over any trio Stream.

`serve()` is nursery.start-able: it sends hello, waits for ready (raising
`HandshakeError` if the worker fails instead), reports started, then runs a
reader, a writer, a pinger and a deadline keeper until the connection ends.
Any number of events may be in flight, matched by id, sent one of two ways:

  * `submit(hook, event, deadline_at, deliver)` queues the event and returns;
    `deliver(Decision | ScriptError)` is called once, on the trio thread,
    when the answer is read, when the deadline passes, or when the
    connection ends. No task, no cancel scope and no trio.Event per event:
    the session keeps every submitted event's deadline itself.
  * `await request(hook, event)` waits for the answer; the caller's
    cancellation (its deadline) abandons the event.

Events queued in one scheduler pass go out in one write, and all the lines
of one read are handled in one pass. When the connection ends for any
reason, every waiting event gets a ScriptError whose kind says why (crash,
protocol, timeout) and `closed` is set; the owner (stdio or tcp runtime)
then reaps the process or socket.
"""

from __future__ import annotations

import bisect
import collections
import logging
import time

import trio

from host.routes.handle import HUNG_AFTER
from host.routes.verbs import Decision
from host.storage import Store
from host.routes.runtime import ScriptError
from runtimes.jsonline import calls
from runtimes.jsonline.codec import (Answered, Call, Failed, Fatal, HostCodec, Log,
                                      ProtocolError, Ready)

READ_SIZE = 1 << 16
MISSED_PINGS = 2  # the liveness rule: two missed pongs mean hung

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
           "warning": logging.WARNING, "error": logging.ERROR}


class HandshakeError(Exception):
    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message, self.file, self.line = message, file, line


async def _no_description() -> str:
    return "closed the connection"


class _Waiter:
    """One event in flight: who gets its answer."""
    __slots__ = ("deliver", "call_id", "hook")

    def __init__(self, deliver, call_id, hook: str):
        self.deliver = deliver   # deliver(Decision | ScriptError), called once
        self.call_id = call_id   # for the log lines the script writes during the event
        self.hook = hook


class Overruns:
    """Deadline overruns in a row of one runtime's events: as for the
    registry's own deadline (host/routes/handle.py), the HUNG_AFTER-th marks
    the runtime damaged so that the registry replaces it; an answer resets
    the count."""
    __slots__ = ("count",)

    def __init__(self):
        self.count = 0

    def hit(self) -> bool:
        self.count += 1
        return self.count >= HUNG_AFTER


class Session:
    def __init__(self, stream: trio.abc.Stream, *, route: str, label: str, store: Store,
                 key_prefix: str,
                 settings: dict | None = None, max_line: int, ping_interval: float,
                 start_timeout: float, notify=lambda: None, describe_end=_no_description,
                 log_fields: dict | None = None, overruns: Overruns | None = None):
        self.stream = stream
        self.route, self.label = route, label
        self.codec = HostCodec(max_line)
        self.store = store
        self.key_prefix = key_prefix       # RuntimeSpec.store_prefix
        self.settings = settings or {}
        self.ping_interval = ping_interval
        self.start_timeout = start_timeout
        self._notify = notify              # called when capacity or state changes
        self._describe_end = describe_end  # async () -> "exited with status 1" etc.
        self.log = logging.getLogger(f"babelsip.route.{route}")
        self.log_fields = log_fields if log_fields is not None else {"route": route}
        self.ready = False
        self.hooks: frozenset = frozenset()
        self.sdk = ""
        self.end: tuple[str, str] | None = None  # (kind, message) once closed
        self.closed = trio.Event()
        self.answered = 0
        self._pending: dict[int, _Waiter] = {}
        self._out = bytearray()
        self._wake = trio.Event()
        # (deadline_at, id) of submitted events in deadline order, which is
        # submission order for one route's deadline; the keeper skips the
        # answered ones.
        self._deadlines: collections.deque = collections.deque()
        self._deadline_wake = trio.Event()   # the keeper's: a sooner deadline was queued
        self.overruns = overruns if overruns is not None else Overruns()
        self._nursery = None
        self.shutting_down = False   # shutdown sent: the worker takes no more events (§3)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------ lifecycle
    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.stream.send_all(self.codec.hello(self.route, self.settings))
            with trio.move_on_after(self.start_timeout) as scope:
                ready = await self._handshake()
            if scope.cancelled_caught:
                raise HandshakeError(f"{self.label}: no 'ready' within {self.start_timeout:g} s")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._finish("crash", "did not start")
            raise HandshakeError(f"{self.label}: {await self._describe_end()} before 'ready' ({e})") from None
        except BaseException:
            self._finish("crash", "did not start")
            raise
        self.ready, self.hooks, self.sdk = True, ready.hooks, ready.sdk
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                nursery.start_soon(self._writer)
                nursery.start_soon(self._pinger)
                nursery.start_soon(self._keep_deadlines)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            self._finish("crash", "connection closed by the host")

    async def _handshake(self) -> Ready:
        while True:
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                raise HandshakeError(f"{self.label}: {await self._describe_end()} before 'ready'")
            try:
                effects = self.codec.receive(data)
            except ProtocolError as e:
                raise HandshakeError(f"{self.label}: protocol error before 'ready': {e}") from None
            for eff in effects:
                if isinstance(eff, Ready):
                    return eff
                if isinstance(eff, Fatal):
                    raise HandshakeError(eff.message, eff.file, eff.line)
                if isinstance(eff, Log):
                    self._log(eff)

    def shutdown(self) -> None:
        """Ask the worker to finish its events and exit (PROTOCOL.md "Shutdown")."""
        if self.end is None and not self.shutting_down:
            self.shutting_down = True
            self._queue(self.codec.shutdown())

    def abort(self, kind: str, message: str) -> None:
        """End the connection now: fail every waiting event with `kind`."""
        self._finish(kind, message)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _finish(self, kind: str, message: str) -> None:
        if self.end is None:
            self.end = (kind, message)
        kind, message = self.end
        self.codec.take_in_flight()
        pending, self._pending = self._pending, {}
        self._deadlines.clear()
        for waiter in pending.values():
            self._deliver(waiter, ScriptError(f"{self.label}: {message}", kind=kind))
        if not self.closed.is_set():
            self.closed.set()
            self._notify()

    # ------------------------------------------------------------ events
    def submit(self, hook: str, event: dict, deadline_at: float, deliver) -> None:
        """Send one event; deliver(Decision | ScriptError) follows once, on
        this thread (at once when the event cannot be sent), by
        `deadline_at` (time.monotonic()) at the latest."""
        try:
            ident = self._send(hook, event, deliver)
        except ScriptError as e:
            deliver(e)
            return
        deadlines = self._deadlines
        if not deadlines or deadline_at >= deadlines[-1][0]:
            deadlines.append((deadline_at, ident))
            if len(deadlines) == 1:
                self._deadline_wake.set()
        else:   # sooner than an earlier event's (not one route's deadline): rare
            bisect.insort(deadlines, (deadline_at, ident))
            self._deadline_wake.set()

    async def request(self, hook: str, event: dict) -> Decision:
        """Send one event and wait for its answer; raises ScriptError. The
        caller keeps the deadline: cancelling abandons the event."""
        done = trio.Event()
        answer = []

        def deliver(result) -> None:
            answer.append(result)
            done.set()

        ident = self._send(hook, event, deliver)
        try:
            await done.wait()
        except BaseException:
            # Cancelled by the caller's deadline: a late answer is ignored.
            if self._pending.pop(ident, None) is not None:
                self.codec.abandon(ident)
                self._notify()
            raise
        if isinstance(answer[0], ScriptError):
            raise answer[0]
        return answer[0]

    def _send(self, hook: str, event: dict, deliver) -> int:
        """Queue one event whose answer goes to `deliver`; its id. Raises
        ScriptError when it cannot be sent (the connection ended, the event
        does not encode)."""
        if self.end is not None:
            raise ScriptError(f"{self.label}: {self.end[1]}", kind=self.end[0])
        ident, data = self.codec.event(hook, event)
        self._pending[ident] = _Waiter(deliver, event.get("call_id"), hook)
        self._queue(data)
        return ident

    def _deliver(self, waiter: _Waiter, result) -> None:
        # The receiver runs the SIP core on the answer; its failure must not
        # end this session or leave the other events unanswered.
        try:
            waiter.deliver(result)
        except Exception:
            self.log.exception("%s: delivering an answer failed", self.label, extra=self.log_fields)

    def _queue(self, data: bytes) -> None:
        self._out += data
        self._wake.set()

    # ------------------------------------------------------------ tasks
    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            # Everything queued since the last write goes out in one write.
            data, self._out = self._out, bytearray()
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.abort("crash", await self._describe_end())
                return

    async def _pinger(self) -> None:
        while True:
            await trio.sleep(self.ping_interval)
            if self.codec.unanswered_pings >= MISSED_PINGS:
                self.abort("timeout", f"missed {MISSED_PINGS} pings {self.ping_interval:g} s apart: hung")
                return
            self._queue(self.codec.ping())

    async def _keep_deadlines(self) -> None:
        """Give each submitted event that is still unanswered at its
        deadline a timeout. Sleeps until the oldest unanswered event's
        deadline, so a busy session wakes it about once a deadline, not
        once an event."""
        deadlines = self._deadlines
        while True:
            while deadlines and deadlines[0][1] not in self._pending:
                deadlines.popleft()   # answered already
            wake = self._deadline_wake = trio.Event()
            if not deadlines:
                await wake.wait()
                continue
            at, ident = deadlines[0]
            delay = at - time.monotonic()
            if delay > 0:
                with trio.move_on_after(delay):
                    await wake.wait()   # an earlier deadline was queued
                continue
            deadlines.popleft()
            waiter = self._pending.pop(ident)
            self.codec.abandon(ident)   # a late answer is ignored
            damaged = self.overruns.hit()
            self._deliver(waiter, ScriptError(
                f"{waiter.hook} exceeded its deadline of {self.settings.get('deadline', 0):g} s",
                kind="timeout", damaged=damaged))
            self._notify()

    async def _reader(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                if self.shutting_down and not self._pending:
                    self._finish("shutdown", "stopped")
                else:
                    self._finish("crash", await self._describe_end())
                return
            try:
                effects = self.codec.receive(data)
            except ProtocolError as e:
                self._finish("protocol", f"protocol error: {e}")
                return
            for eff in effects:
                self._apply(eff)

    def _apply(self, eff) -> None:
        t = type(eff)
        if t is Answered or t is Failed:
            waiter = self._pending.pop(eff.id, None)
            if waiter is not None:
                self.overruns.count = 0
                self.answered += 1
                self._deliver(waiter, eff.decision if t is Answered else eff.error)
                self._notify()
        elif t is Call:
            self._nursery.start_soon(self._call, eff)
        elif t is Log:
            self._log(eff)
        elif t is Fatal:
            where = f" ({eff.file}:{eff.line})" if eff.file and eff.line else ""
            self._finish("crash", f"fatal: {eff.message}{where}")
            self._nursery.cancel_scope.cancel()
        # Pong needs nothing: the codec already counted it.

    async def _call(self, call: Call) -> None:
        try:
            value = await calls.perform(self.store, call.op, call.args, key_prefix=self.key_prefix)
            data = self.codec.result(call.id, value)
        except calls.CallError as e:
            data = self.codec.call_error(call.id, str(e))
        except TypeError as e:
            data = self.codec.call_error(call.id, f"result is not JSON: {e}")
        except Exception as e:
            # A store backend's failure is the route's error, not the session's end.
            data = self.codec.call_error(call.id, f"{call.op} failed: {e}")
        self._queue(data)

    def _log(self, eff: Log) -> None:
        suffix = f" [event {eff.event}]" if eff.event is not None else ""
        waiter = self._pending.get(eff.event) if eff.event is not None else None
        extra = self.log_fields if waiter is None else {**self.log_fields, "call_id": waiter.call_id}
        self.log.log(_LEVELS[eff.level], "%s: %s%s", self.label, eff.message, suffix, extra=extra)
