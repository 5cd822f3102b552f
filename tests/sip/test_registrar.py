"""The registrar's rules (host/sip/registrar.py), case by case; every case's id
names the RFC section it checks. Requests are parsed from REGISTER text."""

from __future__ import annotations

import email.utils
import json
import tracemalloc
from dataclasses import dataclass

import pytest

from host.sip.message import Request
from host.sip.parser import parse_message
from host.sip.registrar import (
    Binding, RegistrarError, RegisterUpdate, Settings, address_of_record, apply_update,
    branch_groups, live, ok_headers, parse_register,
)

NOW = 1_700_000_000.0
SOURCE = ("udp", "192.0.2.10", 5060)
SETTINGS = Settings()
A = "sip:alice@192.0.2.10:5060"
B = "sip:alice@198.51.100.7:5062;transport=tcp"
C = "sip:alice@203.0.113.9"
INSTANCE = '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"'
FLOW = "Supported: outbound, path"


def register(*lines: str, call_id: str = "c1@ua", cseq: int = 1) -> Request:
    text = "\r\n".join([
        "REGISTER sip:example.com SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-reg",
        "Max-Forwards: 70",
        "From: <sip:alice@example.com>;tag=a1",
        "To: <sip:alice@example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *lines,
        "Content-Length: 0", "", "",
    ])
    m = parse_message(text.encode())
    assert isinstance(m, Request)
    return m


def update(*lines: str, call_id: str = "c1@ua", cseq: int = 1, at: float = 0,
           settings: Settings = SETTINGS) -> RegisterUpdate:
    return parse_register(register(*lines, call_id=call_id, cseq=cseq), settings,
                          source=SOURCE, core="core-0", now=NOW + at)


def refusal(call, *args, **kw) -> RegistrarError:
    with pytest.raises(RegistrarError) as info:
        call(*args, **kw)
    return info.value


# ------------------------------------------------------------ parse_register refusals

REFUSED = [
    ("3261-10.3-step6-star-needs-expires-0", ["Contact: *"], 400, []),
    ("3261-10.3-step6-star-with-nonzero-expires", ["Contact: *", "Expires: 3600"], 400, []),
    ("3261-10.3-step6-star-not-alone-in-list", [f"Contact: *, <{A}>", "Expires: 0"], 400, []),
    ("3261-10.3-step6-star-not-alone-in-headers", [f"Contact: <{A}>", "Contact: *", "Expires: 0"], 400, []),
    ("3261-10.3-step7-423-from-param", [f"Contact: <{A}>;expires=30"], 423, [("Min-Expires", "60")]),
    ("3261-10.3-step7-423-from-header", [f"Contact: <{A}>", "Expires: 59"], 423, [("Min-Expires", "60")]),
    ("3261-10.3-step7-423-any-contact", [f"Contact: <{A}>, <{C}>;expires=1"], 423, [("Min-Expires", "60")]),
    ("3261-20.19-expires-header-not-integer", [f"Contact: <{A}>", "Expires: 3600.5"], 400, []),
    ("3261-20.19-expires-header-negative", [f"Contact: <{A}>", "Expires: -1"], 400, []),
    ("3261-20.19-expires-header-twice", [f"Contact: <{A}>", "Expires: 60", "Expires: 120"], 400, []),
    ("3261-20.10-expires-param-not-integer", [f"Contact: <{A}>;expires=soon"], 400, []),
    ("3261-20.10-expires-param-empty", [f"Contact: <{A}>;expires"], 400, []),
    ("3261-20.10-q-above-1", [f"Contact: <{A}>;q=1.5"], 400, []),
    ("3261-20.10-q-four-decimals", [f"Contact: <{A}>;q=0.1234"], 400, []),
    ("3261-20.10-q-not-a-number", [f"Contact: <{A}>;q=high"], 400, []),
    ("3261-20.10-contact-uri-malformed", ["Contact: <sip:@>"], 400, []),
    ("3327-4-path-not-a-name-addr", [f"Contact: <{A}>", "Path: <sip:edge.example.com;lr"], 400, []),
    ("3327-4-path-uri-malformed", [f"Contact: <{A}>", "Path: <sip:@edge.example.com;lr>"], 400, []),
    ("3261-20.37-supported-unbalanced-quote", [f"Contact: <{A}>", 'Supported: "path, gruu'], 400, []),
    ("5626-4.2-reg-id-not-integer", [FLOW, f"Contact: <{A}>;+sip.instance={INSTANCE};reg-id=one"], 400, []),
    ("5626-4.2-reg-id-zero", [FLOW, f"Contact: <{A}>;+sip.instance={INSTANCE};reg-id=0"], 400, []),
    ("5626-6-reg-id-with-two-contacts",
     [FLOW, f"Contact: <{A}>;+sip.instance={INSTANCE};reg-id=1, <{C}>"], 400, []),
]


@pytest.mark.parametrize("lines,status,headers", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_parse_register_refuses(lines, status, headers):
    err = refusal(update, *lines)
    assert (err.status, err.headers) == (status, headers)


# ------------------------------------------------------------ parse_register results

SHORT_DEFAULT = Settings(default_expires=1800)

# (id, lines, settings, [(uri, expires, q, instance, reg_id)])
PARSED = [
    ("3261-10.2.1.1-param-beats-header", [f"Contact: <{A}>;expires=120", "Expires: 300"], SETTINGS,
     [(A, 120, 1.0, "", 0)]),
    ("3261-10.2.1.1-header-beats-default", [f"Contact: <{A}>", "Expires: 300"], SHORT_DEFAULT,
     [(A, 300, 1.0, "", 0)]),
    ("3261-10.2.1.1-default-when-neither", [f"Contact: <{A}>"], SHORT_DEFAULT, [(A, 1800, 1.0, "", 0)]),
    ("3261-10.2.1.1-precedence-per-contact", [f"Contact: <{A}>;expires=120, <{C}>", "Expires: 300"],
     SETTINGS, [(A, 120, 1.0, "", 0), (C, 300, 1.0, "", 0)]),
    ("3261-10.3-step7-long-interval-clamps", [f"Contact: <{A}>;expires=7200"], SETTINGS,
     [(A, 3600, 1.0, "", 0)]),
    ("3261-10.3-step7-huge-interval-clamps", [f"Contact: <{A}>", "Expires: 99999999999999999999999"],
     SETTINGS, [(A, 3600, 1.0, "", 0)]),
    ("3261-10.3-step7-zero-is-not-too-brief", [f"Contact: <{A}>;expires=0"], SETTINGS, [(A, 0, 1.0, "", 0)]),
    ("3261-10.3-step7-min-expires-itself-accepted", [f"Contact: <{A}>;expires=60"], SETTINGS,
     [(A, 60, 1.0, "", 0)]),
    ("3261-20.10-q-values", [f"Contact: <{A}>;q=0.5, <{B}>;q=0, <{C}>;q=1.000"], SETTINGS,
     [(A, 3600, 0.5, "", 0), (B, 3600, 0.0, "", 0), (C, 3600, 1.0, "", 0)]),
    ("3261-20.10-addr-spec-params-are-contact-params", [f"Contact: {C};expires=90"], SETTINGS,
     [(C, 90, 1.0, "", 0)]),
    ("3261-7.3.1-compact-and-several-headers", [f"m: <{A}>", f"Contact: \"Al, Ice\" <{B}>, <{C}>"], SETTINGS,
     [(A, 3600, 1.0, "", 0), (B, 3600, 1.0, "", 0), (C, 3600, 1.0, "", 0)]),
    ("5626-6-instance-and-reg-id", [FLOW, f"Contact: <{A}>;+sip.instance={INSTANCE};reg-id=1"], SETTINGS,
     [(A, 3600, 1.0, INSTANCE.strip('"'), 1)]),
    ("5626-6-reg-id-ignored-without-instance", [FLOW, f"Contact: <{A}>;reg-id=1"], SETTINGS,
     [(A, 3600, 1.0, "", 0)]),
    ("5626-6-reg-id-ignored-without-supported-outbound",
     [f"Contact: <{A}>;+sip.instance={INSTANCE};reg-id=1"], SETTINGS, [(A, 3600, 1.0, INSTANCE.strip('"'), 0)]),
    ("3261-10.3-step6-no-contact-is-a-query", [], SETTINGS, []),
]


@pytest.mark.parametrize("lines,settings,expected", [c[1:] for c in PARSED], ids=[c[0] for c in PARSED])
def test_parse_register_contacts(lines, settings, expected):
    u = update(*lines, settings=settings)
    assert not u.star
    assert [(c.uri, c.expires, c.q, c.instance, c.reg_id) for c in u.contacts] == expected


def test_3261_10_3_step7_423_only_below_an_hour():
    # A registrar minimum above an hour still grants requests of an hour or more.
    long_minimum = Settings(min_expires=7200, max_expires=86400)
    err = refusal(update, f"Contact: <{A}>;expires=1000", settings=long_minimum)
    assert (err.status, err.headers) == (423, [("Min-Expires", "7200")])
    assert update(f"Contact: <{A}>;expires=5000", settings=long_minimum).contacts[0].expires == 5000


def test_3261_10_3_step6_star_with_expires_0():
    u = update("Contact: *", "Expires: 0")
    assert (u.star, u.contacts) == (True, [])


def test_3327_path_user_agent_supported_are_read():
    u = update(f"Contact: <{A}>", "Path: <sip:edge1.example.com;lr>, <sip:edge2.example.com;lr>",
               "Path: <sip:edge3.example.com;lr>", "User-Agent: Phone/1.0", "k: Path, GRUU", "Supported: outbound",
               call_id="abc@ua", cseq=7, at=5)
    assert u.path == ("<sip:edge1.example.com;lr>", "<sip:edge2.example.com;lr>", "<sip:edge3.example.com;lr>")
    assert (u.user_agent, u.supported) == ("Phone/1.0", frozenset({"path", "gruu", "outbound"}))
    assert (u.call_id, u.cseq, u.now, u.source, u.core) == ("abc@ua", 7, NOW + 5, SOURCE, "core-0")


# ------------------------------------------------------------ apply_update, step by step

@dataclass
class Step:
    lines: list[str]
    call_id: str = "c1@ua"
    cseq: int = 1
    at: float = 0
    expect: int | list[tuple[str, int]] = ()   # a refusal's status, or (contact, expires_in) after


def flow(uri: str, reg_id: int = 1) -> list[str]:
    return [FLOW, f"Contact: <{uri}>;+sip.instance={INSTANCE};reg-id={reg_id}"]


STEPS = [
    ("3261-10.3-step7-new-bindings-in-order",
     [Step([f"Contact: <{A}>, <{B}>;expires=600"], expect=[(A, 3600), (B, 600)])], SETTINGS),
    ("3261-10.3-step7-higher-cseq-updates",
     [Step([f"Contact: <{A}>"], expect=[(A, 3600)]),
      Step([f"Contact: <{A}>;expires=600"], cseq=2, at=10, expect=[(A, 600)])], SETTINGS),
    ("3261-10.3-step7-equal-cseq-aborts",
     [Step([f"Contact: <{A}>"], cseq=5, expect=[(A, 3600)]),
      Step([f"Contact: <{A}>;expires=600"], cseq=5, expect=500)], SETTINGS),
    ("3261-10.3-step7-lower-cseq-aborts",
     [Step([f"Contact: <{A}>"], cseq=5, expect=[(A, 3600)]),
      Step([f"Contact: <{A}>;expires=0"], cseq=4, expect=500)], SETTINGS),
    ("3261-10.3-step7-other-call-id-replaces",
     [Step([f"Contact: <{A}>"], cseq=5, expect=[(A, 3600)]),
      Step([f"Contact: <{A}>;expires=900"], call_id="c2@ua", cseq=1, expect=[(A, 900)])], SETTINGS),
    ("3261-10.3-step7-all-or-nothing-one-stale-contact",
     [Step([f"Contact: <{A}>"], cseq=5, expect=[(A, 3600)]),
      Step([f"Contact: <{B}>;expires=600"], call_id="c2@ua", expect=[(A, 3600), (B, 600)]),
      # B alone would be replaced (other Call-ID); A is stale: nothing changes.
      Step([f"Contact: <{B}>;expires=0, <{A}>;expires=120"], cseq=5, expect=500),
      Step([], call_id="c3@ua", expect=[(A, 3600), (B, 600)])], SETTINGS),
    ("3261-10.3-step7-same-contact-twice-in-one-request",
     [Step([f"Contact: <{A}>;expires=600, <{A}>;expires=900"], expect=[(A, 900)])], SETTINGS),
    ("3261-10.3-step7-expires-0-removes",
     [Step([f"Contact: <{A}>, <{B}>, <{C}>"], expect=[(A, 3600), (B, 3600), (C, 3600)]),
      Step([f"Contact: <{B}>;expires=0"], cseq=2, expect=[(A, 3600), (C, 3600)])], SETTINGS),
    ("3261-10.3-step7-expires-0-unknown-contact-is-no-error",
     [Step([f"Contact: <{A}>"], expect=[(A, 3600)]),
      Step([f"Contact: <{C}>", "Expires: 0"], cseq=2, expect=[(A, 3600)])], SETTINGS),
    ("3261-10.3-step7-refresh-keeps-order",
     [Step([f"Contact: <{A}>, <{B}>, <{C}>"], expect=[(A, 3600), (B, 3600), (C, 3600)]),
      Step([f"Contact: <{B}>;expires=60"], cseq=2, expect=[(A, 3600), (B, 60), (C, 3600)])], SETTINGS),
    ("3261-10.3-step6-query-leaves-bindings",
     [Step([f"Contact: <{A}>"], cseq=3, expect=[(A, 3600)]),
      Step([], cseq=1, at=100, expect=[(A, 3500)])], SETTINGS),
    ("3261-10.3-step7-star-removes-all",
     [Step([f"Contact: <{A}>"], expect=[(A, 3600)]),
      Step([f"Contact: <{B}>"], call_id="c2@ua", expect=[(A, 3600), (B, 3600)]),
      Step(["Contact: *", "Expires: 0"], call_id="c3@ua", expect=[])], SETTINGS),
    ("3261-10.3-step7-star-higher-cseq-removes",
     [Step([f"Contact: <{A}>"], cseq=1, expect=[(A, 3600)]),
      Step(["Contact: *", "Expires: 0"], cseq=2, expect=[])], SETTINGS),
    ("3261-10.3-step7-star-equal-cseq-fails",
     [Step([f"Contact: <{A}>"], cseq=5, expect=[(A, 3600)]),
      Step([f"Contact: <{B}>"], call_id="c2@ua", expect=[(A, 3600), (B, 3600)]),
      Step(["Contact: *", "Expires: 0"], cseq=5, expect=500)], SETTINGS),
    ("3261-10.2.1.1-expired-binding-dropped",
     [Step([f"Contact: <{A}>;expires=60"], expect=[(A, 60)]),
      Step([f"Contact: <{B}>"], call_id="c2@ua", at=60, expect=[(B, 3600)])], SETTINGS),
    ("3261-10.3-step7-expired-binding-has-no-cseq-to-beat",
     [Step([f"Contact: <{A}>;expires=60"], cseq=5, expect=[(A, 60)]),
      Step([f"Contact: <{A}>"], cseq=5, at=61, expect=[(A, 3600)])], SETTINGS),
    ("3261-10.3-step7-max-contacts-403",
     [Step([f"Contact: <{A}>, <{B}>"], expect=[(A, 3600), (B, 3600)]),
      Step([f"Contact: <{C}>"], cseq=2, expect=403),
      Step([f"Contact: <{A}>;expires=120"], cseq=2, expect=[(A, 120), (B, 3600)]),
      Step([f"Contact: <{A}>;expires=0, <{C}>"], cseq=3, expect=[(B, 3600), (C, 3600)])],
     Settings(max_contacts=2)),
    ("3261-10.3-step7-max-contacts-0-is-no-limit",
     [Step([", ".join(f"<sip:alice@192.0.2.{i}>" for i in range(1, 31)).join(["Contact: ", ""])],
           expect=[(f"sip:alice@192.0.2.{i}", 3600) for i in range(1, 31)])], Settings(max_contacts=0)),
    ("3261-19.1.4-equivalent-uri-refreshes",
     [Step(["Contact: <sip:alice@Host.Example.COM:5070;transport=TCP>"],
           expect=[("sip:alice@Host.Example.COM:5070;transport=TCP", 3600)]),
      Step(["Contact: <sip:%61lice@host.example.com:5070;transport=tcp;ob>;expires=60"], cseq=2,
           expect=[("sip:%61lice@host.example.com:5070;transport=tcp;ob", 60)])], SETTINGS),
    ("3261-19.1.4-port-transport-user-tell-apart",
     [Step(["Contact: <sip:alice@h.example.com>, <sip:alice@h.example.com:5060>, "
            "<sip:alice@h.example.com;transport=tcp>, <sip:Alice@h.example.com>"],
           expect=[("sip:alice@h.example.com", 3600), ("sip:alice@h.example.com:5060", 3600),
                   ("sip:alice@h.example.com;transport=tcp", 3600), ("sip:Alice@h.example.com", 3600)])],
     SETTINGS),
    ("5626-6-same-instance-and-reg-id-replaces-new-uri",
     [Step(flow(A), expect=[(A, 3600)]),
      Step(flow(C), call_id="c2@ua", expect=[(C, 3600)])], SETTINGS),
    ("5626-6-other-reg-id-is-another-flow",
     [Step(flow(A, 1), expect=[(A, 3600)]),
      Step(flow(C, 2), call_id="c2@ua", expect=[(A, 3600), (C, 3600)])], SETTINGS),
    ("5626-6-same-flow-stale-cseq-aborts",
     [Step(flow(A), cseq=3, expect=[(A, 3600)]),
      Step(flow(C), cseq=3, expect=500)], SETTINGS),
]


@pytest.mark.parametrize("steps,settings", [c[1:] for c in STEPS], ids=[c[0] for c in STEPS])
def test_apply_update(steps, settings):
    bindings: list[Binding] = []
    for n, step in enumerate(steps):
        u = update(*step.lines, call_id=step.call_id, cseq=step.cseq, at=step.at, settings=settings)
        if isinstance(step.expect, int):
            before = [b.to_dict() for b in bindings]
            assert refusal(apply_update, bindings, u, settings).status == step.expect, f"step {n}"
            assert [b.to_dict() for b in bindings] == before, f"step {n} changed the bindings it refused"
        else:
            bindings = apply_update(bindings, u, settings)
            assert [(b.contact, b.expires_in(u.now)) for b in bindings] == step.expect, f"step {n}"


def test_3261_10_3_step7_binding_records_the_request():
    u = update("Path: <sip:edge.example.com;lr>", "User-Agent: Phone/1.0",
               *flow(A), call_id="c9@ua", cseq=4, at=0)
    [b] = apply_update([], u, SETTINGS)
    assert b == Binding(A, NOW + 3600, 1.0, "c9@ua", 4, SOURCE, ("<sip:edge.example.com;lr>",),
                        "Phone/1.0", INSTANCE.strip('"'), 1, "core-0", NOW)
    # A refresh under the same Call-ID keeps the first registration time;
    # another Call-ID is a new registration (the UA restarted).
    [refreshed] = apply_update([b], update(*flow(A), call_id="c9@ua", cseq=5, at=30), SETTINGS)
    assert refreshed.registered_at == NOW
    [restarted] = apply_update([b], update(*flow(A), call_id="new@ua", at=40), SETTINGS)
    assert restarted.registered_at == NOW + 40


def test_3261_10_3_step7_current_list_is_not_modified():
    current = apply_update([], update(f"Contact: <{A}>, <{B}>"), SETTINGS)
    kept = list(current)
    after = apply_update(current, update(f"Contact: <{A}>;expires=0", cseq=2), SETTINGS)
    assert current == kept and [b.contact for b in after] == [B]


# ------------------------------------------------------------ the 200's headers

def registered(*lines: str, settings: Settings = SETTINGS, **kw) -> tuple[list[Binding], RegisterUpdate]:
    u = update(*lines, settings=settings, **kw)
    return apply_update([], u, settings), u


def test_3261_10_3_step8_contacts_count_down_and_date():
    bindings, _ = registered(f"Contact: <{A}>;expires=600, <{B}>;q=0.5;expires=60")
    query = update(cseq=2, at=100)
    assert ok_headers(bindings, query) == [
        ("Contact", f"<{A}>;expires=500"),
        ("Date", email.utils.formatdate(NOW + 100, usegmt=True)),
    ]
    assert ok_headers(bindings, update(cseq=2, at=59.6))[:2] == [
        ("Contact", f"<{A}>;expires=540"), ("Contact", f"<{B}>;expires=1;q=0.5")]


def test_3261_20_17_date_is_rfc1123_gmt():
    _, u = registered()
    assert dict(ok_headers([], u))["Date"] == "Tue, 14 Nov 2023 22:13:20 GMT"


OK_HEADERS = [
    ("3327-5.3-path-echoed-with-supported-path",
     ["Supported: path", f"Contact: <{A}>", "Path: <sip:e1.example.com;lr>, <sip:e2.example.com;lr>"],
     [("Contact", f"<{A}>;expires=3600"), ("Path", "<sip:e1.example.com;lr>"),
      ("Path", "<sip:e2.example.com;lr>")]),
    ("3327-5.3-path-not-echoed-without-supported-path",
     [f"Contact: <{A}>", "Path: <sip:e1.example.com;lr>"], [("Contact", f"<{A}>;expires=3600")]),
    ("5626-6-require-outbound-and-flow-echoed", flow(A),
     [("Contact", f"<{A}>;expires=3600;+sip.instance={INSTANCE};reg-id=1"), ("Require", "outbound")]),
    ("5626-6-no-require-without-reg-id",
     ["Supported: outbound", f"Contact: <{A}>;+sip.instance={INSTANCE};q=0.25"],
     [("Contact", f"<{A}>;expires=3600;q=0.25;+sip.instance={INSTANCE}")]),
]


@pytest.mark.parametrize("lines,expected", [c[1:] for c in OK_HEADERS], ids=[c[0] for c in OK_HEADERS])
def test_ok_headers(lines, expected):
    bindings, u = registered(*lines)
    assert [h for h in ok_headers(bindings, u) if h[0] != "Date"] == expected


# ------------------------------------------------------------ lookup

def binding(contact: str, q: float, expires_at: float) -> Binding:
    return Binding(contact, expires_at, q, "c@ua", 1, SOURCE, (), "", "", 0, "core-0", NOW)


def test_3261_16_6_branch_groups_by_q_and_never_expired():
    a, b, c = binding(A, 1.0, NOW + 10), binding(B, 0.5, NOW + 10), binding(C, 1.0, NOW + 10)
    d, gone = binding("sip:d@192.0.2.4", 0.1, NOW + 10), binding("sip:e@192.0.2.5", 0.9, NOW)
    bindings = [b, a, gone, d, c]
    assert branch_groups(bindings, NOW) == [[a, c], [b], [d]]
    assert live(bindings, NOW) == [b, a, d, c]
    assert live(bindings, NOW + 10) == [] and branch_groups(bindings, NOW + 10) == []
    assert ok_headers(bindings, update(at=10))[0][0] == "Date"


def test_binding_round_trips_through_json():
    [b] = apply_update([], update("Path: <sip:edge.example.com;lr>", "User-Agent: Phone/1.0", *flow(A)), SETTINGS)
    again = Binding.from_dict(json.loads(json.dumps(b.to_dict())))
    assert again == b and isinstance(again.source, tuple) and isinstance(again.path, tuple)


# ------------------------------------------------------------ address-of-record

OURS = {("127.0.0.1", 5060): "localhost", ("127.0.0.1", None): "localhost", ("localhost", None): "localhost",
        ("sip.example.com", None): "example.com"}


def ours(host: str, port: int | None) -> str | None:
    return OURS.get((host, port))


AORS = [
    ("3261-10.3-step5-uri-params-dropped", "<sip:alice@example.com;user=phone;transport=tcp>;tag=9",
     "sip:alice@example.com"),
    ("3261-10.3-step5-display-name-and-addr-spec", '"Alice" <sip:alice@example.com>', "sip:alice@example.com"),
    ("3261-10.3-step5-request-uri-form", "sip:alice@example.com;transport=udp", "sip:alice@example.com"),
    ("3261-10.3-step5-escapes-unescaped", "sip:%61lice@example.com", "sip:alice@example.com"),
    ("3261-19.1.4-host-lower-cased", "sip:alice@EXAMPLE.Com", "sip:alice@example.com"),
    ("3261-19.1.4-user-case-kept", "sip:Alice@example.com", "sip:Alice@example.com"),
    ("3261-10.3-step5-port-and-password-dropped", "sip:alice:secret@example.com:5070", "sip:alice@example.com"),
    ("5630-3.1.1-sips-is-the-same-aor", "sips:alice@example.com", "sip:alice@example.com"),
    ("3261-10.3-step3-our-address-is-our-domain", "sip:alice@127.0.0.1:5060", "sip:alice@localhost"),
    ("3261-10.3-step3-our-name-is-our-domain", "<sip:alice@localhost>", "sip:alice@localhost"),
    ("3261-10.3-step3-configured-alias", "sip:bob@SIP.example.com", "sip:bob@example.com"),
    ("3261-10.3-step3-other-port-not-ours", "sip:alice@127.0.0.1:5070", "sip:alice@127.0.0.1"),
]


@pytest.mark.parametrize("text,aor", [c[1:] for c in AORS], ids=[c[0] for c in AORS])
def test_address_of_record(text, aor):
    assert address_of_record(text, ours) == aor


AOR_REFUSED = [
    ("3261-10.3-step3-no-user-404", "<sip:example.com>", 404),
    ("3261-10.3-step3-tel-uri-404", "<tel:+15550100>", 404),
    ("3261-10.3-step5-malformed-400", "<sip:alice@>", 400),
    ("3261-10.3-step5-other-scheme-400", "<mailto:alice@example.com>", 400),
]


@pytest.mark.parametrize("text,status", [c[1:] for c in AOR_REFUSED], ids=[c[0] for c in AOR_REFUSED])
def test_address_of_record_refused(text, status):
    assert refusal(address_of_record, text, ours).status == status


# ------------------------------------------------------------ memory

def test_100000_bindings_fit_in_100_mb():
    count = 100_000
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        # Strings built one by one, as parsing would give each binding its own.
        bindings = [
            Binding(f"sip:u{i}@198.51.{i % 250}.{i % 199}:{5060 + i % 3000};transport=udp",
                    NOW + 3600 + i, 1.0, f"{i:08x}-5c1d-4f3a-9b2e-{i:012x}@198.51.100.{i % 250}", i % 5000,
                    ("udp", f"198.51.{i % 250}.{i % 199}", 5060 + i % 3000),
                    (f"<sip:edge{i % 4}.example.com;lr;ob>",), f"Phone/5.{i % 10} (sip-stack/1.2)",
                    f"<urn:uuid:{i:08x}-7dec-11d0-a765-{i:012x}>", 1, "core-0", NOW + i)
            for i in range(count)
        ]
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(bindings) == count
    per_binding = used / count
    assert used < 100 * 2**20, f"{used / 2**20:.1f} MB for {count} bindings, {per_binding:.0f} bytes each"
