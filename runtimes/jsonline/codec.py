"""Host side of the line-JSON worker protocol (sdk/PROTOCOL.md), sans-IO.

Bytes from the worker go in through `receive()`, which returns effects
(Ready, Answered, Failed, Call, Pong, Log, Fatal); bytes for the worker come
out of `hello()`, `event()`, `result()`, `ping()` and `shutdown()`. No trio,
no sockets, no clock: the session that owns the pipe decides when to ping
and what to do with a `ProtocolError` (kill the worker, fail its events).

Every untrusted byte goes through `receive()`, and it raises only
`ProtocolError`; a decision whose *content* is wrong (unknown verb, bad
argument, second decision) is the script's fault, not the protocol's, so it
fails that one event (`Failed`) and the worker keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from host.routes.verbs import HOOKS, Decision, Recorder, VerbError
from host.routes.runtime import ScriptError

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20  # 1 MiB per line, either direction (PROTOCOL.md "Limits")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ProtocolError(Exception):
    """The worker broke the protocol; the connection cannot be trusted."""


@dataclass(frozen=True, slots=True)
class Ready:
    protocol: int
    sdk: str
    hooks: frozenset


@dataclass(frozen=True, slots=True)
class Fatal:
    message: str
    file: str | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Answered:
    id: int
    decision: Decision


@dataclass(frozen=True, slots=True)
class Failed:
    id: int
    error: ScriptError


@dataclass(frozen=True, slots=True)
class Call:
    id: Any          # worker-chosen, echoed back in the result
    event: Any       # the event id the call belongs to (informational)
    op: str
    args: list


@dataclass(frozen=True, slots=True)
class Pong:
    id: int


@dataclass(frozen=True, slots=True)
class Log:
    level: str
    message: str
    event: Any = None


# Connection states (PROTOCOL.md "Lifecycle").
IDLE, HELLO_SENT, READY, CLOSING = "idle", "hello_sent", "ready", "closing"


class HostCodec:
    """One connection to one worker."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self.state = IDLE
        self.hooks: frozenset = frozenset()
        self._buf = bytearray()
        self._scan = 0                    # bytes of _buf already known to hold no LF
        self._pending: dict[int, str] = {}  # event id -> hook, in flight
        self._last_event = 0
        self._last_ping = 0
        self._last_pong = 0

    # ---------------------------------------------------------------- output

    def hello(self, route: str, settings: dict | None = None) -> bytes:
        if self.state != IDLE:
            raise RuntimeError("hello already sent")
        self.state = HELLO_SENT
        msg = {"type": "hello", "protocol": PROTOCOL_VERSION, "route": route,
               "settings": {"max_line": self.max_line, **(settings or {})}}
        return orjson.dumps(msg) + b"\n"

    def event(self, hook: str, event: dict) -> tuple[int, bytes]:
        """Frame one event; it is in flight until answered or abandoned.
        Raises ScriptError when the event cannot be sent (too large, not JSON)."""
        if self.state != READY:
            raise RuntimeError(f"cannot send events in state {self.state}")
        ident = self._last_event + 1
        try:
            data = orjson.dumps({"type": "event", "id": ident, "hook": hook, "event": event})
        except TypeError as e:
            raise ScriptError(f"event is not JSON-serialisable: {e}", kind="error") from None
        if len(data) > self.max_line:
            raise ScriptError(f"event of {len(data)} bytes exceeds the line limit "
                              f"of {self.max_line}", kind="error")
        self._last_event = ident
        self._pending[ident] = hook
        return ident, data + b"\n"

    def abandon(self, ident: int) -> None:
        """The host stopped waiting (deadline); a late answer is ignored."""
        self._pending.pop(ident, None)

    def result(self, call_id, value=None) -> bytes:
        return orjson.dumps({"type": "result", "id": call_id, "value": value}) + b"\n"

    def call_error(self, call_id, message: str) -> bytes:
        return orjson.dumps({"type": "result", "id": call_id, "error": message}) + b"\n"

    def ping(self) -> bytes:
        self._last_ping += 1
        return b'{"type":"ping","id":%d}\n' % self._last_ping

    def shutdown(self) -> bytes:
        self.state = CLOSING
        return b'{"type":"shutdown"}\n'

    # ---------------------------------------------------------------- state

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def unanswered_pings(self) -> int:
        return self._last_ping - self._last_pong

    def take_in_flight(self) -> list[int]:
        """Forget every in-flight event (the connection died) and return their ids."""
        ids = list(self._pending)
        self._pending.clear()
        return ids

    # ---------------------------------------------------------------- input

    def receive(self, data: bytes) -> list:
        """Feed bytes read from the worker; return the effects, in order."""
        buf = self._buf
        buf += data
        effects = []
        start = 0
        pos = buf.find(b"\n", self._scan)
        while pos >= 0:
            if pos - start > self.max_line:
                raise ProtocolError(f"line of {pos - start} bytes exceeds {self.max_line}")
            line = bytes(buf[start:pos])
            start = pos + 1
            if line.strip():
                effect = self._message(line)
                if effect is not None:
                    effects.append(effect)
            pos = buf.find(b"\n", start)
        del buf[:start]
        if len(buf) > self.max_line:
            raise ProtocolError(f"line longer than {self.max_line} bytes")
        self._scan = len(buf)
        return effects

    def _message(self, line: bytes):
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise ProtocolError(f"not JSON: {e}; line starts {line[:60]!r}") from None
        if not isinstance(msg, dict):
            raise ProtocolError(f"a message must be a JSON object, got {type(msg).__name__}")
        kind = msg.get("type")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise ProtocolError(f"unknown message type {kind!r}")
        if self.state == HELLO_SENT and kind not in ("ready", "fatal", "log"):
            raise ProtocolError(f"{kind!r} before 'ready'")
        if self.state == IDLE:
            raise ProtocolError(f"{kind!r} before 'hello'")
        return handler(self, msg)

    def _on_ready(self, msg):
        if self.state != HELLO_SENT:
            raise ProtocolError("second 'ready'")
        version = msg.get("protocol")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"worker speaks protocol {version!r}, host speaks {PROTOCOL_VERSION}")
        hooks = msg.get("hooks")
        if not isinstance(hooks, list) or not all(isinstance(h, str) for h in hooks):
            raise ProtocolError("'ready' needs hooks: a list of hook names")
        # Unknown hook names are ignored: a newer SDK may know more hooks.
        known = frozenset(h for h in hooks if h in HOOKS)
        sdk = msg.get("sdk")
        self.state = READY
        self.hooks = known
        return Ready(version, sdk if isinstance(sdk, str) else "", known)

    def _on_fatal(self, msg):
        message = msg.get("message")
        line = msg.get("line")
        file = msg.get("file")
        return Fatal(message if isinstance(message, str) else "worker failed",
                     file if isinstance(file, str) else None,
                     line if isinstance(line, int) and not isinstance(line, bool) else None)

    def _event_id(self, msg):
        """The in-flight event a message answers; None for a stale one."""
        ident = msg.get("id")
        if isinstance(ident, bool) or not isinstance(ident, int):
            raise ProtocolError(f"{msg['type']!r} needs an integer id, got {ident!r}")
        if not 0 < ident <= self._last_event:
            raise ProtocolError(f"{msg['type']!r} for event {ident}, which was never sent")
        # Known but no longer pending: answered already, or abandoned on the
        # host's deadline. A late answer to an abandoned event is a normal race.
        if ident not in self._pending:
            return None
        return ident

    def _on_decision(self, msg):
        ident = self._event_id(msg)
        if ident is None:
            return None
        hook = self._pending.pop(ident)
        try:
            decision = decision_from_message(hook, msg)
        except VerbError as e:
            return Failed(ident, ScriptError(f"{hook}: {e}", kind="error"))
        return Answered(ident, decision)

    def _on_error(self, msg):
        ident = self._event_id(msg)
        if ident is None:
            return None
        self._pending.pop(ident)
        message = msg.get("message")
        file, line = msg.get("file"), msg.get("line")
        return Failed(ident, ScriptError(
            message if isinstance(message, str) else "script error",
            file=file if isinstance(file, str) else None,
            line=line if isinstance(line, int) and not isinstance(line, bool) else None,
            kind="error"))

    def _on_call(self, msg):
        ident, op, args = msg.get("id"), msg.get("op"), msg.get("args", [])
        if isinstance(ident, bool) or not isinstance(ident, (int, str)):
            raise ProtocolError(f"'call' needs an integer or string id, got {ident!r}")
        if not isinstance(op, str):
            raise ProtocolError(f"'call' needs op: a string, got {op!r}")
        if not isinstance(args, list):
            raise ProtocolError(f"'call' args must be a list, got {type(args).__name__}")
        return Call(ident, msg.get("event"), op, args)

    def _on_pong(self, msg):
        ident = msg.get("id")
        if isinstance(ident, bool) or not isinstance(ident, int) or not 0 < ident <= self._last_ping:
            raise ProtocolError(f"'pong' for a ping that was never sent: {ident!r}")
        self._last_pong = max(self._last_pong, ident)
        return Pong(ident)

    def _on_log(self, msg):
        level, message = msg.get("level", "info"), msg.get("message")
        if level not in LOG_LEVELS:
            level = "info"
        if not isinstance(message, str):
            message = orjson.dumps(message).decode()
        return Log(level, message, msg.get("event"))


_HANDLERS = {
    "ready": HostCodec._on_ready,
    "fatal": HostCodec._on_fatal,
    "decision": HostCodec._on_decision,
    "error": HostCodec._on_error,
    "call": HostCodec._on_call,
    "pong": HostCodec._on_pong,
    "log": HostCodec._on_log,
}


def decision_from_message(hook: str, msg: dict) -> Decision:
    """Replay a decision message's verb calls onto a Recorder (1:1 with
    `Recorder.apply`), then its vars. Raises VerbError."""
    rec = Recorder(hook)
    verbs = msg.get("verbs", [])
    if not isinstance(verbs, list):
        raise VerbError("'verbs' must be a list of [verb, args...] lists")
    for call in verbs:
        if not isinstance(call, list) or not call or not isinstance(call[0], str):
            raise VerbError(f"each verb call must be [name, args...], got {call!r}")
        rec.apply(call[0], call[1:])
    if "vars" in msg:
        rec.set_vars(msg["vars"])
    return rec.decision
