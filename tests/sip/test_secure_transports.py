"""TLS and WebSocket in the sans-IO core: which transport a next hop gets
(sips is never downgraded, RFC 5630), the Via and Record-Route written for
tls/ws/wss (RFC 3261 §16.6, RFC 7118 §5.2, RFC 5658 double Record-Route),
and WebSocket clients with .invalid Via/Contact hosts reached over the
connection they came on (RFC 7118 §5). No sockets."""

import pytest

from host.sip.actions import Consult, Transmit
from host.sip.decision import Decision, Target
from host.sip.errors import BadMessage
from host.sip.parser import parse_message
from host.sip.proxy import ProxyCore
from host.sip.proxy_rules import hop_transport, record_route_value
from host.sip.uri import parse_uri

LISTEN = [("udp", "127.0.0.1", 5060), ("tcp", "127.0.0.1", 5060), ("tls", "127.0.0.1", 5061),
          ("ws", "127.0.0.1", 8080), ("wss", "127.0.0.1", 8443)]
UAC = ("127.0.0.1", 40000)
WS_CLIENT = ("127.0.0.1", 41000)


def core(listen=LISTEN, **kw):
    ids = iter(range(1, 10**6))
    return ProxyCore(listen, new_id=lambda: f"id{next(ids)}", **kw)


def invite(ruri, via="SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKc1",
           contact="<sip:alice@127.0.0.1:40000>", call_id="c1", to_tag=None, method="INVITE",
           route=()):
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    headers = [("Via", via), ("From", "<sip:alice@example.com>;tag=a1"), ("To", to),
               ("Call-ID", call_id), ("CSeq", f"1 {method}"), ("Max-Forwards", "70"),
               *[("Route", r) for r in route], ("Contact", contact), ("Content-Length", "0")]
    return ("\r\n".join([f"{method} {ruri} SIP/2.0"] + [f"{k}: {v}" for k, v in headers])
            + "\r\n\r\n").encode()


def relay(c, data, transport, src, decision):
    consult = next(a for a in c.receive(data, transport, src) if isinstance(a, Consult))
    return [a for a in c.decided(consult.token, decision) if isinstance(a, Transmit)]


RECORD = Decision(verb="relay", edits=[("record_route",)])


def relayed_to(c, ruri, decision=RECORD, **kw):
    out = relay(c, invite(ruri, **kw), "udp", UAC, decision)
    return [t for t in out if not t.data.startswith(b"SIP/2.0")]


@pytest.mark.parametrize("uri, transport", [
    ("sip:a@h", "udp"), ("sip:a@h;transport=TCP", "tcp"), ("sip:a@h;transport=tls", "tls"),
    ("sips:a@h", "tls"), ("sips:a@h;transport=tcp", "tls"), ("sips:a@h;transport=udp", "tls"),
    ("sip:a@h;transport=ws", "ws"), ("sips:a@h;transport=ws", "wss"), ("sip:a@h;transport=wss", "wss"),
])
def test_uri_transport_never_downgrades_sips(uri, transport):
    assert parse_uri(uri).transport == transport


def test_hop_transport_upgrades_an_unnamed_hop_of_a_sips_request_and_refuses_a_named_insecure_one():
    assert hop_transport(parse_uri("sip:proxy.example.com;lr"), sips=True) == "tls"
    assert hop_transport(parse_uri("sip:proxy.example.com;lr"), sips=False) == "udp"
    assert hop_transport(parse_uri("sips:h;transport=ws"), sips=True) == "wss"
    for hop, forced in (("sip:proxy;transport=tcp;lr", None), ("sip:bob@h", "tcp"), ("sip:bob@h", "ws")):
        with pytest.raises(BadMessage) as err:
            hop_transport(parse_uri(hop), sips=True, forced=forced)
        assert err.value.status == 503


def test_record_route_values_per_transport():
    assert record_route_value("tls", "127.0.0.1", 5061) == "<sip:127.0.0.1:5061;transport=tls;lr>"
    assert record_route_value("tls", "127.0.0.1", 5061, sips=True) == "<sips:127.0.0.1:5061;lr>"
    assert record_route_value("ws", "::1", 80) == "<sip:[::1]:80;transport=ws;lr>"
    wss = record_route_value("wss", "127.0.0.1", 8443)
    assert wss == "<sips:127.0.0.1:8443;transport=ws;lr>"
    assert parse_uri(wss[1:-1]).transport == "wss"   # and it routes back over WSS


def test_sips_request_goes_over_tls_to_the_tls_default_port_with_sips_record_routes():
    (out,) = relayed_to(core(), "sips:bob@127.0.0.1")
    assert (out.transport, out.host, out.port) == ("tls", "127.0.0.1", 5061)
    req = parse_message(out.data)
    assert req.header("via").startswith("SIP/2.0/TLS 127.0.0.1:5061;branch=")
    # In over UDP, out over TLS: both sides recorded (RFC 5658), the TLS one a sips URI.
    assert req.header_values("record-route") == ["<sips:127.0.0.1:5061;lr>", "<sip:127.0.0.1:5060;lr>"]


def test_transport_tls_uri_goes_over_tls_with_a_transport_tls_record_route():
    (out,) = relayed_to(core(), "sip:bob@127.0.0.1:5071;transport=tls")
    assert (out.transport, out.port) == ("tls", 5071)
    assert parse_message(out.data).header_values("record-route") == [
        "<sip:127.0.0.1:5061;transport=tls;lr>", "<sip:127.0.0.1:5060;lr>"]


def test_sips_target_over_an_insecure_flow_is_refused_not_downgraded():
    c = core()
    decision = Decision(verb="relay", branches=[[Target("sips:bob@127.0.0.1:5071", dest=("tcp", "127.0.0.1", 5071))]])
    out = relay(c, invite("sips:bob@example.com"), "udp", UAC, decision)
    assert not [t for t in out if not t.data.startswith(b"SIP/2.0")]     # nothing relayed
    finals = [t for t in out if t.data.startswith(b"SIP/2.0 5")]
    # The branch's 503 reaches the caller as 500 (§16.7 step 6: a 503 is never forwarded).
    assert [(t.data.split(b"\r\n")[0], t.host) for t in finals] == [(b"SIP/2.0 500 Server Internal Error", UAC[0])]


def test_sips_request_without_a_tls_listener_is_not_sent_in_the_clear():
    c = core(listen=[("udp", "127.0.0.1", 5060)])
    out = relay(c, invite("sips:bob@127.0.0.1:5071"), "udp", UAC, RECORD)
    assert [(t.transport, t.data.split(b"\r\n")[0]) for t in out if t.data[:7] != b"SIP/2.0"] == []
    assert [t.data.split(b"\r\n")[0] for t in out if t.data.startswith(b"SIP/2.0 5")] == [
        b"SIP/2.0 500 Server Internal Error"]


# --------------------------------------------------------------- WebSocket
WS_VIA = "SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKws1"
WS_CONTACT = "<sip:k3s8@df7jal23ls0d.invalid;transport=ws;ob>"


def test_websocket_client_invite_is_answered_on_its_connection_and_double_record_routed():
    c = core()
    actions = c.receive(invite("sip:bob@127.0.0.1:5090", via=WS_VIA, contact=WS_CONTACT), "ws", WS_CLIENT)
    trying = [a for a in actions if isinstance(a, Transmit)]
    assert [(t.transport, t.host, t.port) for t in trying] == [("ws", *WS_CLIENT)]
    consult = next(a for a in actions if isinstance(a, Consult))
    out = [t for t in c.decided(consult.token, RECORD) if isinstance(t, Transmit)]
    (relayed,) = out
    assert (relayed.transport, relayed.host, relayed.port) == ("udp", "127.0.0.1", 5090)
    req = parse_message(relayed.data)
    assert req.header_values("record-route") == ["<sip:127.0.0.1:5060;lr>",
                                                 "<sip:127.0.0.1:8080;transport=ws;lr>"]
    # The .invalid host cannot be reached: the dialog's remote target is the connection.
    assert req.header("contact") == "<sip:k3s8@127.0.0.1:41000;transport=ws;ob>"
    vias = req.header_values("via")
    assert vias[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;") and vias[1].startswith(
        "SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKws1;received=127.0.0.1")


def test_in_dialog_bye_toward_a_websocket_client_goes_over_its_connection():
    c = core()
    bye = invite("sip:k3s8@127.0.0.1:41000;transport=ws;ob", method="BYE", to_tag="b1", call_id="c2",
                 via="SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKbye1",
                 route=("<sip:127.0.0.1:5060;lr>", "<sip:127.0.0.1:8080;transport=ws;lr>"))
    out = [t for t in c.receive(bye, "udp", ("127.0.0.1", 5090)) if isinstance(t, Transmit)]
    (relayed,) = [t for t in out if not t.data.startswith(b"SIP/2.0")]
    assert (relayed.transport, relayed.host, relayed.port) == ("ws", *WS_CLIENT)
    req = parse_message(relayed.data)
    assert req.header("via").startswith("SIP/2.0/WS 127.0.0.1:8080;branch=")
    assert req.header("route") is None     # both of our entries removed


def test_call_to_a_binding_registered_over_websocket_follows_its_flow():
    c = core()
    decision = Decision(verb="relay", edits=[("record_route",)],
                        branches=[[Target("sip:k3s8@df7jal23ls0d.invalid;transport=ws", dest=("ws", *WS_CLIENT))]])
    (relayed,) = relayed_to(c, "sip:bob@127.0.0.1", decision)
    assert (relayed.transport, relayed.host, relayed.port) == ("ws", *WS_CLIENT)
    req = parse_message(relayed.data)
    assert req.uri == "sip:k3s8@df7jal23ls0d.invalid;transport=ws"
    assert req.header_values("record-route") == ["<sip:127.0.0.1:8080;transport=ws;lr>",
                                                 "<sip:127.0.0.1:5060;lr>"]
