"""RFC 3261 §17 transaction state machines, as amended by RFC 6026. Sans-IO.

Four machines: INVITE client (ICT, §17.1.1), non-INVITE client (NICT,
§17.1.2), INVITE server (IST, §17.2.1) and non-INVITE server (NIST, §17.2.2).
RFC 6026 adds the "Accepted" state to both INVITE machines: a 2xx moves there
(not to Terminated), so retransmitted INVITEs and 2xx keep matching the
transaction; Timer L (server) and Timer M (client) end it. The transaction
never builds or sends an ACK for a 2xx: that ACK belongs to the TU.

How it is used. Messages are opaque here. The caller feeds *inputs* and gets
back a list of *actions* to execute in order (or the constant `EMPTY`):

    txn = ClientTransaction(request, invite=True, reliable=False)
    actions = txn.start()                   # Send(request), StartTimer(...)…
    actions = txn.on_response(180, msg)     # PassUp(msg, 180)
    actions = txn.on_timer("B", gen)        # Timeout("B"), TERMINATED

Timers are inputs. `StartTimer(name, delay, generation)` asks the shell to
call `on_timer(name, generation)` after `delay` seconds. A fired timer whose
generation is not the latest one started under that name, or that means
nothing in the current state, is ignored — so the shell never has to cancel
timers. Generations are unique across all transactions of the process, so a
timer of an ended transaction can never pass for one of a later transaction
under the same key. On `TERMINATED`, `txn.pending_timers` lists the timers
still running, which the caller may cancel to free them early. A zero
duration (D, I, J, K on reliable transports) never leaves the machine: the
timer input is applied at once, in the same call.

ACK for a non-2xx final (§17.1.1.3) is built by the caller: the ICT emits
`SendAck(response)`; the caller builds the ACK from `txn.request` and that
response (it may cache it: every retransmitted final gets the same ACK).

What a lookup miss means, decided per kind of input:
  * wire inputs (responses, requests, ACK, timers, transport errors) that the
    table does not list are ignored: the network can always send late or
    stray messages (e.g. a retransmitted request after Terminated).
  * TU inputs (`start`, `respond`) that the table does not list raise
    `TransactionError`: they are bugs in the caller (responding twice,
    responding after Terminated, a 1xx after a final). The proxy must check
    `txn.state` before forwarding a late response (e.g. a 2xx from a forked
    branch after Timer L ended the server transaction goes straight to the
    transport, §16.7 step 10).
    Where the RFC says "discard", the table lists an explicit no-op.

Transaction keys (§17.1.3, §17.2.3) are at the bottom, as pure functions of
plain strings so this module does not depend on the message model.
"""

from __future__ import annotations

from itertools import count

from host.sip.timers import DEFAULT_TIMERS, TimerConfig

__all__ = [
    "ClientTransaction", "ServerTransaction", "TransactionError",
    "Send", "SendAck", "PassUp", "StartTimer", "Timeout", "TransportError", "Terminated",
    "TERMINATED", "TRANSPORT_ERROR", "EMPTY", "TRANSITIONS",
    "ICT", "NICT", "IST", "NIST",
    "INIT", "CALLING", "TRYING", "PROCEEDING", "COMPLETED", "CONFIRMED", "ACCEPTED",
    "TERMINATED_STATE",
    "MAGIC_COOKIE", "is_rfc3261_branch", "client_key", "server_key", "legacy_server_key",
]

# --- machines, states, inputs: RFC names ------------------------------------

ICT, NICT, IST, NIST = "ICT", "NICT", "IST", "NIST"

INIT = "Init"  # not an RFC state: the machine exists but its entry arrow has not run
CALLING = "Calling"
TRYING = "Trying"
PROCEEDING = "Proceeding"
COMPLETED = "Completed"
CONFIRMED = "Confirmed"
ACCEPTED = "Accepted"  # RFC 6026
TERMINATED_STATE = "Terminated"

# Wire inputs.
R_1XX = "1xx"
R_2XX = "2xx"
R_300_699 = "300-699"
REQUEST = "request"  # the request (IST: "INVITE") or a retransmission of it
ACK = "ACK"
TRANSPORT_ERR = "Transport Err."
TIMER_A, TIMER_B, TIMER_D, TIMER_E, TIMER_F, TIMER_G = (
    "Timer A", "Timer B", "Timer D", "Timer E", "Timer F", "Timer G")
TIMER_H, TIMER_I, TIMER_J, TIMER_K, TIMER_L, TIMER_M = (
    "Timer H", "Timer I", "Timer J", "Timer K", "Timer L", "Timer M")
# TU inputs.
TU_REQUEST = "request from TU"
TU_1XX = "1xx from TU"
TU_2XX = "2xx from TU"
TU_300_699 = "300-699 from TU"
TU_INPUTS = frozenset({TU_REQUEST, TU_1XX, TU_2XX, TU_300_699})

_TIMER_INPUT = {n: "Timer " + n for n in "ABDEFGHIJKLM"}

# Table steps: what a transition does, in RFC words.
SEND_REQUEST = "send request"
SEND_RESPONSE = "send response"  # the TU's response just given, or the last one again
SEND_ACK = "send ACK"  # §17.1.1.3, ACK for a 300-699, built by the caller
PASS_UP = "pass to TU"
INFORM_TIMEOUT = "inform TU: timeout"
INFORM_TRANSPORT_ERR = "inform TU: transport error"
START_A, START_B, START_D, START_E, START_F = (
    "start Timer A", "start Timer B", "start Timer D", "start Timer E", "start Timer F")
START_G, START_H, START_I, START_J, START_K, START_L, START_M = (
    "start Timer G", "start Timer H", "start Timer I", "start Timer J",
    "start Timer K", "start Timer L", "start Timer M")
RESTART_A = "reset Timer A to 2*A"
RESTART_E = "reset Timer E to min(2*E, T2)"
RESTART_E_T2 = "reset Timer E to T2"
RESTART_G = "reset Timer G to min(2*G, T2)"

def _t(next_state, *steps):
    return (next_state, steps)


# --- the table ---------------------------------------------------------------
# (machine, state, input) -> (next state, steps). Timer starts come last in a
# row because a zero-length timer fires at the end of the row.

TRANSITIONS: dict[tuple[str, str, str], tuple[str, tuple[str, ...]]] = {
    # ICT — RFC 3261 Figure 5 as redrawn by RFC 6026 Figure 5.
    # §17.1.1.2: "If an unreliable transport is being used, the client
    # transaction MUST start timer A"; Timer B is started for any transport.
    (ICT, INIT, TU_REQUEST): _t(CALLING, SEND_REQUEST, START_A, START_B),
    (ICT, CALLING, TIMER_A): _t(CALLING, SEND_REQUEST, RESTART_A),
    # "If the client transaction is still in the Calling state when timer B
    # fires, the client transaction SHOULD inform the TU that a timeout has
    # occurred. The client transaction MUST NOT generate an ACK."
    (ICT, CALLING, TIMER_B): _t(TERMINATED_STATE, INFORM_TIMEOUT),
    (ICT, CALLING, TRANSPORT_ERR): _t(TERMINATED_STATE, INFORM_TRANSPORT_ERR),
    (ICT, CALLING, R_1XX): _t(PROCEEDING, PASS_UP),
    (ICT, CALLING, R_2XX): _t(ACCEPTED, PASS_UP, START_M),
    (ICT, CALLING, R_300_699): _t(COMPLETED, PASS_UP, SEND_ACK, START_D),
    (ICT, PROCEEDING, R_1XX): _t(PROCEEDING, PASS_UP),
    (ICT, PROCEEDING, R_2XX): _t(ACCEPTED, PASS_UP, START_M),
    (ICT, PROCEEDING, R_300_699): _t(COMPLETED, PASS_UP, SEND_ACK, START_D),
    # §17.1.1.2: "Any retransmissions of the final response that are received
    # while in the Completed state MUST cause the ACK to be re-passed to the
    # transport layer for retransmission, but the newly received response
    # MUST NOT be passed up to the TU."
    (ICT, COMPLETED, R_300_699): _t(COMPLETED, SEND_ACK),
    (ICT, COMPLETED, TRANSPORT_ERR): _t(TERMINATED_STATE, INFORM_TRANSPORT_ERR),
    (ICT, COMPLETED, TIMER_D): _t(TERMINATED_STATE),
    # RFC 6026 §7.2: "A 2xx response received while in the Accepted state MUST
    # be passed to the TU ... The client transaction MUST NOT generate an ACK
    # to any 2xx response on its own."
    (ICT, ACCEPTED, R_2XX): _t(ACCEPTED, PASS_UP),
    (ICT, ACCEPTED, TIMER_M): _t(TERMINATED_STATE),

    # NICT — RFC 3261 Figure 6.
    (NICT, INIT, TU_REQUEST): _t(TRYING, SEND_REQUEST, START_E, START_F),
    (NICT, TRYING, TIMER_E): _t(TRYING, SEND_REQUEST, RESTART_E),
    (NICT, TRYING, TIMER_F): _t(TERMINATED_STATE, INFORM_TIMEOUT),
    (NICT, TRYING, TRANSPORT_ERR): _t(TERMINATED_STATE, INFORM_TRANSPORT_ERR),
    (NICT, TRYING, R_1XX): _t(PROCEEDING, PASS_UP),
    (NICT, TRYING, R_2XX): _t(COMPLETED, PASS_UP, START_K),
    (NICT, TRYING, R_300_699): _t(COMPLETED, PASS_UP, START_K),
    # §17.1.2.2: in Proceeding "Timer E MUST be reset with a value of T2".
    (NICT, PROCEEDING, TIMER_E): _t(PROCEEDING, SEND_REQUEST, RESTART_E_T2),
    (NICT, PROCEEDING, TIMER_F): _t(TERMINATED_STATE, INFORM_TIMEOUT),
    (NICT, PROCEEDING, TRANSPORT_ERR): _t(TERMINATED_STATE, INFORM_TRANSPORT_ERR),
    (NICT, PROCEEDING, R_1XX): _t(PROCEEDING, PASS_UP),
    (NICT, PROCEEDING, R_2XX): _t(COMPLETED, PASS_UP, START_K),
    (NICT, PROCEEDING, R_300_699): _t(COMPLETED, PASS_UP, START_K),
    # Completed "buffer[s] any additional response retransmissions": absorbed.
    (NICT, COMPLETED, R_1XX): _t(COMPLETED),
    (NICT, COMPLETED, R_2XX): _t(COMPLETED),
    (NICT, COMPLETED, R_300_699): _t(COMPLETED),
    (NICT, COMPLETED, TIMER_K): _t(TERMINATED_STATE),

    # IST — RFC 6026 Figure 7 (replaces RFC 3261 Figure 7).
    (IST, INIT, REQUEST): _t(PROCEEDING, PASS_UP),
    # Retransmitted INVITE: resend the last provisional, if any.
    (IST, PROCEEDING, REQUEST): _t(PROCEEDING, SEND_RESPONSE),
    (IST, PROCEEDING, TU_1XX): _t(PROCEEDING, SEND_RESPONSE),
    # RFC 6026 Figure 7 draws Transport Err. in Proceeding as a loop.
    (IST, PROCEEDING, TRANSPORT_ERR): _t(PROCEEDING, INFORM_TRANSPORT_ERR),
    (IST, PROCEEDING, TU_2XX): _t(ACCEPTED, SEND_RESPONSE, START_L),
    (IST, PROCEEDING, TU_300_699): _t(COMPLETED, SEND_RESPONSE, START_G, START_H),
    (IST, COMPLETED, REQUEST): _t(COMPLETED, SEND_RESPONSE),
    (IST, COMPLETED, TIMER_G): _t(COMPLETED, SEND_RESPONSE, RESTART_G),
    # §17.2.1: Timer H "implies that the ACK was never received ... MUST
    # indicate to the TU that a transaction failure has occurred."
    (IST, COMPLETED, TIMER_H): _t(TERMINATED_STATE, INFORM_TIMEOUT),
    (IST, COMPLETED, TRANSPORT_ERR): _t(TERMINATED_STATE, INFORM_TRANSPORT_ERR),
    (IST, COMPLETED, ACK): _t(CONFIRMED, START_I),
    # A second final from the TU after a non-2xx final is discarded, as §17.2.2
    # says for the NIST.
    (IST, COMPLETED, TU_300_699): _t(COMPLETED),
    (IST, CONFIRMED, TU_300_699): _t(CONFIRMED),
    (IST, CONFIRMED, ACK): _t(CONFIRMED),  # "absorb any additional ACK messages"
    (IST, CONFIRMED, TIMER_I): _t(TERMINATED_STATE),
    # RFC 6026 §7.1: INVITE retransmissions in Accepted "will be absorbed by
    # the machine without changing its state. These retransmissions are not
    # passed onto the TU." 2xx from the TU are sent; ACKs go to the TU.
    (IST, ACCEPTED, REQUEST): _t(ACCEPTED),
    (IST, ACCEPTED, ACK): _t(ACCEPTED, PASS_UP),
    (IST, ACCEPTED, TU_2XX): _t(ACCEPTED, SEND_RESPONSE),
    (IST, ACCEPTED, TRANSPORT_ERR): _t(ACCEPTED, INFORM_TRANSPORT_ERR),
    (IST, ACCEPTED, TIMER_L): _t(TERMINATED_STATE),

    # NIST — RFC 3261 Figure 8.
    (NIST, INIT, REQUEST): _t(TRYING, PASS_UP),
    # §17.2.2: "Once in the Trying state, any further request retransmissions
    # are discarded."
    (NIST, TRYING, REQUEST): _t(TRYING),
    (NIST, TRYING, TU_1XX): _t(PROCEEDING, SEND_RESPONSE),
    (NIST, TRYING, TU_2XX): _t(COMPLETED, SEND_RESPONSE, START_J),
    (NIST, TRYING, TU_300_699): _t(COMPLETED, SEND_RESPONSE, START_J),
    (NIST, PROCEEDING, REQUEST): _t(PROCEEDING, SEND_RESPONSE),
    (NIST, PROCEEDING, TU_1XX): _t(PROCEEDING, SEND_RESPONSE),
    (NIST, PROCEEDING, TU_2XX): _t(COMPLETED, SEND_RESPONSE, START_J),
    (NIST, PROCEEDING, TU_300_699): _t(COMPLETED, SEND_RESPONSE, START_J),
    (NIST, PROCEEDING, TRANSPORT_ERR): _t(TERMINATED_STATE, INFORM_TRANSPORT_ERR),
    (NIST, COMPLETED, REQUEST): _t(COMPLETED, SEND_RESPONSE),
    # §17.2.2: "Any other final responses passed by the TU to the server
    # transaction MUST be discarded while in the Completed state."
    (NIST, COMPLETED, TU_2XX): _t(COMPLETED),
    (NIST, COMPLETED, TU_300_699): _t(COMPLETED),
    (NIST, COMPLETED, TRANSPORT_ERR): _t(TERMINATED_STATE, INFORM_TRANSPORT_ERR),
    (NIST, COMPLETED, TIMER_J): _t(TERMINATED_STATE),
}

class TransactionError(Exception):
    """The TU asked for something the machine cannot do in its state."""


# --- actions -----------------------------------------------------------------

class _Action:
    __slots__ = ()

    def __eq__(self, other):
        return type(other) is type(self) and all(
            getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __hash__(self):
        return hash((type(self),) + tuple(getattr(self, f) for f in self.__slots__))

    def __repr__(self):
        fields = ", ".join(repr(getattr(self, f)) for f in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Send(_Action):
    """Hand `message` to the transport: the (re)sent request of a client
    transaction, or the (re)sent last response of a server transaction."""
    __slots__ = __match_args__ = ("message",)

    def __init__(self, message):
        self.message = message


class SendAck(_Action):
    """ICT only: build the ACK for this 300-699 `response` (§17.1.1.3, from
    `txn.request`) and hand it to the transport."""
    __slots__ = __match_args__ = ("response",)

    def __init__(self, response):
        self.response = response


class PassUp(_Action):
    """Give `message` to the TU: a response (client), or the creating request
    or an ACK in Accepted (server; `status` is 0 for requests)."""
    __slots__ = __match_args__ = ("message", "status")

    def __init__(self, message, status):
        self.message = message
        self.status = status


class StartTimer(_Action):
    """Call `txn.on_timer(name, generation)` after `delay` seconds."""
    __slots__ = __match_args__ = ("name", "delay", "generation")

    def __init__(self, name, delay, generation):
        self.name = name
        self.delay = delay
        self.generation = generation


class Timeout(_Action):
    """Tell the TU the transaction timed out: "B"/"F" (no final response — a
    proxy synthesizes 408, §16.7) or "H" (IST: the ACK never came)."""
    __slots__ = __match_args__ = ("timer",)

    def __init__(self, timer):
        self.timer = timer


class TransportError(_Action):
    """Tell the TU the transport failed to send for this transaction (§17.1.4, §17.2.4)."""
    __slots__ = ()


class Terminated(_Action):
    """The transaction reached Terminated: forget it and its timers."""
    __slots__ = ()


TERMINATED = Terminated()
TRANSPORT_ERROR = TransportError()
EMPTY: tuple = ()


# --- the machines ------------------------------------------------------------

# One counter for every transaction: see "Timers are inputs" above.
_next_generation = count(1).__next__


class _Transaction:
    __slots__ = ("machine", "state", "request", "reliable", "config",
                 "key", "context", "_rows", "_armed", "_interval", "__weakref__")

    def __init__(self, machine, request, reliable, config, key, context):
        self.machine = machine
        self.state = INIT
        self.request = request
        self.reliable = reliable
        self.config = config
        self.key = key  # free for the caller: usually the transaction key
        self.context = context  # free for the caller: e.g. the proxy branch
        self._rows = _ROWS[machine]
        self._armed = {}  # timer name -> generation of its latest start, until it fires
        self._interval = 0.0  # current interval of the retransmit timer (A, E or G)

    @property
    def terminated(self) -> bool:
        return self.state is TERMINATED_STATE

    @property
    def pending_timers(self) -> dict:
        """{timer name: generation} of the timers started and not yet fired.
        Kept after Terminated (no timer means anything there) so the caller
        can cancel them then."""
        return self._armed

    def on_timer(self, name: str, generation: int):
        """Timer `name` ("A".."M") started with `generation` has fired."""
        if self._armed.get(name) != generation:
            return EMPTY  # stale: restarted since, or never ours
        del self._armed[name]
        return self._handle(_TIMER_INPUT[name], None, 0)

    def on_transport_error(self):
        """Sending a message of this transaction failed."""
        return self._handle(TRANSPORT_ERR, None, 0)

    def _handle(self, inp, msg, status):
        transition = self._rows[self.state].get(inp)
        if transition is None:
            if inp in TU_INPUTS:
                raise TransactionError(
                    f"{self.machine} in state {self.state}: {inp!r} is not allowed")
            return EMPTY
        next_state, steps = transition
        if not steps and next_state is self.state:
            return EMPTY  # absorbed / discarded, as the RFC says
        out = []
        self._apply(transition, msg, status, out)
        return out

    def _apply(self, transition, msg, status, out):
        next_state, steps = transition
        self.state = next_state
        fire_now = None
        for step in steps:
            fired = step(self, msg, status, out)
            if fired is not None:
                fire_now = fired
        if next_state is TERMINATED_STATE:
            out.append(TERMINATED)
        elif fire_now is not None:
            # A zero-length timer (reliable transport) fires right here.
            now = self._rows[next_state].get(fire_now)
            if now is not None:
                self._apply(now, None, 0, out)

    def _arm(self, name, delay, out):
        if delay <= 0.0:
            return _TIMER_INPUT[name]
        generation = self._armed[name] = _next_generation()
        out.append(StartTimer(name, delay, generation))
        return None

    def __repr__(self):
        return f"<{self.machine} {self.state} reliable={self.reliable}>"


class ClientTransaction(_Transaction):
    """ICT (`invite=True`) or NICT for `request` (opaque). Inputs:
    `start()`, `on_response(status, msg)`, `on_timer(name, generation)`,
    `on_transport_error()`; each returns a list of actions or `EMPTY`."""

    __slots__ = ()

    def __init__(self, request, *, invite: bool, reliable: bool,
                 config: TimerConfig = DEFAULT_TIMERS, key=None, context=None):
        super().__init__(ICT if invite else NICT, request, reliable, config, key, context)

    def start(self):
        """Send the request (the RFC's "INVITE from TU" / "Request from TU")."""
        return self._handle(TU_REQUEST, self.request, 0)

    def on_response(self, status: int, msg):
        """A response matched to this transaction arrived."""
        if not 100 <= status <= 699:
            return EMPTY
        return self._handle(_RESPONSE_INPUT[status // 100], msg, status)


class ServerTransaction(_Transaction):
    """IST (`invite=True`) or NIST for the received `request` (opaque). Inputs:
    `start()`, `on_request(msg, is_ack)`, `respond(status, msg)`,
    `on_timer(name, generation)`, `on_transport_error()`."""

    __slots__ = ("last_response", "last_status")

    def __init__(self, request, *, invite: bool, reliable: bool,
                 config: TimerConfig = DEFAULT_TIMERS, key=None, context=None):
        super().__init__(IST if invite else NIST, request, reliable, config, key, context)
        self.last_response = None
        self.last_status = 0

    def start(self):
        """Run the entry arrow: pass the creating request to the TU."""
        if self.state is not INIT:
            raise TransactionError(f"{self.machine} already started ({self.state})")
        return self._handle(REQUEST, self.request, 0)

    def on_request(self, msg, is_ack: bool = False):
        """A request matched to this transaction arrived: a retransmission of
        the creating request, or (IST) an ACK."""
        return self._handle(ACK if is_ack else REQUEST, msg, 0)

    def respond(self, status: int, msg):
        """The TU sends response `msg` with `status` (100-699) through the
        transaction; for an IST the TU's own 100 Trying goes this way too."""
        if not 100 <= status <= 699:
            raise ValueError(f"response status out of range: {status}")
        inp = _TU_RESPONSE_INPUT[status // 100]
        transition = self._rows[self.state].get(inp)
        if transition is None:
            raise TransactionError(
                f"{self.machine} in state {self.state}: {inp!r} ({status}) is not allowed")
        if not transition[1]:
            return EMPTY  # discarded, as §17.2.2 says
        self.last_response = msg
        self.last_status = status
        out = []
        self._apply(transition, msg, status, out)
        return out


_RESPONSE_INPUT = (None, R_1XX, R_2XX, R_300_699, R_300_699, R_300_699, R_300_699)
_TU_RESPONSE_INPUT = (None, TU_1XX, TU_2XX, TU_300_699, TU_300_699, TU_300_699, TU_300_699)


# --- steps: one function per table step --------------------------------------

def _send_request(t, msg, status, out):
    out.append(Send(t.request))


def _send_response(t, msg, status, out):
    if t.last_response is not None:  # IST retransmitted INVITE before any 1xx
        out.append(Send(t.last_response))


def _send_ack(t, msg, status, out):
    out.append(SendAck(msg))


def _pass_up(t, msg, status, out):
    out.append(PassUp(msg, status))


def _inform_timeout(t, msg, status, out):
    out.append(_TIMEOUT_FOR[t.machine])


# Which timer's expiry is a timeout, per machine: B (ICT), F (NICT), H (IST).
_TIMEOUT_FOR = {ICT: Timeout("B"), NICT: Timeout("F"), IST: Timeout("H")}


def _inform_transport_err(t, msg, status, out):
    out.append(TRANSPORT_ERROR)


def _retransmit_timer(name, first):
    """Start a retransmit timer: only on unreliable transports (§17.1.1.2,
    §17.1.2.2, §17.2.1 all say "if an unreliable transport is in use")."""
    def step(t, msg, status, out):
        if t.reliable:
            return None
        t._interval = first(t.config)
        return t._arm(name, t._interval, out)
    return step


def _reset_timer(name, following):
    def step(t, msg, status, out):
        t._interval = following(t.config, t._interval)
        return t._arm(name, t._interval, out)
    return step


def _wait_timer(name, duration):
    def step(t, msg, status, out):
        return t._arm(name, duration(t.config, t.reliable), out)
    return step


_STEPS = {
    SEND_REQUEST: _send_request,
    SEND_RESPONSE: _send_response,
    SEND_ACK: _send_ack,
    PASS_UP: _pass_up,
    INFORM_TIMEOUT: _inform_timeout,
    INFORM_TRANSPORT_ERR: _inform_transport_err,
    START_A: _retransmit_timer("A", TimerConfig.a),
    START_E: _retransmit_timer("E", TimerConfig.e),
    START_G: _retransmit_timer("G", TimerConfig.g),
    RESTART_A: _reset_timer("A", TimerConfig.a_next),
    RESTART_E: _reset_timer("E", TimerConfig.e_next),
    RESTART_E_T2: _reset_timer("E", lambda c, _prev: c.e_proceeding()),
    RESTART_G: _reset_timer("G", TimerConfig.g_next),
    START_B: _wait_timer("B", lambda c, _r: c.b()),
    START_F: _wait_timer("F", lambda c, _r: c.f()),
    START_H: _wait_timer("H", lambda c, _r: c.h()),
    START_L: _wait_timer("L", lambda c, _r: c.l()),
    START_M: _wait_timer("M", lambda c, _r: c.m()),
    START_D: _wait_timer("D", TimerConfig.d),
    START_I: _wait_timer("I", TimerConfig.i),
    START_J: _wait_timer("J", TimerConfig.j),
    START_K: _wait_timer("K", TimerConfig.k),
}


def _compile(table):
    """Per machine: state -> {input -> (next state, step functions)}: two dict
    lookups per event and no name lookups while stepping."""
    rows: dict[str, dict[str, dict[str, tuple]]] = {
        m: {TERMINATED_STATE: {}} for m in (ICT, NICT, IST, NIST)}
    for (machine, state, inp), (next_state, steps) in table.items():
        rows[machine].setdefault(state, {})[inp] = (
            next_state, tuple(_STEPS[step] for step in steps))
    return rows


_ROWS = _compile(TRANSITIONS)


# --- transaction keys (§17.1.3, §17.2.3) --------------------------------------

MAGIC_COOKIE = "z9hG4bK"  # §8.1.1.7: an RFC 3261 branch starts with it


def is_rfc3261_branch(branch: str | None) -> bool:
    """True if the top Via branch carries the magic cookie, so the branch
    alone (with sent-by and method) identifies the transaction."""
    return branch is not None and branch.startswith(MAGIC_COOKIE)


def client_key(branch: str, cseq_method: str) -> tuple[str, str]:
    """Key matching a response to a client transaction (§17.1.3): the top Via
    branch and the CSeq method — a CANCEL shares its INVITE's branch."""
    return (branch, cseq_method)


def server_key(branch: str, sent_by: str, method: str) -> tuple[str, str, str]:
    """Key of a server transaction for a request whose top Via branch has the
    magic cookie (§17.2.3): branch, sent-by and method, with ACK matching the
    INVITE it acknowledges. CANCEL stays distinct; the INVITE a CANCEL
    targets (§9.2) is `server_key(branch, sent_by, "INVITE")`. Host names
    compare case-insensitively, so sent-by is lowercased."""
    if method == "ACK":
        method = "INVITE"
    return (branch, sent_by.lower(), method)


def legacy_server_key(request_uri: str, to_tag: str, from_tag: str, call_id: str,
                      cseq_number: int | str, cseq_method: str, top_via: str) -> tuple:
    """Key of a server transaction for an RFC 2543 request (no magic cookie,
    §17.2.3): Request-URI, To tag, From tag, Call-ID, CSeq and top Via.

    INVITE and ACK share a key without the To tag: the ACK for a non-2xx
    carries the tag the server put in its response, which the INVITE did not
    have. The caller that wants the RFC's full check compares the ACK's To
    tag with the tag of the response it sent. Absent tags are "".
    """
    if cseq_method == "INVITE" or cseq_method == "ACK":
        return (request_uri, from_tag, call_id, int(cseq_number), "INVITE", top_via)
    return (request_uri, to_tag, from_tag, call_id, int(cseq_number), cseq_method, top_via)
