"""One live protocol connection to one worker, over any trio Stream.

`serve()` is nursery.start-able: it sends hello, waits for ready (raising
`HandshakeError` if the worker fails instead), reports started, then runs a
reader, a writer and a pinger until the connection ends. `request()` sends
one event and waits for its answer; any number may be in flight, matched by
id. When the connection ends for any reason, every waiting request gets a
ScriptError whose kind says why (crash, protocol, timeout) and `closed` is
set; the owner (stdio or tcp runtime) then reaps the process or socket.
"""

from __future__ import annotations

import logging

import trio

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
    __slots__ = ("done", "decision", "error", "call_id")

    def __init__(self, call_id: str | None = None):
        self.done = trio.Event()
        self.decision = None
        self.error = None
        self.call_id = call_id   # for the log lines the script writes during the event


class Session:
    def __init__(self, stream: trio.abc.Stream, *, route: str, label: str, store: Store,
                 key_prefix: str,
                 settings: dict | None = None, max_line: int, ping_interval: float,
                 start_timeout: float, notify=lambda: None, describe_end=_no_description,
                 log_fields: dict | None = None):
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
        self._nursery = None
        self._shutting_down = False

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
        if self.end is None and not self._shutting_down:
            self._shutting_down = True
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
        for waiter in pending.values():
            waiter.error = ScriptError(f"{self.label}: {message}", kind=kind)
            waiter.done.set()
        if not self.closed.is_set():
            self.closed.set()
            self._notify()

    # ------------------------------------------------------------ events
    async def request(self, hook: str, event: dict) -> Decision:
        if self.end is not None:
            raise ScriptError(f"{self.label}: {self.end[1]}", kind=self.end[0])
        ident, data = self.codec.event(hook, event)
        waiter = _Waiter(event.get("call_id"))
        self._pending[ident] = waiter
        self._queue(data)
        try:
            await waiter.done.wait()
        except BaseException:
            # Cancelled by the caller's deadline: a late answer is ignored.
            if self._pending.pop(ident, None) is not None:
                self.codec.abandon(ident)
                self._notify()
            raise
        if waiter.error is not None:
            raise waiter.error
        return waiter.decision

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

    async def _reader(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                if self._shutting_down and not self._pending:
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
                if t is Answered:
                    waiter.decision = eff.decision
                else:
                    waiter.error = eff.error
                waiter.done.set()
                self.answered += 1
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
