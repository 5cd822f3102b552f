"""The location service (host/services/location.py): `save` runs the
registrar's rules against a MemoryStore, `lookup` turns the live bindings
into branches (q-groups, NAT, Path). REGISTERs are parsed from SIP text; the
wall clock is injected so expiry needs no sleeping."""

from __future__ import annotations

import time

import pytest

from host.services.location import LocationService, binding_records, binding_target
from host.sip.decision import Target
from host.sip.message import Request
from host.sip.parser import parse_message
from host.sip.registrar import Settings
from host.storage.memory import MemoryStore

AOR = "sip:alice@example.com"
UA = ("udp", "192.0.2.10", 5060)          # a UA on a public address, Via = source


class Clock:
    def __init__(self, t: float | None = None):
        # Now, not at import: binding_records reads the real wall clock.
        t = float(int(time.time())) if t is None else t
        self.t = t

    def __call__(self) -> float:
        return self.t


def register(*lines: str, via: str = "192.0.2.10:5060", call_id: str = "reg-1@ua", cseq: int = 1,
             user: str = "alice") -> Request:
    text = "\r\n".join([
        "REGISTER sip:example.com SIP/2.0",
        f"Via: SIP/2.0/UDP {via};branch=z9hG4bK-{call_id.replace('@', '-')}-{cseq}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@example.com>;tag=a1",
        f"To: <sip:{user}@example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *lines,
        "Content-Length: 0", "", "",
    ])
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def invite(uri: str = "sip:alice@example.com") -> Request:
    text = "\r\n".join([
        f"INVITE {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK-inv",
        "Max-Forwards: 70",
        "From: <sip:bob@example.com>;tag=b1",
        f"To: <{uri}>",
        "Call-ID: call-1@caller",
        "CSeq: 1 INVITE",
        "Contact: <sip:bob@198.51.100.1>",
        "Content-Length: 0", "", "",
    ])
    return parse_message(text.encode())


def contacts_of(d) -> list[str]:
    return [v for name, v in d.headers if name == "Contact"]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def changes():
    return []


@pytest.fixture
def location(store, clock, changes):
    return LocationService(store, Settings(), core="core-A", clock=clock,
                           on_change=lambda aor, before, after: changes.append((aor, before, after)))


async def test_save_then_lookup_gives_branches_in_q_groups(location, store, changes):
    d = await location.save(register(
        "Contact: <sip:alice@192.0.2.10:5060>;q=0.5",
        "Contact: <sip:alice@192.0.2.11:5070>, <sip:alice@192.0.2.12:5080>;q=1.0",
        "Expires: 600"), UA, {})
    assert d.code == 200
    assert sorted(contacts_of(d)) == sorted([
        "<sip:alice@192.0.2.10:5060>;expires=600;q=0.5",
        "<sip:alice@192.0.2.11:5070>;expires=600",
        "<sip:alice@192.0.2.12:5080>;expires=600"])
    assert any(name == "Date" for name, _ in d.headers)
    assert len(await store.bindings(AOR)) == 3
    (aor, before, after), = changes
    assert aor == AOR and before == [] and len(after) == 3

    out = await location.lookup(invite(), {"code": 480})
    assert out.verb == "relay"
    # Contacts at 192.0.2.11/12 with a Via from 192.0.2.10: a third party's
    # public addresses, not a NAT, so the Contacts are called as they are.
    assert out.branches == [
        [Target("sip:alice@192.0.2.11:5070"), Target("sip:alice@192.0.2.12:5080")],
        [Target("sip:alice@192.0.2.10:5060")],
    ]


async def test_lookup_keeps_the_routes_timeout_and_names_the_aor_by_option(location):
    await location.save(register("Contact: <sip:alice@192.0.2.10:5060>"), UA, {})
    out = await location.lookup(invite("sip:nobody@example.com"), {"aor": AOR, "timeout": 7})
    assert out.verb == "relay" and out.timeout == 7
    assert out.branches == [[Target("sip:alice@192.0.2.10:5060")]]
    # The edited Request-URI (set_ruri before lookup) is what is looked up.
    out = await location.lookup(invite("sip:nobody@example.com"), {}, "sip:alice@example.com")
    assert out.verb == "relay"


async def test_natted_binding_is_reached_at_its_source(location, store):
    # The UA says 10.0.0.5:5060 (its private address); the REGISTER came from the NAT.
    nat_source = ("udp", "203.0.113.7", 40000)
    d = await location.save(register("Contact: <sip:alice@10.0.0.5:5060>", via="10.0.0.5:5060"),
                            nat_source, {})
    assert d.code == 200
    (b,) = await store.bindings(AOR)
    assert b.nat is True and b.source == nat_source and b.core == "core-A"
    out = await location.lookup(invite(), {})
    assert out.branches == [[Target("sip:alice@10.0.0.5:5060", (), nat_source)]]


async def test_private_contact_with_matching_via_is_natted_too(location, store):
    # Via rewritten by the UA (rport-aware) to the public address, Contact still private.
    source = ("udp", "203.0.113.7", 40000)
    await location.save(register("Contact: <sip:alice@10.0.0.5:5060>", via="203.0.113.7:40000"), source, {})
    (b,) = await store.bindings(AOR)
    assert b.nat is True
    assert binding_target(b) == Target("sip:alice@10.0.0.5:5060", (), source)


async def test_public_binding_is_called_at_its_contact(location, store):
    await location.save(register("Contact: <sip:alice@192.0.2.10:5060>"), UA, {})
    (b,) = await store.bindings(AOR)
    assert b.nat is False
    assert binding_target(b) == Target("sip:alice@192.0.2.10:5060")


async def test_tcp_binding_is_reached_on_its_flow(location, store):
    flow = ("tcp", "192.0.2.10", 51000)
    await location.save(register("Contact: <sip:alice@192.0.2.10:5060;transport=tcp>",
                                 via="192.0.2.10:51000"), flow, {})
    out = await location.lookup(invite(), {})
    assert out.branches == [[Target("sip:alice@192.0.2.10:5060;transport=tcp", (), flow)]]


async def test_path_becomes_the_targets_route(location):
    await location.save(register("Contact: <sip:alice@10.0.0.5:5060>",
                                 "Path: <sip:edge1.example.net;lr>, <sip:edge2.example.net;lr>",
                                 via="10.0.0.5:5060"),
                        ("udp", "198.51.100.50", 5060), {})
    out = await location.lookup(invite(), {})
    # Path wins over NAT: the edge proxy knows the flow.
    assert out.branches == [[Target("sip:alice@10.0.0.5:5060",
                                    ("<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>"))]]


async def test_query_register_lists_bindings_and_changes_nothing(location, store, clock):
    await location.save(register("Contact: <sip:alice@192.0.2.10:5060>", "Expires: 600"), UA, {})
    stored = list(await store.bindings(AOR))
    clock.t += 100
    d = await location.save(register(call_id="query-1@ua"), UA, {})
    assert d.code == 200
    assert contacts_of(d) == ["<sip:alice@192.0.2.10:5060>;expires=500"]
    assert await store.bindings(AOR) == stored


async def test_stale_cseq_is_500_and_nothing_changes(location, store, changes):
    await location.save(register("Contact: <sip:alice@192.0.2.10:5060>", "Expires: 600", cseq=5), UA, {})
    stored = [b.to_dict() for b in await store.bindings(AOR)]
    for cseq in (5, 4):
        d = await location.save(register("Contact: <sip:alice@192.0.2.10:5060>", "Expires: 0", cseq=cseq),
                                UA, {})
        assert (d.code, d.reason) == (500, "Stale CSeq")
    assert [b.to_dict() for b in await store.bindings(AOR)] == stored
    assert location.refused == 2 and location.registrations == 1 and len(changes) == 1
    # A higher CSeq does remove it.
    d = await location.save(register("Contact: <sip:alice@192.0.2.10:5060>", "Expires: 0", cseq=6), UA, {})
    assert d.code == 200 and contacts_of(d) == [] and await store.bindings(AOR) == []


async def test_too_brief_is_423_with_min_expires_and_nothing_stored(location, store):
    d = await location.save(register("Contact: <sip:alice@192.0.2.10:5060>", "Expires: 10"), UA,
                            {"min_expires": 120})
    assert d.code == 423 and ("Min-Expires", "120") in d.headers
    assert await store.bindings(AOR) == []


async def test_max_expires_from_the_route_shortens_the_binding(location):
    d = await location.save(register("Contact: <sip:alice@192.0.2.10:5060>", "Expires: 7200"), UA,
                            {"max_expires": 300})
    assert contacts_of(d) == ["<sip:alice@192.0.2.10:5060>;expires=300"]


async def test_all_or_nothing_when_one_contact_is_refused(location, store):
    await location.save(register("Contact: <sip:alice@192.0.2.10:5060>"), UA, {})
    before = [b.to_dict() for b in await store.bindings(AOR)]
    d = await location.save(register("Contact: <sip:alice@192.0.2.11:5060>",
                                     "Contact: <sip:alice@192.0.2.12:5060>;q=7", cseq=2), UA, {})
    assert d.code == 400
    assert [b.to_dict() for b in await store.bindings(AOR)] == before


async def test_expired_bindings_do_not_answer(location, clock):
    await location.save(register("Contact: <sip:alice@192.0.2.10:5060>", "Expires: 60"), UA, {})
    clock.t += 59
    assert (await location.lookup(invite(), {"code": 480})).verb == "relay"
    clock.t += 2
    out = await location.lookup(invite(), {"code": 480})
    assert (out.verb, out.code) == ("reply", 480)
    # And a query no longer lists it.
    d = await location.save(register(call_id="query-2@ua"), UA, {})
    assert contacts_of(d) == []


async def test_lookup_of_unknown_user_answers_the_routes_code(location):
    out = await location.lookup(invite("sip:nobody@example.com"), {"code": 480, "reason": "Offline"})
    assert (out.verb, out.code, out.reason) == ("reply", 480, "Offline")
    out = await location.lookup(invite("sip:nobody@example.com"), {})
    assert (out.verb, out.code) == ("reply", 404)


async def test_lookup_of_a_uri_without_user_is_404(location):
    out = await location.lookup(invite("sip:example.com"), {"code": 480})
    assert (out.verb, out.code) == ("reply", 404)


async def test_save_refuses_other_methods(location):
    d = await location.save(invite(), UA, {})
    assert d.code == 405 and ("Allow", "REGISTER") in d.headers


async def test_star_removes_every_binding(location, store):
    await location.save(register("Contact: <sip:alice@192.0.2.10:5060>", "Contact: <sip:alice@192.0.2.11:5060>"),
                        UA, {})
    assert len(await store.bindings(AOR)) == 2
    d = await location.save(register("Contact: *", "Expires: 0", cseq=2), UA, {})
    assert d.code == 200 and await store.bindings(AOR) == []
    assert (await location.lookup(invite(), {"code": 480})).code == 480


async def test_binding_records_for_the_registrar_lookup_host_call(location, store):
    await location.save(register("Contact: <sip:alice@10.0.0.5:5060>;q=0.2",
                                 "Contact: <sip:alice@10.0.0.5:5062>;q=0.9",
                                 "User-Agent: test-phone/1", "Expires: 3600", via="10.0.0.5:5060"),
                        ("udp", "203.0.113.7", 40000), {})
    records = await binding_records(store, "sip:alice@EXAMPLE.com;transport=udp")
    assert [r["contact"] for r in records] == ["sip:alice@10.0.0.5:5062", "sip:alice@10.0.0.5:5060"]
    first = records[0]
    assert first["q"] == 0.9 and first["received"] == "203.0.113.7:40000"
    assert first["transport"] == "udp" and first["user_agent"] == "test-phone/1"
    assert 3590 <= first["expires"] <= 3600
