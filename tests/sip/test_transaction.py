"""RFC 3261 §17 / RFC 6026 transaction machines, driven transition by transition.

Every row of `TRANSITIONS` is exercised by the table below (a test checks that),
plus retransmission schedules on a simulated clock, reliable transports, stale
timer generations, TU misuse, transaction keys, and one run on trio's MockClock.
"""

import ast
import heapq
import pathlib

import pytest
import trio
import trio.testing

from host.sip import transaction as tx
from host.sip.timers import TimerConfig
from host.sip.transaction import (
    EMPTY, TERMINATED, TRANSITIONS, TRANSPORT_ERROR, ClientTransaction, PassUp, Send,
    SendAck, ServerTransaction, StartTimer, Timeout, TransactionError, client_key,
    is_rfc3261_branch, legacy_server_key, server_key,
)

ICT, NICT, IST, NIST = tx.ICT, tx.NICT, tx.IST, tx.NIST


# --- a small driver: symbolic inputs in, summarized actions out ---------------
# Inputs: "start", an int (response received, client), "req", "ack",
# ("tu", status) (TU response, server), ("timer", name), "terr".
# Messages are strings: "REQ" is the transaction's request, f"r{status}" a response.


def make(machine, reliable=False, config=None):
    kw = dict(invite=machine in (ICT, IST), reliable=reliable)
    if config is not None:
        kw["config"] = config
    cls = ClientTransaction if machine in (ICT, NICT) else ServerTransaction
    return cls("REQ", **kw)


class Driver:
    def __init__(self, machine, reliable=False, config=None):
        self.t = make(machine, reliable, config)
        self.generations = {}  # latest generation started per timer name
        self.visited = []  # (machine, state before, RFC input) per applied input

    def rfc_input(self, inp):
        if inp == "start":
            return tx.TU_REQUEST if self.t.machine in (ICT, NICT) else tx.REQUEST
        if isinstance(inp, int):
            return {1: tx.R_1XX, 2: tx.R_2XX}.get(inp // 100, tx.R_300_699)
        if inp == "req":
            return tx.REQUEST
        if inp == "ack":
            return tx.ACK
        if inp == "terr":
            return tx.TRANSPORT_ERR
        kind, arg = inp
        if kind == "tu":
            return {1: tx.TU_1XX, 2: tx.TU_2XX}.get(arg // 100, tx.TU_300_699)
        return "Timer " + arg

    def feed(self, inp):
        self.visited.append((self.t.machine, self.t.state, self.rfc_input(inp)))
        t = self.t
        if inp == "start":
            actions = t.start()
        elif isinstance(inp, int):
            actions = t.on_response(inp, f"r{inp}")
        elif inp == "req":
            actions = t.on_request("REQ")
        elif inp == "ack":
            actions = t.on_request("ACK", is_ack=True)
        elif inp == "terr":
            actions = t.on_transport_error()
        elif inp[0] == "tu":
            actions = t.respond(inp[1], f"r{inp[1]}")
        else:
            actions = t.on_timer(inp[1], self.generations.get(inp[1], -1))
        for a in actions:
            if type(a) is StartTimer:
                self.generations[a.name] = a.generation
        return [summary(a) for a in actions]


def summary(a):
    if type(a) is Send:
        return ("Send", a.message)
    if type(a) is SendAck:
        return ("SendAck", a.response)
    if type(a) is PassUp:
        return ("PassUp", a.message)
    if type(a) is StartTimer:
        return ("Start", a.name, a.delay)
    if type(a) is Timeout:
        return ("Timeout", a.timer)
    if a is TRANSPORT_ERROR:
        return ("TransportError",)
    if a is TERMINATED:
        return ("Terminated",)
    raise AssertionError(f"unknown action {a!r}")


S = lambda m: ("Send", m)  # noqa: E731
UP = lambda m: ("PassUp", m)  # noqa: E731
T = lambda n, d: ("Start", n, d)  # noqa: E731
TO = lambda n: ("Timeout", n)  # noqa: E731
TERR = ("TransportError",)
END = ("Terminated",)
U, R = False, True  # unreliable / reliable transport

# (machine, reliable, path to reach the state, input, expected state, expected actions)
CASES = [
    # ---- ICT: RFC 3261 Figure 5 / RFC 6026 Figure 5 ----
    (ICT, U, [], "start", "Calling", [S("REQ"), T("A", 0.5), T("B", 32.0)]),
    (ICT, R, [], "start", "Calling", [S("REQ"), T("B", 32.0)]),
    (ICT, U, ["start"], ("timer", "A"), "Calling", [S("REQ"), T("A", 1.0)]),
    (ICT, U, ["start"], ("timer", "B"), "Terminated", [TO("B"), END]),
    (ICT, U, ["start"], "terr", "Terminated", [TERR, END]),
    (ICT, U, ["start"], 180, "Proceeding", [UP("r180")]),
    (ICT, U, ["start"], 200, "Accepted", [UP("r200"), T("M", 32.0)]),
    (ICT, U, ["start"], 486, "Completed", [UP("r486"), ("SendAck", "r486"), T("D", 32.0)]),
    (ICT, R, ["start"], 486, "Terminated", [UP("r486"), ("SendAck", "r486"), END]),
    (ICT, U, ["start", 180], 183, "Proceeding", [UP("r183")]),
    (ICT, U, ["start", 180], 200, "Accepted", [UP("r200"), T("M", 32.0)]),
    (ICT, U, ["start", 180], 603, "Completed", [UP("r603"), ("SendAck", "r603"), T("D", 32.0)]),
    (ICT, U, ["start", 180], ("timer", "A"), "Proceeding", []),  # retransmits stop
    (ICT, U, ["start", 180], ("timer", "B"), "Proceeding", []),  # B only in Calling
    (ICT, U, ["start", 486], 486, "Completed", [("SendAck", "r486")]),
    (ICT, U, ["start", 486], 200, "Completed", []),
    (ICT, U, ["start", 486], 180, "Completed", []),
    (ICT, U, ["start", 486], "terr", "Terminated", [TERR, END]),
    (ICT, U, ["start", 486], ("timer", "D"), "Terminated", [END]),
    (ICT, U, ["start", 200], 200, "Accepted", [UP("r200")]),
    (ICT, U, ["start", 200], 180, "Accepted", []),
    (ICT, U, ["start", 200], 486, "Accepted", []),
    (ICT, U, ["start", 200], ("timer", "M"), "Terminated", [END]),
    (ICT, U, ["start", 200, ("timer", "M")], 200, "Terminated", []),
    # ---- NICT: RFC 3261 Figure 6 ----
    (NICT, U, [], "start", "Trying", [S("REQ"), T("E", 0.5), T("F", 32.0)]),
    (NICT, R, [], "start", "Trying", [S("REQ"), T("F", 32.0)]),
    (NICT, U, ["start"], ("timer", "E"), "Trying", [S("REQ"), T("E", 1.0)]),
    (NICT, U, ["start"], ("timer", "F"), "Terminated", [TO("F"), END]),
    (NICT, U, ["start"], "terr", "Terminated", [TERR, END]),
    (NICT, U, ["start"], 100, "Proceeding", [UP("r100")]),
    (NICT, U, ["start"], 200, "Completed", [UP("r200"), T("K", 5.0)]),
    (NICT, U, ["start"], 404, "Completed", [UP("r404"), T("K", 5.0)]),
    (NICT, R, ["start"], 200, "Terminated", [UP("r200"), END]),
    (NICT, U, ["start", 100], ("timer", "E"), "Proceeding", [S("REQ"), T("E", 4.0)]),
    (NICT, U, ["start", 100], ("timer", "F"), "Terminated", [TO("F"), END]),
    (NICT, U, ["start", 100], "terr", "Terminated", [TERR, END]),
    (NICT, U, ["start", 100], 180, "Proceeding", [UP("r180")]),
    (NICT, U, ["start", 100], 202, "Completed", [UP("r202"), T("K", 5.0)]),
    (NICT, U, ["start", 100], 500, "Completed", [UP("r500"), T("K", 5.0)]),
    (NICT, U, ["start", 200], 200, "Completed", []),
    (NICT, U, ["start", 200], 100, "Completed", []),
    (NICT, U, ["start", 200], 503, "Completed", []),
    (NICT, U, ["start", 200], ("timer", "E"), "Completed", []),
    (NICT, U, ["start", 200], ("timer", "K"), "Terminated", [END]),
    # ---- IST: RFC 6026 Figure 7 ----
    (IST, U, [], "start", "Proceeding", [UP("REQ")]),
    (IST, U, ["start"], "req", "Proceeding", []),  # nothing to resend yet
    (IST, U, ["start"], ("tu", 100), "Proceeding", [S("r100")]),
    (IST, U, ["start", ("tu", 100)], "req", "Proceeding", [S("r100")]),
    (IST, U, ["start", ("tu", 100)], ("tu", 180), "Proceeding", [S("r180")]),
    (IST, U, ["start", ("tu", 100), ("tu", 180)], "req", "Proceeding", [S("r180")]),
    (IST, U, ["start"], "terr", "Proceeding", [TERR]),
    (IST, U, ["start"], ("tu", 200), "Accepted", [S("r200"), T("L", 32.0)]),
    (IST, U, ["start"], ("tu", 486), "Completed", [S("r486"), T("G", 0.5), T("H", 32.0)]),
    (IST, R, ["start"], ("tu", 486), "Completed", [S("r486"), T("H", 32.0)]),
    (IST, U, ["start", ("tu", 486)], "req", "Completed", [S("r486")]),
    (IST, U, ["start", ("tu", 486)], ("timer", "G"), "Completed", [S("r486"), T("G", 1.0)]),
    (IST, U, ["start", ("tu", 486)], ("timer", "H"), "Terminated", [TO("H"), END]),
    (IST, U, ["start", ("tu", 486)], "terr", "Terminated", [TERR, END]),
    (IST, U, ["start", ("tu", 486)], "ack", "Confirmed", [T("I", 5.0)]),
    (IST, R, ["start", ("tu", 486)], "ack", "Terminated", [END]),
    (IST, U, ["start", ("tu", 486)], ("tu", 500), "Completed", []),  # discarded
    (IST, U, ["start", ("tu", 486), "ack"], "ack", "Confirmed", []),
    (IST, U, ["start", ("tu", 486), "ack"], "req", "Confirmed", []),
    (IST, U, ["start", ("tu", 486), "ack"], ("timer", "G"), "Confirmed", []),
    (IST, U, ["start", ("tu", 486), "ack"], ("tu", 500), "Confirmed", []),
    (IST, U, ["start", ("tu", 486), "ack"], ("timer", "I"), "Terminated", [END]),
    (IST, U, ["start", ("tu", 200)], "req", "Accepted", []),  # absorbed, not to TU
    (IST, U, ["start", ("tu", 200)], "ack", "Accepted", [UP("ACK")]),
    (IST, U, ["start", ("tu", 200)], ("tu", 200), "Accepted", [S("r200")]),
    (IST, U, ["start", ("tu", 200)], "terr", "Accepted", [TERR]),
    (IST, U, ["start", ("tu", 200)], ("timer", "L"), "Terminated", [END]),
    (IST, U, ["start", ("tu", 486), ("timer", "H")], "req", "Terminated", []),
    (IST, U, ["start", ("tu", 486), ("timer", "H")], "ack", "Terminated", []),
    # ---- NIST: RFC 3261 Figure 8 ----
    (NIST, U, [], "start", "Trying", [UP("REQ")]),
    (NIST, U, ["start"], "req", "Trying", []),
    (NIST, U, ["start"], "ack", "Trying", []),
    (NIST, U, ["start"], ("tu", 100), "Proceeding", [S("r100")]),
    (NIST, U, ["start"], ("tu", 200), "Completed", [S("r200"), T("J", 32.0)]),
    (NIST, U, ["start"], ("tu", 404), "Completed", [S("r404"), T("J", 32.0)]),
    (NIST, R, ["start"], ("tu", 200), "Terminated", [S("r200"), END]),
    (NIST, U, ["start", ("tu", 100)], "req", "Proceeding", [S("r100")]),
    (NIST, U, ["start", ("tu", 100)], ("tu", 180), "Proceeding", [S("r180")]),
    (NIST, U, ["start", ("tu", 100)], ("tu", 200), "Completed", [S("r200"), T("J", 32.0)]),
    (NIST, U, ["start", ("tu", 100)], ("tu", 500), "Completed", [S("r500"), T("J", 32.0)]),
    (NIST, U, ["start", ("tu", 100)], "terr", "Terminated", [TERR, END]),
    (NIST, U, ["start", ("tu", 200)], "req", "Completed", [S("r200")]),
    (NIST, U, ["start", ("tu", 200)], ("tu", 500), "Completed", []),  # discarded
    (NIST, U, ["start", ("tu", 200)], ("tu", 200), "Completed", []),
    (NIST, U, ["start", ("tu", 200)], "terr", "Terminated", [TERR, END]),
    (NIST, U, ["start", ("tu", 200)], ("timer", "J"), "Terminated", [END]),
    (NIST, U, ["start", ("tu", 200), ("timer", "J")], "req", "Terminated", []),
]


def _case_id(case):
    machine, reliable, path, inp, _, _ = case
    return f"{machine}{'-rel' if reliable else ''}:{'/'.join(map(str, path))}+{inp}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_transition(case):
    machine, reliable, path, inp, expected_state, expected_actions = case
    d = Driver(machine, reliable)
    for step in path:
        d.feed(step)
    assert d.feed(inp) == expected_actions
    assert d.t.state == expected_state


def test_every_table_row_is_exercised():
    visited = set()
    for machine, reliable, path, inp, _, _ in CASES:
        d = Driver(machine, reliable)
        for step in path + [inp]:
            d.feed(step)
        visited.update(d.visited)
    missing = set(TRANSITIONS) - visited
    assert not missing, f"table rows without a test: {sorted(missing)}"


def test_ignored_inputs_return_the_shared_empty_constant():
    d = Driver(ICT)
    d.feed("start")
    d.feed(200)
    assert d.t.on_response(180, "late") is EMPTY
    assert d.t.on_timer("A", 12345) is EMPTY


# --- TU misuse raises, wire noise does not ------------------------------------

@pytest.mark.parametrize("machine, path, bad", [
    (IST, ["start", ("tu", 486)], ("tu", 180)),
    (IST, ["start", ("tu", 486)], ("tu", 200)),
    (IST, ["start", ("tu", 200)], ("tu", 486)),
    (IST, ["start", ("tu", 200)], ("tu", 183)),
    (IST, ["start", ("tu", 200), ("timer", "L")], ("tu", 200)),
    (NIST, ["start", ("tu", 200)], ("tu", 100)),
    (IST, [], ("tu", 100)),  # respond before start
    (ICT, ["start"], "start"),
    (NICT, ["start"], "start"),
])
def test_tu_misuse_raises(machine, path, bad):
    d = Driver(machine)
    for step in path:
        d.feed(step)
    before = d.t.state
    with pytest.raises(TransactionError, match=machine):
        d.feed(bad)
    assert d.t.state == before


def test_server_start_twice_and_bad_status():
    t = make(NIST)
    t.start()
    with pytest.raises(TransactionError):
        t.start()
    with pytest.raises(ValueError):
        t.respond(99, "x")
    with pytest.raises(ValueError):
        t.respond(700, "x")
    assert make(NICT).on_response(99, "garbage") is EMPTY
    c = make(NICT)
    c.start()
    assert c.on_response(700, "garbage") is EMPTY and c.state == "Trying"


def test_last_response_is_stored_but_not_replaced_by_discards():
    t = make(NIST)
    t.start()
    t.respond(404, "r404")
    t.respond(200, "late 200")  # discarded (§17.2.2)
    assert (t.last_status, t.last_response) == (404, "r404")
    assert t.on_request("REQ") == [Send("r404")]


# --- stale timers --------------------------------------------------------------

def test_stale_generation_is_ignored():
    t = make(ICT)
    _, first_a, timer_b = t.start()
    assert first_a == StartTimer("A", 0.5, first_a.generation)
    second = t.on_timer("A", first_a.generation)
    second_a = second[1]
    assert second_a.generation != first_a.generation
    # The same expiry delivered twice, or the old generation, does nothing.
    assert t.on_timer("A", first_a.generation) is EMPTY
    # A generation that belongs to another timer name does nothing.
    assert t.on_timer("A", timer_b.generation) is EMPTY
    # The current one still works.
    assert t.on_timer("A", second_a.generation)[0] == Send("REQ")


def test_timer_from_an_earlier_state_is_ignored():
    t = make(IST)
    t.start()
    acts = t.respond(486, "r486")
    g = next(a for a in acts if type(a) is StartTimer and a.name == "G")
    t.on_request("ACK", is_ack=True)
    assert t.state == "Confirmed"
    assert t.on_timer("G", g.generation) is EMPTY  # §17.2.1: G is ignored in Confirmed


def test_unknown_timer_name_is_ignored():
    t = make(NIST)
    t.start()
    assert t.on_timer("Z", 1) is EMPTY


# --- RFC 6026 Accepted ---------------------------------------------------------

def test_ict_accepted_passes_every_2xx_up_and_never_acks():
    t = make(ICT)
    t.start()
    seen = []
    for msg in ("200 from fork 1", "200 retransmitted", "200 from fork 2"):
        acts = t.on_response(200, msg)
        assert not any(isinstance(a, (SendAck, Send)) for a in acts)
        seen += [a.message for a in acts if isinstance(a, PassUp)]
    assert seen == ["200 from fork 1", "200 retransmitted", "200 from fork 2"]
    assert t.state == "Accepted"


def test_ist_accepted_absorbs_invites_and_passes_acks():
    t = make(IST)
    t.start()
    t.respond(100, "r100")
    assert t.respond(200, "r200")[0] == Send("r200")
    for _ in range(3):
        assert t.on_request("INVITE again") is EMPTY  # not resent, not to TU
    assert t.on_request("ACK 1", is_ack=True) == [PassUp("ACK 1", 0)]
    assert t.on_request("ACK 2", is_ack=True) == [PassUp("ACK 2", 0)]
    # The TU (a proxy forwarding another fork's 2xx, or a UAS retransmitting)
    # sends further 2xx through the transaction.
    assert t.respond(200, "r200 b") == [Send("r200 b")]
    assert t.state == "Accepted"


# --- retransmission schedules on a simulated clock ------------------------------

def simulate(t, script=(), until=200.0):
    """Run `t` against a heap of timers. `script`: [(time, callable(t) -> actions)].
    Returns [(time, summary)] of every action."""
    queue = []  # (time, seq, kind, payload)
    seq = 0
    for when, fn in script:
        heapq.heappush(queue, (when, seq, "call", fn))
        seq += 1
    log = []

    def run(now, actions):
        nonlocal seq
        for a in actions:
            log.append((now, summary(a)))
            if type(a) is StartTimer:
                heapq.heappush(queue, (now + a.delay, seq, "timer", (a.name, a.generation)))
                seq += 1

    run(0.0, t.start())
    for _ in range(10_000):
        if not queue or t.state == "Terminated":
            break
        now, _, kind, payload = heapq.heappop(queue)
        if now > until:
            break
        run(now, payload(t) if kind == "call" else t.on_timer(*payload))
    return log


def send_times(log):
    return [when for when, s in log if s[0] == "Send"]


def test_ict_invite_retransmissions_double_until_timer_b():
    log = simulate(make(ICT))
    # §17.1.1.2: 7 transmissions at 0, T1, 3T1, 7T1 … 63T1, then B at 64*T1.
    assert send_times(log) == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert log[-2:] == [(32.0, ("Timeout", "B")), (32.0, ("Terminated",))]


def test_nict_retransmissions_capped_at_t2_until_timer_f():
    log = simulate(make(NICT))
    assert send_times(log) == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert log[-2:] == [(32.0, ("Timeout", "F")), (32.0, ("Terminated",))]


def test_nict_proceeding_retransmits_every_t2():
    log = simulate(make(NICT), script=[(0.7, lambda t: t.on_response(100, "r100"))])
    # E armed at 0.5 for 1.0 s fires at 1.5 in Proceeding, then every T2.
    assert send_times(log) == [0.0, 0.5, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert log[-1] == (32.0, ("Terminated",))


def test_ist_final_retransmissions_capped_at_t2_until_timer_h():
    def respond(t):
        return t.respond(486, "r486")
    t = make(IST)
    log = simulate(t, script=[(0.0, respond)])
    assert send_times(log) == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert log[-2:] == [(32.0, ("Timeout", "H")), (32.0, ("Terminated",))]


@pytest.mark.parametrize("machine, script", [
    (ICT, []),
    (NICT, []),
    (IST, [(0.0, lambda t: t.respond(486, "r486"))]),
])
def test_reliable_transport_never_retransmits(machine, script):
    log = simulate(make(machine, reliable=True), script=script)
    assert send_times(log) == [0.0]
    assert log[-1] == (32.0, ("Terminated",))
    assert not any(s[0] == "Start" and s[1] in "AEG" for _, s in log)


def test_small_t1_scales_the_whole_schedule():
    cfg = TimerConfig(t1=0.01, t2=0.04, t4=0.05)
    log = simulate(make(NICT, config=cfg))
    assert send_times(log)[:6] == pytest.approx([0.0, 0.01, 0.03, 0.07, 0.11, 0.15])
    assert log[-1][0] == pytest.approx(0.64)


def test_ist_ack_stops_retransmissions_then_timer_i():
    t = make(IST)
    log = simulate(t, script=[(0.0, lambda t: t.respond(486, "r486")),
                              (2.0, lambda t: t.on_request("ACK", is_ack=True))])
    assert send_times(log) == [0.0, 0.5, 1.5]
    assert log[-1] == (7.0, ("Terminated",))  # Timer I = T4 after the ACK


def test_ict_final_response_then_timer_d():
    log = simulate(make(ICT), script=[(1.0, lambda t: t.on_response(404, "r404")),
                                      (2.0, lambda t: t.on_response(404, "r404"))])
    assert send_times(log) == [0.0, 0.5]
    assert [s for _, s in log if s[0] == "SendAck"] == [("SendAck", "r404")] * 2
    assert log[-1] == (33.0, ("Terminated",))  # Timer D = 32 s after the 404


# --- transaction keys ----------------------------------------------------------

def test_rfc3261_branch_detection():
    assert is_rfc3261_branch("z9hG4bK776asdhds")
    assert not is_rfc3261_branch("776asdhds")
    assert not is_rfc3261_branch("Z9HG4BK776")  # the cookie is case-sensitive
    assert not is_rfc3261_branch("")
    assert not is_rfc3261_branch(None)


def test_server_key_matching():
    invite = server_key("z9hG4bK1", "pc33.example.com:5060", "INVITE")
    assert server_key("z9hG4bK1", "pc33.example.com:5060", "ACK") == invite
    assert server_key("z9hG4bK1", "PC33.Example.COM:5060", "INVITE") == invite
    assert server_key("z9hG4bK1", "pc33.example.com:5060", "CANCEL") != invite
    assert server_key("z9hG4bK2", "pc33.example.com:5060", "INVITE") != invite
    assert server_key("z9hG4bK1", "other.example.com:5060", "INVITE") != invite
    assert server_key("z9hG4bK1", "pc33.example.com:5060", "BYE") != invite


def test_client_key_keeps_cancel_apart_from_its_invite():
    assert client_key("z9hG4bKx", "INVITE") == client_key("z9hG4bKx", "INVITE")
    assert client_key("z9hG4bKx", "CANCEL") != client_key("z9hG4bKx", "INVITE")
    assert client_key("z9hG4bKy", "INVITE") != client_key("z9hG4bKx", "INVITE")


def test_legacy_rfc2543_keys():
    via = "SIP/2.0/UDP old.example.com:5060"
    ruri = "sip:bob@example.com"
    invite = legacy_server_key(ruri, "", "ftag", "cid@host", 1, "INVITE", via)
    # The ACK for the non-2xx carries the server's To tag, and still matches.
    assert legacy_server_key(ruri, "servertag", "ftag", "cid@host", "1", "ACK", via) == invite
    # A retransmitted INVITE matches.
    assert legacy_server_key(ruri, "", "ftag", "cid@host", "1", "INVITE", via) == invite
    # Any other field differing does not.
    assert legacy_server_key(ruri, "", "ftag", "cid@host", 2, "INVITE", via) != invite
    assert legacy_server_key(ruri, "", "other", "cid@host", 1, "INVITE", via) != invite
    assert legacy_server_key(ruri, "", "ftag", "cid2@host", 1, "INVITE", via) != invite
    assert legacy_server_key("sip:carol@example.com", "", "ftag", "cid@host", 1, "INVITE",
                             via) != invite
    assert legacy_server_key(ruri, "", "ftag", "cid@host", 1, "INVITE",
                             "SIP/2.0/UDP other.example.com") != invite
    # CANCEL is its own transaction; non-INVITE keys include the To tag.
    assert legacy_server_key(ruri, "", "ftag", "cid@host", 1, "CANCEL", via) != invite
    bye = legacy_server_key(ruri, "t1", "ftag", "cid@host", 2, "BYE", via)
    assert legacy_server_key(ruri, "t2", "ftag", "cid@host", 2, "BYE", via) != bye
    # Never equal to an RFC 3261 key.
    assert server_key("z9hG4bK1", "old.example.com:5060", "INVITE") != invite


# --- the module stays sans-IO -------------------------------------------------

def test_no_io_imports():
    forbidden = {"trio", "socket", "time", "random", "asyncio", "threading"}
    root = pathlib.Path(tx.__file__).parent
    for name in ("transaction.py", "timers.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] not in forbidden, f"{name} imports {mod}"


# --- timers as inputs on trio's MockClock ----------------------------------------

async def _run_on_trio(txn, script):
    """A tiny timer runner: StartTimer -> a task sleeping on the trio clock that
    feeds (name, generation) back; `script` events are fed at their times."""
    log = []
    send_input, receive_input = trio.open_memory_channel(100)

    async def fire_later(delay, item):
        await trio.sleep(delay)
        await send_input.send(item)

    async with trio.open_nursery() as nursery:
        def execute(actions):
            for a in actions:
                log.append((trio.current_time(), summary(a)))
                if type(a) is StartTimer:
                    nursery.start_soon(fire_later, a.delay, ("timer", a.name, a.generation))

        for when, fn in script:
            nursery.start_soon(fire_later, when, ("call", fn))
        execute(txn.start())
        for _ in range(1000):
            item = await receive_input.receive()
            if item[0] == "timer":
                execute(txn.on_timer(item[1], item[2]))
            else:
                execute(item[1](txn))
            if txn.state == "Terminated":
                break
        nursery.cancel_scope.cancel()
    return log


def test_timers_as_inputs_on_trio_mock_clock():
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main():
        ict = await _run_on_trio(make(ICT), [])
        ist = await _run_on_trio(make(IST), [(0.0, lambda t: t.respond(486, "r486")),
                                             (2.0, lambda t: t.on_request("ACK", True))])
        return ict, ist

    ict, ist = trio.run(main, clock=clock)
    # 32 s of INVITE retransmissions and Timer B, in virtual time.
    assert send_times(ict) == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert ict[-2:] == [(32.0, ("Timeout", "B")), (32.0, ("Terminated",))]
    # IST: G retransmissions stop at the ACK; Timer I (T4) ends it at 32 + 2 + 5.
    assert [t - 32.0 for t in send_times(ist)] == [0.0, 0.5, 1.5]
    assert ist[-1] == (39.0, ("Terminated",))
