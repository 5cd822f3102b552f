"""The properties the fuzzers check, as plain functions of one input.

Each `check_*` takes the fuzzer's bytes and raises AssertionError (or lets
any unexpected exception through) when the invariant breaks:

- `check_parser`: any bytes give a message or `BadMessage`, nothing else,
  on both the C scanner and the pure-Python path.
- `check_proxy`: `ProxyCore.receive` never raises, over UDP (one datagram
  per message) and over TCP (bytes cut by `StreamFramer`), and every action
  it returns is well-formed. The timers it arms are fired and the routes it
  consults are answered, so those paths run too.

Nothing here imports atheris: run_fuzzer.py drives these under coverage
guidance, and test_fuzz_targets.py replays the message corpus through them
in every `make test`, with or without atheris installed.

Proxy input layout: byte 0 picks the mode (bit 0: TCP, bit 1: consult the
route instead of relay_to, bit 2: the route replies instead of relaying,
bit 3: feed the stream in two segments), the rest is up to MAX_MESSAGES
messages separated by SPLIT, all fed to one core so that later messages
meet the transactions earlier ones made. `%VIA%` in a message becomes the
top Via of the last request the core sent, so a fuzzed response can match a
client transaction.
"""

from __future__ import annotations

import itertools
import re

from host.routes.event import script_event
from host.routes.verbs import Recorder
from host.sip import parser
from host.sip.actions import Arm, Consult, Disarm, Locate, Transmit
from host.sip.decision import HOOKS, ON_REQUEST, Decision
from host.sip.errors import BadMessage
from host.sip.message import Message, Request
from host.sip.parser import StreamFramer, parse_message
from host.sip.proxy import ProxyCore

SPLIT = b"\x00--next--\x00"
MAX_MESSAGES = 8
# Timers fired per input: a retransmission timer re-arms itself until its
# transaction times out, so the bound keeps one input's work finite.
MAX_TIMERS = 200
LISTEN = [("udp", "127.0.0.1", 5060), ("tcp", "127.0.0.1", 5060)]
PEER = ("127.0.0.1", 5061)
UAS = "sip:bob@127.0.0.1:5071"

TCP, CONSULT, REPLY, SEGMENTS = 1, 2, 4, 8
_TOP_VIA = re.compile(rb"\r\n(?:via|v)[ \t]*:[ \t]*([^\r\n]*)", re.I)


# ------------------------------------------------------------------ parser
def check_parser(data: bytes) -> None:
    results = []
    for use_c in ((True, False) if parser.accelerated() else (False,)):
        parser.use_accelerator(use_c)
        try:
            for stream in (False, True):
                results.append(_parse_outcome(data, stream))
        finally:
            parser.use_accelerator(True)
    if len(results) == 4:
        # The scanner is an accelerator only: it must not change the answer.
        assert results[:2] == results[2:], (results[:2], results[2:])


def _parse_outcome(data: bytes, stream: bool):
    try:
        msg = parse_message(data, stream=stream)
    except BadMessage as exc:
        assert exc.status is None or 400 <= exc.status <= 599, exc
        return ("bad", exc.status)
    assert isinstance(msg, Message)
    return ("ok", type(msg).__name__, msg.headers, msg.body)


# ------------------------------------------------------------------- proxy
def new_core(consult: bool) -> ProxyCore:
    ids = itertools.count(1)
    return ProxyCore(LISTEN, relay_to=None if consult else UAS, new_id=lambda: f"f{next(ids)}")


def check_proxy(data: bytes, core: ProxyCore | None = None) -> "_Run | None":
    """Feed one fuzz input to `core` (a fresh one when None)."""
    if not data:
        return None
    mode, messages = data[0], data[1:].split(SPLIT)[:MAX_MESSAGES]
    if core is None:
        core = new_core(bool(mode & CONSULT))
    run = _Run(core, mode)
    transport = "tcp" if mode & TCP else "udp"
    for raw in messages:
        raw = raw.replace(b"%VIA%", run.last_via)
        if transport == "udp":
            run.deliver(raw, transport)
            continue
        framer = StreamFramer()
        cut = len(raw) // 2 if mode & SEGMENTS else len(raw)
        try:
            for segment in (raw[:cut], raw[cut:]):
                for framed in framer.feed(segment):
                    run.deliver(framed, transport)
        except BadMessage as exc:
            assert exc.status is None, exc   # the connection is closed, never answered
    run.fire_timers()
    return run


class _Run:
    """One input's pass through a core: checks and executes its actions."""

    def __init__(self, core: ProxyCore, mode: int):
        self.core, self.mode = core, mode
        self.timers: list = []
        self.parsed = True    # whether the message being handled parsed
        self.sent_requests: list[bytes] = []
        self.last_via = b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnone"

    def deliver(self, data: bytes, transport: str) -> None:
        try:
            parse_message(data, stream=transport != "udp")
            self.parsed = True
        except BadMessage:
            self.parsed = False
        self.execute(self.core.receive(data, transport, PEER))

    def fire_timers(self) -> None:
        self.parsed = True   # timers act for messages that did parse
        for _ in range(MAX_TIMERS):
            if not self.timers:
                return
            self.execute(self.core.timer(self.timers.pop(0)))

    def execute(self, actions) -> None:
        assert isinstance(actions, list), actions
        for action in actions:
            kind = type(action)
            if kind is Transmit:
                self._check_transmit(action)
            elif kind is Arm:
                assert isinstance(action.delay, (int, float)) and action.delay >= 0, action
                hash(action.key)
                self.timers.append(action.key)
            elif kind is Disarm:
                hash(action.key)
            elif kind is Consult:
                self._answer(action)
            elif kind is Locate:
                raise AssertionError(f"Locate from a core that is not locating: {action!r}")
            # DialogChange, KeepaliveAnswer: records for the shell, nothing to check

    def _check_transmit(self, t: Transmit) -> None:
        assert type(t.data) is bytes and t.data, t
        # Any name: one the shell has no listener for is its counted send
        # error (a stray 2xx goes by its Via's transport, §16.7 step 10).
        assert isinstance(t.transport, str) and t.transport, t
        assert isinstance(t.host, str) and t.host, t
        assert type(t.port) is int and 0 < t.port < 65536, t
        if t.data.startswith(b"SIP/2.0 "):
            # A response the core writes copies the request's headers as
            # they came (§8.2.6.2), broken ones too, so only its frame is
            # checked here; a relayed response was parsed on the way in.
            code = t.data[8:11]
            assert code.isdigit() and 100 <= int(code) <= 699, t
            assert b"\r\n\r\n" in t.data, t
            return
        # A request the core sends (relayed, or its own CANCEL/ACK) must be
        # readable by the next hop's parser.
        assert self.parsed, f"a request sent for input that did not parse: {t.data!r}"
        try:
            parse_message(t.data, stream=t.transport != "udp")
        except BadMessage as exc:
            raise AssertionError(f"the core sent a request it cannot parse ({exc}): {t.data!r}")
        self.sent_requests.append(t.data)
        top = _TOP_VIA.search(t.data)
        if top is not None:
            self.last_via = top.group(1)

    def _answer(self, c: Consult) -> None:
        assert c.hook in HOOKS and isinstance(c.token, int), c
        assert isinstance(c.request, Request), c
        script_event(c).plain()   # what the shell builds for the route
        rec = Recorder(c.hook)
        if c.hook == ON_REQUEST:
            if self.mode & REPLY:
                rec.reply(486, "Busy Here")
            else:
                rec.record_route()
                rec.relay(UAS)
        decision: Decision = rec.decision
        self.execute(self.core.decided(c.token, decision, "route", frozenset(HOOKS)))


def call_flow() -> list[bytes]:
    """INVITE, the UAS's 180 and 200 (matched through %VIA%), the ACK and
    a CANCEL: a sequence that reaches the response and ACK paths."""
    head = (b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKseed1\r\n"
            b"From: <sip:alice@127.0.0.1>;tag=a1\r\nCall-ID: seed@127.0.0.1\r\n"
            b"Max-Forwards: 70\r\n")
    invite = (b"INVITE sip:bob@127.0.0.1:5060 SIP/2.0\r\n" + head +
              b"To: <sip:bob@127.0.0.1>\r\nCSeq: 1 INVITE\r\n"
              b"Contact: <sip:alice@127.0.0.1:5061>\r\nContent-Length: 0\r\n\r\n")

    def reply(code: bytes) -> bytes:
        return (b"SIP/2.0 " + code + b"\r\nVia: %VIA%\r\n"
                b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKseed1;received=127.0.0.1\r\n"
                b"From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>;tag=b1\r\n"
                b"Call-ID: seed@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
                b"Contact: <sip:bob@127.0.0.1:5071>\r\nContent-Length: 0\r\n\r\n")

    ack = (b"ACK sip:bob@127.0.0.1:5071 SIP/2.0\r\n" + head.replace(b"seed1", b"seed2") +
           b"To: <sip:bob@127.0.0.1>;tag=b1\r\nCSeq: 1 ACK\r\nRoute: <sip:127.0.0.1:5060;lr>\r\n"
           b"Content-Length: 0\r\n\r\n")
    cancel = (b"CANCEL sip:bob@127.0.0.1:5060 SIP/2.0\r\n" + head +
              b"To: <sip:bob@127.0.0.1>\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n")
    return [invite, reply(b"180 Ringing"), cancel, reply(b"200 OK"), ack]
