"""RFC 3263 in the proxy core: a branch to a name waits for its targets
(`Locate` -> `located`), is stamped for the transport DNS chose, and fails
over to the next target on 503, transport error or timeout (§4.3); every
send of a located branch carries the located domain (RFC 5922 §4, what a
TLS next hop must prove). A request relayed without a transaction (the ACK
for a 2xx) is located the same way."""

import itertools

from callflow import PROXY, UAC, UAS, Network

from host.sip.actions import Locate
from host.sip.locate import Naptr, Srv, locate, run_with
from host.sip import proxy_locate
from host.sip.proxy import Arm, ProxyCore, Transmit

ZONE = {
    ("example.test", "NAPTR"): [],
    ("_sip._udp.example.test", "SRV"): [Srv(10, 0, 5071, "first.example.test."),
                                         Srv(20, 0, 5072, "second.example.test.")],
    ("first.example.test", "A"): ["127.0.0.1"],
    ("second.example.test", "A"): ["127.0.0.1"],
}


class LocatingProxy:
    """The proxy core with a shell that answers `Locate` from a fake zone,
    and reports a transport error for sends to `dead` addresses."""

    def __init__(self, net, zone, relay_to="sip:example.test", listen=(("udp", *PROXY),), dead=()):
        ids = itertools.count(1)
        self.core = ProxyCore(list(listen), relay_to=relay_to, new_id=lambda: f"b{next(ids)}",
                              clock=lambda: net.now, locating=True)
        self.zone, self.dead, self.located, self.sent, self.locates = zone, set(dead), [], [], []

    def receive(self, data, src):
        self.execute(self.core.receive(data, "udp", src))

    def execute(self, actions):
        for a in actions:
            if isinstance(a, Transmit):
                self.sent.append(a)
                if (a.host, a.port) in self.dead and a.error_key is not None:
                    self.net.at(0.001, lambda k=a.error_key: self.execute(self.core.transport_error(k)))
                else:
                    self.net.send(self.addr, (a.host, a.port), a.data)
            elif isinstance(a, Arm):
                self.net.at(a.delay, lambda key=a.key: self.execute(self.core.timer(key)))
            elif isinstance(a, Locate):
                self.locates.append(a)
                found = run_with(locate(a.scheme, a.host, a.port, a.transport, a.supported,
                                        lambda: 0.0, ("A",)),
                                 lambda q: self.zone.get((q.name, q.rdtype), []))
                self.located.append(found)
                self.net.at(0.01, lambda t=a.token, f=found: self.execute(self.core.located(t, f)))


def setup(zone=ZONE, scripts=((180, 200), (180, 200)), **kw):
    net = Network()
    proxy = LocatingProxy(net, zone, **kw)
    net.attach(PROXY, proxy)
    uac = UAC()
    net.attach(("127.0.0.1", 5061), uac)
    uases = []
    for i, script in enumerate(scripts):
        uases.append(UAS(script, tag=f"uas{i}"))
        net.attach(("127.0.0.1", 5071 + i), uases[-1])
    return net, proxy, uac, uases


def invites(uas):
    return [m for m in uas.received if getattr(m, "method", "") == "INVITE"]


def test_a_503_from_the_first_target_fails_over_to_the_second():
    net, proxy, uac, (first, second) = setup(scripts=((503,), (180, 200)))
    uac.request()
    net.run(until=5)
    assert uac.codes == [100, 180, 200]
    assert len(invites(first)) == 1 and len(invites(second)) == 1
    # A new client transaction: a new branch id, the same request otherwise.
    b1 = invites(first)[0].header_values("via")[0]
    b2 = invites(second)[0].header_values("via")[0]
    assert b1 != b2 and b1.split(";branch=")[0] == b2.split(";branch=")[0]
    assert proxy.core.stats.failovers == 1


def test_a_transport_error_fails_over_at_once():
    net, proxy, uac, (first, second) = setup(dead={("127.0.0.1", 5071)})
    uac.request()
    net.run(until=1)
    assert uac.codes == [100, 180, 200]
    assert invites(first) == [] and len(invites(second)) == 1


def test_no_answer_fails_over_when_the_client_transaction_times_out():
    net, proxy, uac, (first, second) = setup()
    net.drop = lambda src, dst, data: dst == ("127.0.0.1", 5071)
    uac.request("OPTIONS", ruri="sip:bob@example.test")
    net.run(until=40)
    # Timer F (64*T1 = 32 s) ends the first attempt; the second answers.
    assert uac.codes == [200]
    assert len([m for m in second.received if getattr(m, "method", "") == "OPTIONS"]) == 1


def test_the_last_targets_answer_goes_upstream_when_all_fail():
    net, proxy, uac, (first, second) = setup(scripts=((503,), (486,)))
    uac.request()
    net.run(until=5)
    assert uac.codes == [100, 486]
    net, proxy, uac, _ = setup(scripts=((503,), (503,)))
    uac.request()
    net.run(until=5)
    assert uac.codes == [100, 500]   # §16.7 step 6: a 503 is not passed on
    assert proxy.core.stats.failovers == 1


def test_a_busy_answer_is_final_and_not_failed_over():
    net, proxy, uac, (first, second) = setup(scripts=((486,), (180, 200)))
    uac.request()
    net.run(until=5)
    assert uac.codes == [100, 486]
    assert invites(second) == []


def test_failover_stays_within_the_branch_timer():
    # The first target rings and never answers: Timer C (the branch's time)
    # ends the branch with a CANCEL, and no second attempt is made.
    net, proxy, uac, (first, second) = setup(scripts=((180,), (180, 200)))
    uac.request()
    net.run(until=400)
    assert uac.codes[-1] == 408 or uac.codes[-1] == 487
    assert invites(second) == []


def test_naptr_choosing_tcp_stamps_the_branch_for_tcp():
    zone = {("example.test", "NAPTR"): [Naptr(10, 10, "s", "SIP+D2T", "_sip._tcp.example.test.")],
            ("_sip._tcp.example.test", "SRV"): [Srv(10, 0, 5072, "second.example.test.")],
            ("second.example.test", "A"): ["127.0.0.1"]}
    net, proxy, uac, (_, second) = setup(zone, listen=(("udp", *PROXY), ("tcp", *PROXY)))
    uac.request()
    net.run(until=5)
    inv = invites(second)[0]
    assert inv.header_values("via")[0].startswith("SIP/2.0/TCP 127.0.0.1:5060;")
    # UDP in, TCP out: both sides recorded (RFC 5658).
    assert inv.header_values("record-route") == ["<sip:127.0.0.1:5060;transport=tcp;lr>",
                                                 "<sip:127.0.0.1:5060;lr>"]


def test_an_unresolvable_name_is_answered_and_nothing_is_sent():
    net, proxy, uac, (first, second) = setup(zone={})
    uac.request()
    net.run(until=5)
    assert uac.codes == [100, 500]   # our 503 for the branch, §16.7 step 6 upstream
    assert invites(first) == invites(second) == []


def test_cancel_while_locating_ends_the_branch_with_487():
    net, proxy, uac, (first, _) = setup()
    inv = uac.request()
    net.run(until=0.005)   # the 100 is back; the targets are not
    cancel = inv.copy()
    cancel.method = "CANCEL"
    cancel.set_header("cseq", "1 CANCEL")
    net.send(uac.addr, PROXY, cancel.serialize())
    net.run(until=5)
    assert 487 in uac.codes and invites(first) == []


def sent_to(proxy, port):
    return [a for a in proxy.sent if a.port == port]


def test_every_send_of_a_located_branch_carries_the_domain_failover_included():
    net, proxy, uac, (first, second) = setup(scripts=((503,), (180, 200)))
    uac.request()
    net.run(until=5)
    assert uac.codes == [100, 180, 200]
    # INVITE and the ACK of its 503 to the first target, INVITE to the second.
    assert [a.name for a in sent_to(proxy, 5071)] == ["example.test", "example.test"]
    assert [a.name for a in sent_to(proxy, 5072)] == ["example.test"]
    # Answers upstream go to an address: no name to prove.
    assert {a.name for a in sent_to(proxy, 5061)} == {None}


def test_a_cancel_goes_where_its_invite_went_with_the_same_name():
    net, proxy, uac, (first, _) = setup(scripts=((180,), (180, 200)))
    inv = uac.request()
    net.run(until=1)
    cancel = inv.copy()
    cancel.method = "CANCEL"
    cancel.set_header("cseq", "1 CANCEL")
    net.send(uac.addr, PROXY, cancel.serialize())
    net.run(until=5)
    cancels = [a for a in sent_to(proxy, 5071) if a.data.startswith(b"CANCEL")]
    assert len(cancels) == 1 and cancels[0].name == "example.test"


def test_an_ip_next_hop_has_no_name_to_prove():
    net, proxy, uac, (first, _) = setup(relay_to="sip:127.0.0.1:5071")
    uac.request()
    net.run(until=5)
    assert uac.codes == [100, 180, 200] and proxy.locates == []
    assert {a.name for a in sent_to(proxy, 5071)} == {None}


TCP_ZONE = {("example.test", "NAPTR"): [Naptr(10, 10, "s", "SIP+D2T", "_sip._tcp.example.test.")],
            ("_sip._tcp.example.test", "SRV"): [Srv(10, 0, 5072, "second.example.test.")],
            ("second.example.test", "A"): ["127.0.0.1"]}


def ack_2xx(uac, branch="z9hG4bK-ack1"):
    """An ACK for a 2xx with no Route: the proxy relays it statelessly to --relay-to."""
    return uac.request("ACK", ruri="sip:bob@example.test", to_tag="uas1", branch=branch)


def test_a_stateless_ack_is_located_by_naptr_and_stamped_for_the_transport_it_chose():
    net, proxy, uac, (_, second) = setup(TCP_ZONE, listen=(("udp", *PROXY), ("tcp", *PROXY)))
    ack_2xx(uac)
    net.run(until=1)
    assert [(a.scheme, a.host, a.port, a.transport) for a in proxy.locates] == \
        [("sip", "example.test", None, None)]
    acks = [m for m in second.received if getattr(m, "method", "") == "ACK"]
    assert len(acks) == 1
    vias = acks[0].header_values("via")
    assert vias[0].startswith("SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK") and len(vias) == 2
    assert acks[0].header("max-forwards") == "69"
    (sent,) = sent_to(proxy, 5072)
    assert (sent.transport, sent.host, sent.name, sent.error_key) == ("tcp", "127.0.0.1", "example.test", None)
    # §16.11: a retransmission gets the same branch.
    ack_2xx(uac)
    net.run(until=2)
    again = [m for m in second.received if getattr(m, "method", "") == "ACK"]
    assert len(again) == 2 and again[1].header_values("via")[0] == vias[0]


def test_a_stateless_ack_to_a_name_that_does_not_resolve_is_dropped_and_counted():
    net, proxy, uac, (first, second) = setup(zone={})
    ack_2xx(uac)
    net.run(until=1)
    assert len(proxy.locates) == 1
    assert sent_to(proxy, 5071) == sent_to(proxy, 5072) == []
    assert proxy.core.stats.stateless_unlocated == 1
    assert proxy.core._locating_stateless == {}


def test_stateless_relays_waiting_for_dns_are_bounded(monkeypatch):
    monkeypatch.setattr(proxy_locate, "MAX_STATELESS_LOCATING", 2)
    net, proxy, uac, _ = setup()
    out = []
    for i in range(3):
        uac.request("ACK", ruri="sip:bob@example.test", to_tag="uas1", branch=f"z9hG4bK-a{i}", dst=("127.0.0.1", 1))
        req = uac.sent[-1].serialize()
        out += proxy.core.receive(req, "udp", uac.addr)   # nobody answers the Locates
    assert sum(isinstance(a, Locate) for a in out) == 2
    assert len(proxy.core._locating_stateless) == 2 and proxy.core.stats.stateless_unlocated == 1
