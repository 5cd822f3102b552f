"""What the management API asks of the sans-IO core: ending a call on an
operator's word (`ProxyCore.end_dialog`) and the per-kind counters the
metrics read (requests by method, replies by class, retransmissions,
stateless answers). Whole call flows through tests/sip/callflow.py."""

from callflow import PROXY, setup

from host.sip.actions import DialogChange
from host.sip.decision import Decision
from host.sip.proxy import Transmit

UAS0 = "sip:bob@127.0.0.1:5071"


def tracked_router(hook, event):
    if hook != "on_request":
        return Decision()
    return Decision(verb="relay", targets=[UAS0], edits=[("record_route",)], dialog={})


def answered_call():
    net, proxy, uac, (uas,) = setup(tracked_router)
    log = []
    run = proxy.execute

    def execute(actions):
        actions = list(actions)
        log.extend(actions)
        run(actions)

    proxy.execute = execute
    inv = uac.request()
    net.run(until=1)
    uac.ack_2xx(uac.responses[-1], inv)
    net.run(until=1.5)
    return net, proxy, uac, uas, log


def test_end_dialog_sends_a_bye_each_way_and_ends_it_as_operator():
    net, proxy, uac, uas, log = answered_call()
    core = proxy.core
    (dialog,) = core.dialogs.active()
    out = core.end_dialog(dialog.id)
    byes = [a for a in out if type(a) is Transmit and a.data.startswith(b"BYE ")]
    assert sorted((a.host, a.port) for a in byes) == [("127.0.0.1", 5061), ("127.0.0.1", 5071)]
    ended = [a for a in out if type(a) is DialogChange]
    assert [c.state for c in ended] == ["ended"] and ended[0].record["end_reason"] == "operator"
    assert len(core.dialogs) == 0 and core.stats.dialogs_ended_by_operator == 1
    assert core.end_dialog(dialog.id) is None        # once only


def test_end_dialog_of_an_unknown_id_is_none():
    _, proxy, *_ = answered_call()
    assert proxy.core.end_dialog("0" * 20) is None
    assert len(proxy.core.dialogs) == 1


def test_counters_by_method_and_class_follow_the_call():
    net, proxy, uac, uas, log = answered_call()
    stats = proxy.core.stats.as_dict()
    assert stats["requests"] == {"INVITE": 1, "ACK": 1}
    # From the UAS: 180 and 200; both forwarded upstream, with our own 100.
    assert stats["replies"]["1xx"] == 1 and stats["replies"]["2xx"] == 1
    assert stats["forwarded_replies"]["2xx"] == 1 and stats["forwarded_replies"]["1xx"] >= 1


def test_a_retransmitted_request_is_counted_and_a_483_is_a_stateless_answer():
    net, proxy, uac, (uas,) = setup(tracked_router)
    inv = uac.request()
    net.send(uac.addr, PROXY, inv.serialize())     # the same INVITE again
    net.run(until=1)
    assert proxy.core.stats.retransmissions == 1
    uac.request(call_id="call-mf0", branch="z9hG4bK-mf0", max_forwards=0)
    net.run(until=2)
    assert proxy.core.stats.stateless.get(483) == 1
