"""The core's timer keys and consult records are typed (host/sip/records.py):
every key it arms is one of the four timer records, holds ids only, and is
dispatched by its type; a stale or foreign key does nothing."""

from host.sip.actions import Arm, Consult, Disarm, Transmit
from host.sip.decision import ON_REQUEST, Decision
from host.sip.proxy import ProxyCore
from host.sip.records import (AckConsult, BranchTimer, ClientTimer, ForgetTimer, RequestConsult,
                              ServerTimer)

LISTEN = [("udp", "127.0.0.1", 5060)]
SRC = ("127.0.0.1", 40000)
TIMER_KINDS = (ClientTimer, ServerTimer, BranchTimer, ForgetTimer)


def core():
    ids = iter(range(1, 10**6))
    return ProxyCore(LISTEN, new_id=lambda: f"id{next(ids)}")


def invite(method="INVITE", to_tag=""):
    return (f"{method} sip:bob@127.0.0.1:5090 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK{method}1\r\n"
            f"From: <sip:a@x>;tag=1\r\nTo: <sip:bob@x>{to_tag}\r\nCall-ID: rec-1\r\n"
            f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def keys(actions, kind=Arm):
    return [a.key for a in actions if isinstance(a, kind)]


def _ids_only(value) -> bool:
    if isinstance(value, tuple):
        return all(_ids_only(v) for v in value)
    return isinstance(value, (str, int, float)) or value is None


def test_a_relayed_invite_arms_typed_keys_that_hold_ids_only():
    c = core()
    first = c.receive(invite(), "udp", SRC)
    (consult,) = [a for a in first if isinstance(a, Consult)]
    assert consult.hook == ON_REQUEST and consult.request.call_id == "rec-1"
    assert consult.source == ("udp", *SRC) and consult.in_dialog is False and consult.reply is None
    assert type(c._consults[consult.token]) is RequestConsult
    relayed = c.decided(consult.token, Decision())
    armed = keys(first) + keys(relayed)
    assert {type(k) for k in armed} == {ClientTimer, BranchTimer}   # the server's come with its answer
    assert all(_ids_only(k) for k in armed)
    # A key is found again by value, as the shell's timer table looks it up.
    branch = next(k for k in armed if type(k) is BranchTimer)
    assert hash(branch) == hash(BranchTimer(*branch)) and branch == BranchTimer(*branch)


def test_stale_and_foreign_keys_do_nothing():
    c = core()
    (consult,) = [a for a in c.receive(invite(), "udp", SRC) if isinstance(a, Consult)]
    relayed = c.decided(consult.token, Decision())
    branch = next(k for k in keys(relayed) if type(k) is BranchTimer)
    client = next(k for k in keys(relayed) if type(k) is ClientTimer)
    # An older generation, or the string-tagged tuple the core once used, is ignored.
    assert c.timer(branch._replace(generation=branch.generation + 5)) == []
    assert c.timer(("branch", branch.txn_key, branch.generation)) == []
    assert c.timer(("ct", *client)) == []
    assert c.timer(ForgetTimer(("no", "such"), 0)) == []
    # The real one fires: Timer C (here, the INVITE never got a provisional) gives a 408.
    out = c.timer(branch)
    assert any(isinstance(a, Transmit) and b" 408 " in a.data for a in out)
    assert ServerTimer in {type(k) for k in keys(out)} and all(_ids_only(k) for k in keys(out))


def test_a_drop_arms_a_forget_timer_and_its_end_forgets_the_request():
    c = core()
    (consult,) = [a for a in c.receive(invite("MESSAGE"), "udp", SRC) if isinstance(a, Consult)]
    (forget,) = keys(c.decided(consult.token, Decision(verb="drop")))
    assert type(forget) is ForgetTimer and c.server_txns
    out = c.timer(forget)
    assert not c.server_txns and all(type(k) is ServerTimer for k in keys(out, Disarm))


def test_an_ack_for_a_2xx_is_consulted_with_its_own_record():
    c = core()
    (consult,) = [a for a in c.receive(invite("ACK", ";tag=uas"), "udp", SRC)
                  if isinstance(a, Consult)]
    assert consult.in_dialog is True
    record = c._consults[consult.token]
    assert type(record) is AckConsult and record.request is consult.request
