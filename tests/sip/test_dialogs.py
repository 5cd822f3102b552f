"""INVITE dialogs as the proxy tracks them (host/sip/dialogs.py)."""

import json

import pytest

from host.sip.dialogs import (
    CONFIRMED, EARLY, ENDED, TRYING, DialogTable, DialogTableFull,
)
from host.sip.errors import BadMessage
from host.sip.parser import parse_message
from host.sip.proxy_rules import record_route_value

OURS = record_route_value("udp", "10.0.0.2", 5060)       # <sip:10.0.0.2:5060;lr>
LOCAL = ("udp", "10.0.0.2", 5060)
FROM = '"Alice" <sip:alice@a.example>;tag=ftag1'
TO = "<sip:bob@b.example>"
CALL_ID = "call-1@192.168.1.10"
ALICE_CONTACT = "sip:alice@192.168.1.10:5060"
BOB_CONTACT = "sip:bob@192.0.2.20:5062"
NAT_SOURCE = ("udp", "203.0.113.5", 40000)

# Caller -> P1a -> P1b -> us -> P3a -> P3b -> callee: the 2xx lists them callee first.
THREE_SIDES = ["<sip:p3b.example;lr>", "<sip:p3a.example:5070;transport=tcp;lr>", OURS,
               "<sip:p1b.example;lr>", "<sip:p1a.example;lr>"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def parse(lines):
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())


def invite(record_route=(), cseq=101, from_tag="ftag1"):
    return parse([
        "INVITE sip:bob@b.example SIP/2.0",
        *(["Via: SIP/2.0/UDP p1b.example;branch=z9hG4bKp1b"] if record_route else []),
        "Via: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bKa1;rport",
        "Max-Forwards: 69",
        *(f"Record-Route: {v}" for v in record_route),
        "From: " + FROM.replace("ftag1", from_tag), f"To: {TO}", f"Call-ID: {CALL_ID}", f"CSeq: {cseq} INVITE",
        f"Contact: <{ALICE_CONTACT}>", "Content-Length: 0",
    ])


def response(status, reason, to_tag=None, record_route=(), contact=BOB_CONTACT, cseq=101, method="INVITE"):
    to = TO + (f";tag={to_tag}" if to_tag else "")
    return parse([
        f"SIP/2.0 {status} {reason}",
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKours",
        "Via: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bKa1;rport",
        *(f"Record-Route: {v}" for v in record_route),
        f"From: {FROM}", f"To: {to}", f"Call-ID: {CALL_ID}", f"CSeq: {cseq} {method}",
        *([f"Contact: <{contact}>"] if contact and status < 300 else []), "Content-Length: 0",
    ])


def from_caller(method, cseq, to_tag="ttag9", contact=None):
    return parse([
        f"{method} {BOB_CONTACT} SIP/2.0",
        "Via: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bKc" + str(cseq),
        "Max-Forwards: 70", "Route: <sip:10.0.0.2:5060;lr>",
        f"From: {FROM}", f"To: {TO};tag={to_tag}", f"Call-ID: {CALL_ID}", f"CSeq: {cseq} {method}",
        *([f"Contact: <{contact}>"] if contact else []), "Content-Length: 0",
    ])


def from_callee(method, cseq, from_tag="ttag9"):
    return parse([
        f"{method} {ALICE_CONTACT} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bKb" + str(cseq),
        "Max-Forwards: 70", "Route: <sip:10.0.0.2:5060;lr>",
        f"From: {TO};tag={from_tag}", f"To: {FROM}", f"Call-ID: {CALL_ID}", f"CSeq: {cseq} {method}",
        "Content-Length: 0",
    ])


def confirmed(record_route=(OURS,), invite_rr=(), source=NAT_SOURCE, **kw):
    clock = Clock()
    table = DialogTable(clock)
    dialog = table.invite_relayed(invite(invite_rr), source, OURS, **kw)
    assert table.response_forwarded(dialog, response(200, "OK", "ttag9", record_route)) == CONFIRMED
    return table, dialog, clock


def test_early_on_a_tagged_180_then_confirmed_on_200():
    clock = Clock()
    table = DialogTable(clock)
    dialog = table.invite_relayed(invite(), NAT_SOURCE, OURS, max_duration=60, profiles={"caller": "alice"})
    assert dialog.state == TRYING and len(table) == 1
    assert table.response_forwarded(dialog, response(100, "Trying")) is None
    assert table.response_forwarded(dialog, response(180, "Ringing")) is None   # no tag: no dialog yet
    assert table.response_forwarded(dialog, response(180, "Ringing", "ttag9")) == EARLY
    assert table.response_forwarded(dialog, response(183, "Session Progress", "ttag9")) is None
    clock.now += 5
    assert table.response_forwarded(dialog, response(200, "OK", "ttag9", [OURS])) == CONFIRMED
    assert table.response_forwarded(dialog, response(200, "OK", "ttag9", [OURS])) is None  # retransmission
    assert (dialog.state, dialog.to_tag, dialog.confirmed_at) == (CONFIRMED, "ttag9", 1005.0)
    assert dialog.caller_uri == "sip:alice@a.example" and dialog.callee_uri == "sip:bob@b.example"
    assert dialog.caller_contact == ALICE_CONTACT and dialog.callee_contact == BOB_CONTACT
    assert dialog.caller_cseq == 101 and dialog.callee_cseq == 0
    assert dialog.caller_source == NAT_SOURCE and dialog.profiles == {"caller": "alice"}


def test_the_first_confirmed_fork_wins():
    table = DialogTable(Clock())
    dialog = table.invite_relayed(invite(), NAT_SOURCE, OURS)
    table.response_forwarded(dialog, response(180, "Ringing", "fork1"))
    assert table.response_forwarded(dialog, response(200, "OK", "fork2", [OURS])) == CONFIRMED
    assert table.response_forwarded(dialog, response(200, "OK", "fork1", [OURS])) is None
    assert dialog.to_tag == "fork2"
    assert table.find(from_caller("BYE", 102, to_tag="fork1")) is None


@pytest.mark.parametrize("status,reason,why", [(486, "Busy Here", "rejected"),
                                               (487, "Request Terminated", "cancelled")])
def test_a_final_failure_ends_and_removes_the_dialog(status, reason, why):
    table = DialogTable(Clock())
    dialog = table.invite_relayed(invite(), NAT_SOURCE, OURS)
    table.response_forwarded(dialog, response(180, "Ringing", "ttag9"))
    assert table.response_forwarded(dialog, response(status, reason, "ttag9")) == ENDED
    assert (dialog.state, dialog.end_reason, dialog.ended_at) == (ENDED, why, 1000.0)
    assert len(table) == 0 and table.active() == []
    assert table.response_forwarded(dialog, response(status, reason, "ttag9")) is None


def test_an_initial_invite_retransmission_returns_the_same_dialog():
    table = DialogTable(Clock())
    first = table.invite_relayed(invite(), NAT_SOURCE, OURS)
    assert table.invite_relayed(invite(), NAT_SOURCE, OURS) is first and len(table) == 1


def test_find_by_either_direction_and_cseq_tracking():
    table, dialog, _ = confirmed()
    assert table.find(from_caller("INFO", 102)) == (dialog, "caller")
    assert table.find(from_callee("INFO", 5)) == (dialog, "callee")
    assert table.find(from_caller("INFO", 102, to_tag="other")) is None
    assert table.in_dialog_request(from_caller("INFO", 102)) is dialog
    assert table.in_dialog_request(from_callee("INFO", 7)) is dialog
    assert table.in_dialog_request(from_callee("INFO", 8)) is dialog
    table.in_dialog_request(from_caller("ACK", 101))   # an older number never lowers the count
    assert (dialog.caller_cseq, dialog.callee_cseq) == (102, 8)
    table.in_dialog_request(from_caller("INVITE", 103, contact="sip:alice@192.168.1.11:5060"))
    assert dialog.caller_contact == "sip:alice@192.168.1.11:5060"   # target refresh
    assert table.in_dialog_final(from_caller("INFO", 102), 200) is None
    assert table.in_dialog_final(from_caller("INVITE", 103), 488) is None
    assert dialog.state == CONFIRMED


@pytest.mark.parametrize("bye", [lambda: from_caller("BYE", 102), lambda: from_callee("BYE", 1)])
def test_a_bye_answered_ends_the_dialog_from_either_side(bye):
    table, dialog, clock = confirmed()
    clock.now += 30
    req = bye()
    assert table.in_dialog_request(req) is dialog
    assert table.in_dialog_final(req, 407) is None        # challenged: the BYE comes again
    assert table.in_dialog_final(req, 200) == ENDED
    assert (dialog.state, dialog.end_reason, dialog.duration(9999)) == (ENDED, "bye", 30.0)
    assert len(table) == 0 and table.find(req) is None
    assert table.in_dialog_final(req, 200) is None


@pytest.mark.parametrize("method,status,ends", [("INVITE", 481, True), ("INVITE", 408, True),
                                                ("UPDATE", 408, True), ("INFO", 481, True),
                                                ("INFO", 408, False), ("INVITE", 491, False)])
def test_481_and_408_to_an_in_dialog_request(method, status, ends):
    table, dialog, _ = confirmed()
    req = from_callee(method, 3)
    table.in_dialog_request(req)
    assert table.in_dialog_final(req, status) == (ENDED if ends else None)
    assert dialog.end_reason == (str(status) if ends else None)
    assert len(table) == (0 if ends else 1)


def test_max_duration_deadline_and_expiry():
    table, dialog, clock = confirmed(max_duration=60)
    other = table.invite_relayed(invite(from_tag="ftag2"), NAT_SOURCE, OURS, max_duration=30)
    table.response_forwarded(other, response(200, "OK", "t2", [OURS]))
    unlimited = table.invite_relayed(invite(from_tag="ftag3"), NAT_SOURCE, OURS)
    table.response_forwarded(unlimited, response(200, "OK", "t3", [OURS]))
    assert table.deadline(dialog) == 1060.0 and table.deadline(unlimited) is None
    assert table.expire_due(1029.9) == []
    assert table.expire_due(1030.0) == [other]
    assert table.expire_due(1100.0) == [dialog]
    assert table.expire_due(1200.0) == []            # each is reported once
    assert dialog.state == CONFIRMED and len(table) == 3


def test_a_dialog_ended_before_its_deadline_does_not_expire():
    table, dialog, _ = confirmed(max_duration=60)
    req = from_caller("BYE", 102)
    table.in_dialog_final(req, 200)
    assert table.expire_due(2000.0) == [] and table.deadline(dialog) is None


def test_end_requests_through_proxies_on_both_sides():
    invite_rr = ["<sip:p1b.example;lr>", "<sip:p1a.example;lr>"]
    table, dialog, clock = confirmed(THREE_SIDES, invite_rr, source=("udp", "198.51.100.7", 5060),
                                     max_duration=60)
    assert dialog.callee_route == ["sip:p3a.example:5070;transport=tcp;lr", "sip:p3b.example;lr"]
    assert dialog.caller_route == ["sip:p1b.example;lr", "sip:p1a.example;lr"]
    table.in_dialog_request(from_caller("INVITE", 102))
    table.in_dialog_request(from_callee("INFO", 40))
    clock.now += 60
    branches = iter(["z9hG4bKx1", "x2"])
    (to_callee, d1), (to_caller, d2) = table.end_requests(dialog, LOCAL, lambda: next(branches))

    bye = parse_message(to_callee.serialize())
    assert bye.method == "BYE" and bye.uri == BOB_CONTACT
    assert bye.header_values("route") == ["<sip:p3a.example:5070;transport=tcp;lr>", "<sip:p3b.example;lr>"]
    assert bye.header("from") == FROM and bye.to_tag == "ttag9" and bye.from_tag == "ftag1"
    assert (bye.call_id, bye.cseq, bye.cseq_method) == (CALL_ID, 103, "BYE")
    assert bye.header_values("via") == ["SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKx1"]
    assert bye.header("max-forwards") == "70" and bye.header("content-length") == "0"
    assert d1 == ("tcp", "p3a.example", 5070)

    bye = parse_message(to_caller.serialize())
    assert bye.uri == ALICE_CONTACT
    assert bye.header_values("route") == ["<sip:p1b.example;lr>", "<sip:p1a.example;lr>"]
    assert bye.from_tag == "ttag9" and bye.to_tag == "ftag1" and bye.header("to") == FROM
    assert (bye.cseq, bye.cseq_method) == (41, "BYE")
    assert bye.via.branch == "z9hG4bKx2"
    assert d2 == ("udp", "p1b.example", 5060)

    assert (dialog.state, dialog.end_reason, dialog.duration(0)) == (ENDED, "timeout", 60.0)
    assert len(table) == 0 and table.end_requests(dialog, LOCAL, lambda: "z9hG4bKx3") == []


def test_end_requests_with_no_other_proxy_go_to_the_callers_source():
    table, dialog, _ = confirmed()
    assert dialog.caller_route == [] and dialog.callee_route == []
    (to_callee, d1), (to_caller, d2) = table.end_requests(dialog, LOCAL, iter(["a", "b"]).__next__)
    assert d1 == ("udp", "192.0.2.20", 5062) and d2 == NAT_SOURCE
    assert to_callee.header("route") is None and to_caller.header("route") is None
    assert parse_message(to_caller.serialize()).cseq == 1   # the callee had sent nothing
    assert parse_message(to_callee.serialize()).cseq == 102
    assert to_callee.via.branch == "z9hG4bKa"                # the cookie is added when missing


def test_a_strict_router_beyond_us_takes_the_request_uri():
    table, dialog, _ = confirmed(["<sip:strict.example>", OURS])
    (to_callee, dest), _ = table.end_requests(dialog, LOCAL, lambda: "z9hG4bKs")
    assert to_callee.uri == "sip:strict.example"
    assert to_callee.header_values("route") == [f"<{BOB_CONTACT}>"]
    assert dest == ("udp", "strict.example", 5060)


def test_our_double_record_route_is_skipped_and_a_missing_one_keeps_the_invite_route():
    tcp_ours = record_route_value("tcp", "10.0.0.2", 5060)
    table = DialogTable(Clock())
    dialog = table.invite_relayed(invite(["<sip:p1.example;lr>"]), NAT_SOURCE, (tcp_ours, OURS))
    table.response_forwarded(dialog, response(200, "OK", "ttag9",
                                              ["<sip:p3.example;lr>", tcp_ours, OURS, "<sip:p1.example;lr>"]))
    assert dialog.callee_route == ["sip:p3.example;lr"] and dialog.caller_route == ["sip:p1.example;lr"]
    table, dialog, _ = confirmed(["<sip:p3.example;lr>"], ["<sip:p1.example;lr>"])
    assert dialog.callee_route == [] and dialog.caller_route == ["sip:p1.example;lr"]


def test_as_record_is_json():
    table, dialog, clock = confirmed(max_duration=90, profiles={"tenant": "acme"})
    clock.now += 12
    record = json.loads(json.dumps(dialog.as_record(clock.now)))
    assert record["id"] == dialog.id and len(dialog.id) == 20
    assert record["state"] == "confirmed" and record["duration"] == 12.0
    assert record["from"] == "sip:alice@a.example" and record["to"] == "sip:bob@b.example"
    assert record["profiles"] == {"tenant": "acme"} and record["max_duration"] == 90
    assert dialog.as_record()["duration"] is None
    table.end_requests(dialog, LOCAL, lambda: "z9hG4bKj")
    record = json.loads(json.dumps(dialog.as_record()))
    assert record["end_reason"] == "timeout" and record["ended_at"] == 1012.0 and record["duration"] == 12.0


def test_the_table_is_bounded():
    table = DialogTable(Clock(), max_dialogs=2)
    for tag in ("a", "b"):
        table.invite_relayed(invite(from_tag=tag), NAT_SOURCE, OURS)
    with pytest.raises(DialogTableFull):
        table.invite_relayed(invite(), NAT_SOURCE, OURS)
    assert len(table) == 2
    table.remove(table.active()[0])
    assert table.invite_relayed(invite(), NAT_SOURCE, OURS).from_tag == "ftag1"


def test_an_invite_without_from_tag_is_refused():
    req = parse([l.replace(";tag=ftag1", "") for l in invite().serialize().decode().split("\r\n")[:-2]])
    with pytest.raises(BadMessage):
        DialogTable(Clock()).invite_relayed(req, NAT_SOURCE, OURS)


def test_deadlines_of_ended_dialogs_do_not_pile_up():
    table = DialogTable(Clock())
    for n in range(300):
        dialog = table.invite_relayed(invite(from_tag=f"f{n}"), NAT_SOURCE, OURS, max_duration=3600)
        table.response_forwarded(dialog, response(200, "OK", "ttag9", [OURS]))
        bye = parse([l.replace("ftag1", f"f{n}") for l in from_caller("BYE", 102).serialize().decode().split("\r\n")[:-2]])
        assert table.in_dialog_final(bye, 200) == ENDED
    assert len(table) == 0
    assert table.expire_due(1001.0) == [] and len(table._deadlines) <= 64
