"""The services' side of the sans-IO proxy core, through whole call flows
(tests/sip/callflow.py): relay groups and Target branches, fix_contact and the
automatic NAT Contact fix, keepalive answers, dialog tracking with its
duration limit, and REGISTER through us as outbound proxy. No sockets."""

import pytest
from callflow import PROXY, UAS, setup

from host.sip.actions import DialogChange, Disarm, KeepaliveAnswer
from host.sip.decision import Decision, Target
from host.sip.keepalive import KEEPALIVE_BRANCH_PREFIX
from host.sip.message import Request
from host.sip.proxy import Arm, Consult, Transmit
from host.sip.proxy_dialogs import FORGET_AFTER
from host.sip.proxy_requests import MAX_BRANCHES
from host.sip.records import DialogTimer

UAC_ADDR = ("127.0.0.1", 5061)
UAS0 = "sip:bob@127.0.0.1:5071"
UAS1 = "sip:bob@127.0.0.1:5072"
UAS2 = "sip:bob@127.0.0.1:5073"
OUR_RR = "<sip:127.0.0.1:5060;lr>"
PRIVATE_CONTACT = "<sip:uas@10.9.9.9:5999>"


# ----------------------------------------------------------------- helpers
def recording(proxy):
    """Keep every action the core returns (the callflow shell drops the
    ones it has no use for: DialogChange, Disarm, KeepaliveAnswer)."""
    log = []
    run = proxy.execute

    def execute(actions):
        actions = list(actions)
        log.extend(actions)
        run(actions)

    proxy.execute = execute
    return log


class Clock:
    """The core's clock, tied to the simulated network's time once it exists."""

    def __init__(self):
        self.net = None

    def __call__(self):
        return self.net.now if self.net is not None else 0.0


def deciding(decision_for):
    """A router answering on_request with `decision_for(event)`."""
    def router(hook, event):
        return decision_for(event) if hook == "on_request" else Decision()
    return router


def send_request(net, uac, method="INVITE", ruri="sip:bob@example.com",
                 via_sent_by="127.0.0.1:5061", contact="<sip:alice@127.0.0.1:5061>",
                 call_id="call-1", branch="z9hG4bK-uac1", cseq=1, to_tag=None, headers=()):
    """Like UAC.request, but with a Via sent-by and Contact of our choosing
    (a UA behind NAT writes its private address in both)."""
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    req = Request(method, ruri, [
        ("via", f"SIP/2.0/UDP {via_sent_by};branch={branch};rport"),
        ("max-forwards", "70"),
        ("from", "<sip:alice@example.com>;tag=uac"),
        ("to", to),
        ("call-id", call_id),
        ("cseq", f"{cseq} {method}"),
        ("contact", contact),
        *headers,
    ])
    uac.sent.append(req)
    net.send(uac.addr, PROXY, req.serialize())
    return req


class NatUAS(UAS):
    """A UAS whose responses carry a private Contact (as behind a NAT)."""

    def _send(self, resp, src):
        if resp.has_header("contact"):
            resp.set_header("contact", PRIVATE_CONTACT)
        super()._send(resp, src)


def attach(net, port, node):
    net.attach(("127.0.0.1", port), node)
    return node


def invites(node):
    return [m for m in node.received if getattr(m, "method", "") == "INVITE"]


def cancels(node):
    return [m for m in node.received if getattr(m, "method", "") == "CANCEL"]


def finals(uac):
    return [r.status for r in uac.responses if hasattr(r, "status") and r.status >= 200]


def dialog_changes(log):
    return [a for a in log if type(a) is DialogChange]


def sent_invites(log):
    return [a for a in log if type(a) is Transmit and a.data.startswith(b"INVITE ")]


# --------------------------------------------- 1. relay groups and Targets
def test_groups_fork_in_parallel_and_the_next_group_waits_for_both_failures():
    router = deciding(lambda e: Decision(verb="relay", branches=[
        [Target(UAS0), Target(UAS1)], [Target(UAS2)]]))
    net, proxy, uac, uases = setup(router, uas_scripts=((180, 486), (180, 404), (180, 200)))
    uac.request()
    net.run(until=5)
    assert finals(uac) == [200]
    assert len(invites(uases[0])) == 1 and len(invites(uases[1])) == 1
    assert len(invites(uases[2])) == 1
    t_a = min(t for t, s, d, line in net.trace if d == ("127.0.0.1", 5071))
    t_b = min(t for t, s, d, line in net.trace if d == ("127.0.0.1", 5072))
    assert t_a == t_b  # A and B in parallel
    fail_a = min(t for t, s, d, line in net.trace if s == ("127.0.0.1", 5071) and " 486 " in line)
    fail_b = min(t for t, s, d, line in net.trace if s == ("127.0.0.1", 5072) and " 404 " in line)
    start_c = min(t for t, s, d, line in net.trace if d == ("127.0.0.1", 5073))
    assert start_c >= max(fail_a, fail_b)


def test_the_next_group_does_not_start_while_one_branch_is_still_ringing():
    router = deciding(lambda e: Decision(verb="relay", branches=[
        [Target(UAS0), Target(UAS1)], [Target(UAS2)]]))
    net, proxy, uac, uases = setup(router, uas_scripts=((180, 486), (180,), (180, 200)))
    uac.request()
    net.run(until=5)
    assert uases[2].received == []
    assert finals(uac) == []


def test_a_2xx_in_the_first_group_cancels_its_sibling_and_the_next_group_never_starts():
    router = deciding(lambda e: Decision(verb="relay", branches=[
        [Target(UAS0), Target(UAS1)], [Target(UAS2)]]))
    net, proxy, uac, uases = setup(router, uas_scripts=((180, 200), (180,), (180, 200)))
    uac.request()
    net.run(until=40)
    assert finals(uac) == [200]
    assert len(cancels(uases[1])) == 1 and not cancels(uases[0])
    assert uases[2].received == []


def test_target_dest_forces_the_next_hop_and_keeps_its_uri_as_request_uri():
    nated = "sip:bob@10.0.0.7:5062;ob"
    router = deciding(lambda e: Decision(verb="relay", branches=[
        [Target(nated, dest=("udp", "127.0.0.1", 5072))]]))
    net, proxy, uac, uases = setup(router, uas_scripts=((180, 200), (180, 200)))
    log = recording(proxy)
    uac.request()
    net.run(until=5)
    (inv,) = sent_invites(log)
    assert (inv.transport, inv.host, inv.port) == ("udp", "127.0.0.1", 5072)
    (got,) = invites(uases[1])
    assert got.uri == nated
    assert uases[0].received == []
    assert finals(uac) == [200]


def test_target_route_goes_first_and_then_dest_is_ignored():
    router = deciding(lambda e: Decision(verb="relay", branches=[[Target(
        "sip:bob@10.0.0.7:5062", route=("<sip:127.0.0.1:5073;lr>", "<sip:edge.example;lr>"),
        dest=("udp", "127.0.0.1", 5072))]]))
    net, proxy, uac, uases = setup(router, uas_scripts=((180, 200), (180, 200), (180, 200)))
    log = recording(proxy)
    uac.request()
    net.run(until=5)
    (inv,) = sent_invites(log)
    assert (inv.host, inv.port) == ("127.0.0.1", 5073)  # the first Route, not dest
    assert uases[1].received == []
    (got,) = invites(uases[2])
    assert got.uri == "sip:bob@10.0.0.7:5062"
    assert got.header_values("route") == ["<sip:127.0.0.1:5073;lr>", "<sip:edge.example;lr>"]


def test_more_than_max_branches_targets_are_capped_across_groups():
    assert MAX_BRANCHES == 32
    first = [Target(f"sip:a{i}@10.0.0.1", dest=("udp", "127.0.0.1", 5071)) for i in range(20)]
    second = [Target(f"sip:b{i}@10.0.0.2", dest=("udp", "127.0.0.1", 5072)) for i in range(20)]
    third = [Target("sip:c@10.0.0.3", dest=("udp", "127.0.0.1", 5073))]
    router = deciding(lambda e: Decision(verb="relay", branches=[first, second, third]))
    net, proxy, uac, uases = setup(router, uas_scripts=((486,), (486,), (200,)))
    uac.request()
    net.run(until=10)
    assert len(invites(uases[0])) == 20
    assert len(invites(uases[1])) == 12      # 32 in all
    assert uases[2].received == []           # the group past the cap is gone
    assert finals(uac) == [486]


def test_one_group_of_forty_targets_forks_thirty_two():
    many = [Target(f"sip:x{i}@10.0.0.1", dest=("udp", "127.0.0.1", 5071)) for i in range(40)]
    router = deciding(lambda e: Decision(verb="relay", branches=[many]))
    net, proxy, uac, (uas,) = setup(router, uas_scripts=((486,),))
    log = recording(proxy)
    uac.request()
    net.run(until=10)
    assert len({a.data.split(b"\r\n", 1)[0] for a in sent_invites(log)}) == 32
    assert len(invites(uas)) == 32


def test_empty_groups_answer_480():
    for branches in ([], [[]], [[], []]):
        router = deciding(lambda e, b=branches: Decision(verb="relay", branches=b))
        net, proxy, uac, (uas,) = setup(router)
        uac.request()
        net.run(until=5)
        assert uac.codes == [100, 480], branches
        assert uas.received == []


# ------------------------------------------------------- 2. fix_contact edit
def test_fix_contact_edit_points_the_relayed_contact_at_the_source():
    for edits, expected in (([("fix_contact",)], "<sip:alice@127.0.0.1:5061>"),
                            ([], "<sip:alice@10.0.0.5:5062>")):
        router = deciding(lambda e, ed=edits: Decision(verb="relay", targets=[UAS0], edits=ed))
        net, proxy, uac, (uas,) = setup(router)
        # Via matches the source: only the edit can change the Contact.
        send_request(net, uac, "MESSAGE", contact="<sip:alice@10.0.0.5:5062>")
        net.run(until=3)
        (got,) = uas.received
        assert got.header("contact") == expected, edits


def test_fix_contact_in_on_reply_uses_the_responses_source():
    def router(hook, event):
        if hook == "on_reply":
            return Decision(edits=[("fix_contact",)])
        return Decision(verb="relay", targets=[UAS0])

    net, proxy, uac, _ = setup(router, hooks={"on_request", "on_reply"})
    attach(net, 5071, NatUAS((180, 200), tag="uas0"))
    uac.request()
    net.run(until=3)
    assert uac.codes == [100, 180, 200]
    # The callee's address (where the 180/200 came from), not the caller's.
    assert [r.header("contact") for r in uac.responses[1:]] == ["<sip:uas@127.0.0.1:5071>"] * 2


# ------------------------------------------------- 3. automatic NAT Contact fix
def test_an_invite_from_behind_nat_has_its_contact_fixed_before_the_route_and_the_relay():
    seen = []

    def router(hook, event):
        seen.append([v for k, v in event["headers"] if k == "Contact"])
        return Decision(verb="relay", targets=[UAS0])

    net, proxy, uac, (uas,) = setup(router)
    send_request(net, uac, via_sent_by="10.0.0.5:5062", contact="<sip:alice@10.0.0.5:5062;ob>;expires=60")
    net.run(until=3)
    assert seen == [["<sip:alice@127.0.0.1:5061;ob>;expires=60"]]
    (inv,) = invites(uas)
    assert inv.header("contact") == "<sip:alice@127.0.0.1:5061;ob>;expires=60"
    assert uac.codes == [100, 180, 200]


def test_a_port_translated_invite_is_fixed_too():
    net, proxy, uac, (uas,) = setup(deciding(lambda e: Decision(verb="relay", targets=[UAS0])))
    send_request(net, uac, via_sent_by="127.0.0.1:5099", contact="<sip:alice@127.0.0.1:5099>")
    net.run(until=3)
    assert invites(uas)[0].header("contact") == "<sip:alice@127.0.0.1:5061>"


def test_a_register_from_behind_nat_keeps_its_contact():
    seen = []

    def router(hook, event):
        seen.append([v for k, v in event["headers"] if k == "Contact"])
        return Decision(verb="relay", targets=[UAS0])

    net, proxy, uac, (uas,) = setup(router)
    send_request(net, uac, "REGISTER", ruri="sip:example.com", via_sent_by="10.0.0.5:5062",
                 contact="<sip:alice@10.0.0.5:5062>")
    net.run(until=3)
    assert seen == [["<sip:alice@10.0.0.5:5062>"]]
    assert uas.received[0].header("contact") == "<sip:alice@10.0.0.5:5062>"


def test_an_invite_whose_via_matches_the_source_is_untouched():
    net, proxy, uac, (uas,) = setup(deciding(lambda e: Decision(verb="relay", targets=[UAS0])))
    send_request(net, uac, contact="<sip:alice@10.0.0.5:5062>")
    net.run(until=3)
    assert invites(uas)[0].header("contact") == "<sip:alice@10.0.0.5:5062>"


def test_responses_of_a_flow_branch_get_their_contact_fixed_and_others_do_not():
    for target, expected in (
            (Target("sip:bob@10.9.9.9:5999", dest=("udp", "127.0.0.1", 5071)), "<sip:uas@127.0.0.1:5071>"),
            (Target(UAS0), PRIVATE_CONTACT)):
        net, proxy, uac, _ = setup(deciding(lambda e, t=target: Decision(verb="relay", branches=[[t]])))
        attach(net, 5071, NatUAS((180, 200), tag="uas0"))
        uac.request()
        net.run(until=3)
        assert uac.codes == [100, 180, 200], target
        assert [r.header("contact") for r in uac.responses[1:]] == [expected] * 2, target


# ------------------------------------------------------- 4. keepalive answers
def _ping_answer(branch):
    return (f"SIP/2.0 200 OK\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-below\r\n"
            f"From: <sip:ping@127.0.0.1>;tag=ka\r\nTo: <sip:alice@127.0.0.1>;tag=ua\r\n"
            f"Call-ID: ka-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def test_an_answer_to_a_keepalive_ping_is_reported_and_not_forwarded():
    net, proxy, uac, _ = setup()
    branch = KEEPALIVE_BRANCH_PREFIX + "salt.7.3"
    actions = proxy.core.receive(_ping_answer(branch), "udp", ("127.0.0.1", 5099))
    assert len(actions) == 1 and type(actions[0]) is KeepaliveAnswer
    assert (actions[0].branch, actions[0].status) == (branch, 200)
    assert proxy.core.stats.stray_responses == 0
    # The same response with another branch is a stray 2xx, forwarded on.
    actions = proxy.core.receive(_ping_answer("z9hG4bK-other"), "udp", ("127.0.0.1", 5099))
    assert [(type(a), a.port) for a in actions] == [(Transmit, 5061)]
    assert proxy.core.stats.stray_responses == 1


def test_a_404_to_a_ping_is_reported_with_its_status():
    net, proxy, uac, _ = setup()
    raw = _ping_answer(KEEPALIVE_BRANCH_PREFIX + "s.1.1").replace(b"200 OK", b"404 Not Found")
    (answer,) = proxy.core.receive(raw, "udp", ("127.0.0.1", 5099))
    assert type(answer) is KeepaliveAnswer and answer.status == 404


# ---------------------------------------------------------- 5. dialog tracking
def tracked(dialog=None, rr=True, targets=(UAS0,)):
    edits = [("record_route",)] if rr else []
    return deciding(lambda e: Decision(verb="relay", targets=list(targets), edits=edits, dialog=dialog))


def dialog_setup(router, uas_scripts=((180, 200),)):
    clock = Clock()
    net, proxy, uac, uases = setup(router, uas_scripts=uas_scripts, clock=clock)
    clock.net = net
    return net, proxy, uac, uases, recording(proxy)


def bye_from_caller(net, uac, branch="z9hG4bK-bye1"):
    return send_request(net, uac, "BYE", ruri="sip:uas@127.0.0.1:5071", to_tag="uas0", cseq=2,
                        branch=branch, headers=[("route", OUR_RR)])


def test_a_tracked_call_goes_trying_early_confirmed_with_its_limit_armed():
    spec = {"max_duration": 2.0, "profiles": {"caller": "x"}}
    net, proxy, uac, (uas,), log = dialog_setup(tracked(spec))
    uac.request()
    net.run(until=1)
    changes = dialog_changes(log)
    assert [c.state for c in changes] == ["trying", "early", "confirmed"]
    assert all(c.profiles == {"caller": "x"} for c in changes)
    rec = changes[-1].record
    assert rec["call_id"] == "call-1" and rec["max_duration"] == 2.0
    assert rec["confirmed_at"] is not None
    arms = [a for a in log if type(a) is Arm and type(a.key) is DialogTimer]
    assert [(a.delay, a.key) for a in arms] == [(2.0, DialogTimer("call-1", "uac"))]
    assert invites(uas)[0].header("record-route") == OUR_RR
    assert proxy.core.stats.dialogs == 1


def test_a_call_without_a_limit_arms_forget_after():
    net, proxy, uac, _, log = dialog_setup(tracked())
    uac.request()
    net.run(until=1)
    assert [c.state for c in dialog_changes(log)] == ["trying", "early", "confirmed"]
    arms = [a for a in log if type(a) is Arm and type(a.key) is DialogTimer]
    assert [a.delay for a in arms] == [FORGET_AFTER]


def test_an_unlimited_call_is_forgotten_at_forget_after_without_any_bye():
    net, proxy, uac, uases, log = dialog_setup(tracked())
    inv = uac.request()
    net.run(until=1)
    uac.ack_2xx(uac.responses[-1], inv)
    net.run(until=FORGET_AFTER + 10)
    changes = dialog_changes(log)
    assert [c.state for c in changes] == ["trying", "early", "confirmed", "ended"]
    assert changes[-1].record["end_reason"] == "lost"
    assert not [a for a in log if type(a) is Transmit and a.data.startswith(b"BYE")]
    assert len(proxy.core.dialogs) == 0


def test_a_bye_through_the_proxy_ends_the_dialog_and_disarms_its_timer():
    spec = {"max_duration": 2.0, "profiles": {"caller": "x"}}
    net, proxy, uac, (uas,), log = dialog_setup(tracked(spec))
    inv = uac.request()
    net.run(until=0.5)
    uac.ack_2xx(uac.responses[-1], inv)
    bye_from_caller(net, uac)
    net.run(until=1)
    assert [m.method for m in uas.received if hasattr(m, "method")] == ["INVITE", "ACK", "BYE"]
    changes = dialog_changes(log)
    assert [c.state for c in changes] == ["trying", "early", "confirmed", "ended"]
    assert changes[-1].record["end_reason"] == "bye" and changes[-1].profiles == {"caller": "x"}
    assert DialogTimer("call-1", "uac") in [a.key for a in log if type(a) is Disarm]
    assert len(proxy.core.dialogs) == 0
    # The limit's timer fires anyway (the shell never cancels): nothing happens.
    net.run(until=5)
    assert len(dialog_changes(log)) == 4
    byes = [a for a in log if type(a) is Transmit and a.data.startswith(b"BYE ")]
    assert [(a.host, a.port) for a in byes] == [("127.0.0.1", 5071)]   # only the caller's, relayed


def test_the_limit_ends_the_call_with_a_bye_each_way():
    spec = {"max_duration": 2.0, "profiles": {"caller": "x"}}
    net, proxy, uac, (uas,), log = dialog_setup(tracked(spec))
    # The caller's Contact is not where it sends from; its Via is.
    inv = send_request(net, uac, contact="<sip:alice@10.0.0.5:5062>")
    net.run(until=1)
    uac.ack_2xx(uac.responses[-1], inv)
    net.run(until=1.9)
    assert not [a for a in log if type(a) is Transmit and a.data.startswith(b"BYE")]
    net.run(until=2.5)
    byes = [a for a in log if type(a) is Transmit and a.data.startswith(b"BYE ")]
    firsts = {(a.host, a.port): a.data.split(b"\r\n", 1)[0] for a in byes}
    assert firsts == {("127.0.0.1", 5071): b"BYE sip:uas@127.0.0.1:5071 SIP/2.0",
                      ("127.0.0.1", 5061): b"BYE sip:alice@10.0.0.5:5062 SIP/2.0"}
    # The callee got one and answered it.
    assert [m.method for m in uas.received if hasattr(m, "method")][-1] == "BYE"
    # The caller's BYE reached the UAC node (it records any message it gets).
    assert any(getattr(m, "method", "") == "BYE" for m in uac.responses)
    changes = dialog_changes(log)
    assert [c.state for c in changes] == ["trying", "early", "confirmed", "ended"]
    assert changes[-1].record["end_reason"] == "timeout"
    assert changes[-1].profiles == {"caller": "x"}
    assert proxy.core.stats.dialogs_timed_out == 1 and len(proxy.core.dialogs) == 0


def test_the_limit_timer_fired_directly_through_proxycore_timer():
    spec = {"max_duration": 2.0}
    clock = Clock()
    net, proxy, uac, (uas,) = setup(tracked(spec), clock=clock)
    clock.net = net
    # Keep the shell from firing the dialog timer by itself.
    run = proxy.execute
    proxy.execute = lambda actions: run([a for a in actions
                                         if not (type(a) is Arm and type(a.key) is DialogTimer)])
    inv = uac.request()
    net.run(until=1)
    uac.ack_2xx(uac.responses[-1], inv)
    net.run(until=1.5)
    key = DialogTimer("call-1", "uac")
    assert proxy.core.timer(key) == []       # not due yet by the clock
    net.run(until=3)
    out = proxy.core.timer(key)
    byes = [a for a in out if type(a) is Transmit and a.data.startswith(b"BYE ")]
    assert sorted((a.host, a.port) for a in byes) == [("127.0.0.1", 5061), ("127.0.0.1", 5071)]
    assert [a.state for a in out if type(a) is DialogChange] == ["ended"]
    assert proxy.core.timer(key) == []       # once only


def test_a_non_record_routed_invite_is_not_tracked():
    net, proxy, uac, _, log = dialog_setup(tracked(rr=False))
    uac.request()
    net.run(until=3)
    assert uac.codes == [100, 180, 200]
    assert dialog_changes(log) == []
    assert not [a for a in log if type(a) is Arm and type(a.key) is DialogTimer]
    assert len(proxy.core.dialogs) == 0


def test_a_rejected_call_ends_its_dialog():
    net, proxy, uac, _, log = dialog_setup(tracked({"max_duration": 5}), uas_scripts=((180, 486),))
    uac.request()
    net.run(until=3)
    changes = dialog_changes(log)
    assert [c.state for c in changes] == ["trying", "early", "ended"]
    assert changes[-1].record["end_reason"] == "rejected"
    assert not [a for a in log if type(a) is Arm and type(a.key) is DialogTimer]
    assert len(proxy.core.dialogs) == 0


def test_dialog_without_record_route_still_record_routes_and_tracks():
    net, proxy, uac, (uas,), log = dialog_setup(tracked({"profiles": {"caller": "alice"}}, rr=False))
    uac.request()
    net.run(until=3)
    assert invites(uas)[0].header("record-route") == OUR_RR
    assert uac.responses[-1].header("record-route") == OUR_RR
    changes = dialog_changes(log)
    assert [c.state for c in changes] == ["trying", "early", "confirmed"]
    assert [c.profiles for c in changes] == [{"caller": "alice"}] * 3


# ------------------------------------ 6. REGISTER through us as outbound proxy
def test_register_for_our_address_through_us_as_outbound_proxy_keeps_its_request_uri():
    seen = []

    def router(hook, event):
        seen.append((event["method"], event["ruri"], event["in_dialog"]))
        return Decision(verb="reply", code=200)

    net, proxy, uac, _ = setup(router)
    log = recording(proxy)
    uac.request("REGISTER", ruri="sip:127.0.0.1", headers=[("route", OUR_RR)])
    net.run(until=2)
    assert seen == [("REGISTER", "sip:127.0.0.1", False)]
    (consult,) = [a for a in log if type(a) is Consult]
    assert consult.request.header("route") is None  # our Route was taken off
    assert uac.codes == [200]


# ------------------------------------------------------- more on groups
def test_a_target_on_a_transport_we_lack_fails_at_once_and_the_next_group_starts():
    router = deciding(lambda e: Decision(verb="relay", branches=[
        [Target(UAS0, dest=("tcp", "127.0.0.1", 5071))], [Target(UAS1)]]))
    net, proxy, uac, uases = setup(router, uas_scripts=((180, 200), (180, 200)))
    uac.request()
    net.run(until=3)
    assert uases[0].received == []
    assert len(invites(uases[1])) == 1
    assert uac.codes == [100, 180, 200]


def test_the_per_branch_timeout_moves_on_to_the_next_group():
    router = deciding(lambda e: Decision(verb="relay", timeout=2, branches=[[Target(UAS0)], [Target(UAS1)]]))
    net, proxy, uac, uases = setup(router, uas_scripts=((180,), (180, 200)))
    uac.request()
    net.run(until=10)
    assert len(cancels(uases[0])) == 1
    start_b = min(t for t, s, d, line in net.trace if d == ("127.0.0.1", 5072))
    assert start_b >= 2
    assert finals(uac) == [200]


def test_cancel_stops_the_groups_still_waiting():
    router = deciding(lambda e: Decision(verb="relay", branches=[[Target(UAS0)], [Target(UAS1)]]))
    net, proxy, uac, uases = setup(router, uas_scripts=((180,), (180, 200)))
    inv = uac.request()
    net.run(until=1)
    cancel = inv.copy()
    cancel.method = "CANCEL"
    cancel.set_header("cseq", "1 CANCEL")
    cancel.cseq_method = "CANCEL"
    net.send(uac.addr, PROXY, cancel.serialize())
    net.run(until=5)
    assert sorted((r.cseq_method, r.status) for r in uac.responses if r.status >= 200) == [
        ("CANCEL", 200), ("INVITE", 487)]
    assert uases[1].received == []


def test_a_6xx_ends_the_search_across_groups():
    router = deciding(lambda e: Decision(verb="relay", branches=[
        [Target(UAS0), Target(UAS1)], [Target(UAS2)]]))
    net, proxy, uac, uases = setup(router, uas_scripts=((180,), (603,), (180, 200)))
    uac.request()
    net.run(until=5)
    assert finals(uac) == [603]
    assert len(cancels(uases[0])) == 1
    assert uases[2].received == []


# ------------------------------------------------------- more on dialogs
def _cancel(net, uac, inv):
    cancel = inv.copy()
    cancel.method = "CANCEL"
    cancel.set_header("cseq", "1 CANCEL")
    cancel.cseq_method = "CANCEL"
    net.send(uac.addr, PROXY, cancel.serialize())


def test_a_cancelled_call_ends_its_dialog_as_cancelled():
    net, proxy, uac, _, log = dialog_setup(tracked({"max_duration": 60}), uas_scripts=((180,),))
    inv = uac.request()
    net.run(until=1)
    _cancel(net, uac, inv)
    net.run(until=3)
    changes = dialog_changes(log)
    assert [c.state for c in changes] == ["trying", "early", "ended"]
    assert changes[-1].record["end_reason"] == "cancelled"
    assert len(proxy.core.dialogs) == 0


def test_a_bye_from_the_callee_ends_the_dialog():
    net, proxy, uac, (uas,), log = dialog_setup(tracked())
    inv = uac.request()
    net.run(until=1)
    uac.ack_2xx(uac.responses[-1], inv)
    net.run(until=1.5)
    attach(net, 5061, UAS(tag="uac"))   # the caller now answers requests
    bye = Request("BYE", "sip:alice@127.0.0.1:5061", [
        ("via", "SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-calleebye;rport"),
        ("max-forwards", "70"), ("route", OUR_RR),
        ("from", uac.responses[-1].header("to")), ("to", inv.header("from")),
        ("call-id", "call-1"), ("cseq", "1 BYE")])
    net.send(("127.0.0.1", 5071), PROXY, bye.serialize())
    net.run(until=3)
    assert [m.status for m in uas.received if hasattr(m, "status")] == [200]
    changes = dialog_changes(log)
    assert [c.state for c in changes] == ["trying", "early", "confirmed", "ended"]
    assert changes[-1].record["end_reason"] == "bye"


def test_a_bye_challenged_with_407_does_not_end_the_dialog():
    class Challenging(UAS):
        def receive(self, data, src):
            from host.sip.message import make_response
            from host.sip.parser import parse_message
            msg = parse_message(data)
            if getattr(msg, "method", "") == "BYE":
                self.received.append(msg)
                self._send(make_response(msg, 407, to_tag=self.tag), src)
                return
            super().receive(data, src)

    net, proxy, uac, _, log = dialog_setup(tracked())
    attach(net, 5071, Challenging(tag="uas0"))
    inv = uac.request()
    net.run(until=1)
    uac.ack_2xx(uac.responses[-1], inv)
    bye_from_caller(net, uac)
    net.run(until=3)
    assert 407 in [r.status for r in uac.responses]
    assert [c.state for c in dialog_changes(log)] == ["trying", "early", "confirmed"]
    assert len(proxy.core.dialogs) == 1


def test_a_481_to_an_in_dialog_request_ends_the_dialog():
    class Gone(UAS):
        def receive(self, data, src):
            from host.sip.message import make_response
            from host.sip.parser import parse_message
            msg = parse_message(data)
            if getattr(msg, "method", "") == "INFO":
                self.received.append(msg)
                self._send(make_response(msg, 481, to_tag=self.tag), src)
                return
            super().receive(data, src)

    net, proxy, uac, _, log = dialog_setup(tracked())
    attach(net, 5071, Gone(tag="uas0"))
    inv = uac.request()
    net.run(until=1)
    uac.ack_2xx(uac.responses[-1], inv)
    send_request(net, uac, "INFO", ruri="sip:uas@127.0.0.1:5071", to_tag="uas0", cseq=2,
                 branch="z9hG4bK-info", headers=[("route", OUR_RR)])
    net.run(until=3)
    changes = dialog_changes(log)
    assert [c.state for c in changes] == ["trying", "early", "confirmed", "ended"]
    assert changes[-1].record["end_reason"] == "481"


def test_a_tracked_invite_answered_by_the_proxy_ends_its_dialog():
    net, proxy, uac, (uas,), log = dialog_setup(deciding(
        lambda e: Decision(verb="relay", branches=[[]], dialog={})))
    uac.request()
    net.run(until=3)
    assert finals(uac) == [480]
    assert [c.state for c in dialog_changes(log)] == ["trying", "ended"]
    assert len(proxy.core.dialogs) == 0


def test_a_full_dialog_table_refuses_a_limited_call_and_relays_a_plain_one_untracked():
    from host.sip.dialogs import DialogTable
    for spec, codes in (({"max_duration": 10}, [100, 503]), (None, [100, 180, 200])):
        net, proxy, uac, (uas,), log = dialog_setup(tracked(spec))
        proxy.core.dialogs = DialogTable(lambda: net.now, max_dialogs=0)
        uac.request()
        net.run(until=3)
        assert uac.codes == codes, spec
        assert dialog_changes(log) == []
        assert proxy.core.stats.dialogs_untracked == 1
    assert uac.responses[-1].header("record-route") == OUR_RR


def test_the_limit_bye_to_a_caller_behind_an_upstream_proxy_follows_its_record_route():
    net, proxy, uac, (uas,), log = dialog_setup(tracked({"max_duration": 1.0}))
    inv = send_request(net, uac, headers=[("record-route", "<sip:127.0.0.1:5090;lr>")])
    net.run(until=0.5)
    uac.ack_2xx(uac.responses[-1], inv)
    net.run(until=3)
    byes = [a for a in log if type(a) is Transmit and a.data.startswith(b"BYE ")]
    to_caller = [a for a in byes if (a.host, a.port) == ("127.0.0.1", 5090)]
    assert len(byes) >= 2 and to_caller
    assert b"Route: <sip:127.0.0.1:5090;lr>" in to_caller[0].data
    assert to_caller[0].data.startswith(b"BYE sip:alice@127.0.0.1:5061 SIP/2.0")


def test_a_natted_re_invite_in_dialog_has_its_contact_fixed_on_the_route_set():
    net, proxy, uac, (uas,), log = dialog_setup(tracked())
    inv = uac.request()
    net.run(until=1)
    uac.ack_2xx(uac.responses[-1], inv)
    send_request(net, uac, "INVITE", ruri="sip:uas@127.0.0.1:5071", to_tag="uas0", cseq=2,
                 branch="z9hG4bK-reinv", via_sent_by="10.0.0.5:5062",
                 contact="<sip:alice@10.0.0.5:5062>", headers=[("route", OUR_RR)])
    net.run(until=3)
    reinv = invites(uas)[-1]
    assert reinv.to_tag == "uas0" and reinv.header("contact") == "<sip:alice@127.0.0.1:5061>"
    assert len(proxy.events) == 1   # the re-INVITE followed the route set, no consult


# ------------------------------------------------------------ found bugs
def test_a_request_retargeted_back_to_us_is_a_spiral_not_a_loop():
    def router(hook, event):
        if event["ruri"] == "sip:bob@example.com":
            return Decision(verb="relay", targets=["sip:carol@127.0.0.1:5060"])
        return Decision(verb="relay", targets=[UAS0])

    net, proxy, uac, (uas,) = setup(router)
    uac.request()
    net.run(until=5)
    assert [e["ruri"] for e in proxy.events] == ["sip:bob@example.com", "sip:carol@127.0.0.1:5060"]
    assert finals(uac) == [200]
    assert len(invites(uas)) == 1


def test_a_request_relayed_to_us_unchanged_every_time_is_still_a_loop():
    """The other side of the spiral test: whatever the hash covers, a route
    that keeps sending the same request back to us ends in 482."""
    net, proxy, uac, (uas,) = setup(deciding(
        lambda e: Decision(verb="relay", targets=["sip:carol@127.0.0.1:5060"])))
    uac.request()
    net.run(until=5)
    assert 482 in uac.codes and uas.received == []


class ContactUAS(UAS):
    """A UAS whose responses carry the Contact `contact`, whatever it is."""

    def __init__(self, contact, *args, **kw):
        super().__init__(*args, **kw)
        self.contact = contact

    def _send(self, resp, src):
        if resp.has_header("contact"):
            resp.set_header("contact", self.contact)
        super()._send(resp, src)


def test_a_callee_contact_we_cannot_route_to_does_not_stop_the_limit():
    def router(hook, event):
        target = UAS0 if event["call_id"] == "call-1" else UAS1
        return Decision(verb="relay", targets=[target], dialog={"max_duration": 1.0})

    clock = Clock()
    net, proxy, uac, uases = setup(router, uas_scripts=((180, 200), (180, 200)), clock=clock)
    clock.net = net
    attach(net, 5071, ContactUAS("<foo:bar>", (180, 200), tag="uas0"))
    run = proxy.execute
    proxy.execute = lambda actions: run([a for a in actions
                                         if not (type(a) is Arm and type(a.key) is DialogTimer)])
    uac.request(call_id="call-1", branch="z9hG4bK-c1")
    net.run(until=0.5)
    uac.request(call_id="call-2", branch="z9hG4bK-c2")
    net.run(until=1)
    assert finals(uac) == [200, 200]
    assert len(proxy.core.dialogs) == 2
    net.run(until=3)   # both past their limit
    out = proxy.core.timer(DialogTimer("call-2", "uac"))
    ended = sorted(a.record["call_id"] for a in out if type(a) is DialogChange and a.state == "ended")
    assert ended == ["call-1", "call-2"]
    assert len(proxy.core.dialogs) == 0
    callers = [a for a in out if type(a) is Transmit and a.data.startswith(b"BYE ") and a.port == 5061]
    assert len(callers) == 2   # the caller of each call is told it is over


def test_a_forked_call_is_confirmed_with_the_winning_to_tag_and_its_bye_ends_it():
    net, proxy, uac, uases, log = dialog_setup(tracked(targets=(UAS0, UAS1)),
                                               uas_scripts=((180,), (180, 200)))
    inv = uac.request()
    net.run(until=1)
    changes = dialog_changes(log)
    assert [c.state for c in changes] == ["trying", "early", "confirmed"]
    assert changes[-1].record["to_tag"] == "uas1"
    assert len(cancels(uases[0])) == 1
    uac.ack_2xx(uac.responses[-1], inv)
    send_request(net, uac, "BYE", ruri="sip:uas@127.0.0.1:5072", to_tag="uas1", cseq=2,
                 branch="z9hG4bK-bye2", headers=[("route", OUR_RR)])
    net.run(until=3)
    assert [c.state for c in dialog_changes(log)][-1] == "ended"
    assert len(proxy.core.dialogs) == 0
