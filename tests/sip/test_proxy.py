"""Whole call flows through the sans-IO proxy core (RFC 3261 §16), no sockets."""

from callflow import PROXY, setup

from host.routes.verbs import Decision, Recorder
from host.sip.parser import parse_message

UAS0 = "sip:bob@127.0.0.1:5071"
UAS1 = "sip:bob@127.0.0.1:5072"
UAS2 = "sip:bob@127.0.0.1:5073"


def relay(*targets, mode="parallel", timeout=None, rr=True):
    def router(hook, event):
        rec = Recorder(hook)
        if rr:
            rec.record_route()
        rec.relay(list(targets), {"mode": mode, **({"timeout": timeout} if timeout else {})})
        return rec.decision
    return router


def test_invite_relayed_with_100_trying_record_route_and_via():
    net, proxy, uac, (uas,) = setup(relay(UAS0))
    uac.request()
    net.run(until=5)
    assert uac.codes == [100, 180, 200]
    inv = uas.received[0]
    assert inv.uri == UAS0
    vias = inv.header_values("via")
    assert len(vias) == 2 and vias[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK")
    assert "received=127.0.0.1" in vias[1] and "rport=5061" in vias[1]
    assert inv.header("record-route") == "<sip:127.0.0.1:5060;lr>"
    assert inv.header("max-forwards") == "69"
    # Our Via is gone from what the UAC gets back.
    assert uac.responses[-1].header_values("via") == [vias[1]]


def test_ack_and_bye_follow_the_route_set_without_the_route():
    calls = []

    def router(hook, event):
        calls.append(event["method"])
        return relay(UAS0)(hook, event)

    net, proxy, uac, (uas,) = setup(router)
    inv = uac.request()
    net.run(until=5)
    ok = uac.responses[-1]
    uac.ack_2xx(ok, inv)
    net.run(until=6)
    acks = [m for m in uas.received if getattr(m, "method", "") == "ACK"]
    assert len(acks) == 1 and acks[0].header("route") is None
    assert calls == ["INVITE"]  # the in-dialog ACK never reached the route


def test_in_dialog_request_without_our_route_goes_to_the_route_marked_in_dialog():
    seen = []

    def router(hook, event):
        seen.append((event["method"], event["in_dialog"]))
        rec = Recorder(hook)
        rec.relay(UAS0)
        return rec.decision

    net, proxy, uac, (uas,) = setup(router)
    uac.request("BYE", ruri="sip:127.0.0.1:5060", to_tag="uas0", cseq=2, branch="z9hG4bK-bye")
    net.run(until=5)
    assert seen == [("BYE", True)]
    assert uac.codes == [200]


def test_uas_busy_is_relayed_and_non_2xx_ack_absorbed():
    net, proxy, uac, (uas,) = setup(relay(UAS0), uas_scripts=((180, 486),))
    uac.request()
    net.run(until=5)
    assert uac.codes == [100, 180, 486]
    # The proxy ACKed the 486 downstream itself (hop by hop, §17.1.1.3).
    acks = [m for m in uas.received if getattr(m, "method", "") == "ACK"]
    assert len(acks) == 1 and acks[0].header("cseq") == "1 ACK"
    # The UAC's own ACK for the 486 stopped at the proxy.
    assert ("127.0.0.1", 5061) in [t[1] for t in net.trace if t[3].startswith("ACK")]


def test_cancel_before_answer_gives_200_and_487():
    net, proxy, uac, (uas,) = setup(relay(UAS0), uas_scripts=((180,),))
    inv = uac.request()
    net.run(until=1)
    cancel = inv.copy()
    cancel.method = "CANCEL"
    cancel.headers = [h for h in cancel.headers if h[0] != "contact"]
    cancel.set_header("cseq", "1 CANCEL")
    cancel.cseq_method = "CANCEL"
    net.send(uac.addr, PROXY, cancel.serialize())
    net.run(until=3)
    by_method = {(r.cseq_method, r.status) for r in uac.responses}
    assert ("CANCEL", 200) in by_method and ("INVITE", 487) in by_method
    assert any(getattr(m, "method", "") == "CANCEL" for m in uas.received)


def test_parallel_fork_first_2xx_wins_and_others_are_cancelled():
    net, proxy, uac, uases = setup(relay(UAS0, UAS1, UAS2),
                                   uas_scripts=((180,), (180, 200), (180,)))
    uac.request()
    net.run(until=5)
    assert [c for c in uac.codes if c >= 200] == [200]
    assert any(getattr(m, "method", "") == "CANCEL" for m in uases[0].received)
    assert any(getattr(m, "method", "") == "CANCEL" for m in uases[2].received)
    assert not any(getattr(m, "method", "") == "CANCEL" for m in uases[1].received)


def test_best_response_prefers_6xx_and_6xx_cancels_other_branches():
    net, proxy, uac, uases = setup(relay(UAS0, UAS1), uas_scripts=((180,), (603,)))
    uac.request()
    net.run(until=5)
    assert [c for c in uac.codes if c >= 200] == [603]
    assert any(getattr(m, "method", "") == "CANCEL" for m in uases[0].received)


def test_best_response_lowest_class_and_503_becomes_500():
    """§16.7 step 6: the lowest class wins whichever branch returns it; within
    4xx, 401/407/415/420/484 beat the others (here 484 over 486), in either
    arrival order; a 503 forwarded upstream becomes 500."""
    for scripts, best in ((((503,), (486,)), 486), (((486,), (503,)), 486),
                          (((486,), (484,)), 484), (((484,), (486,)), 484)):
        net, proxy, uac, uases = setup(relay(UAS0, UAS1), uas_scripts=scripts)
        uac.request()
        net.run(until=5)
        assert [c for c in uac.codes if c >= 200] == [best], scripts
    net, proxy, uac, uases = setup(relay(UAS0), uas_scripts=((503,),))
    uac.request()
    net.run(until=5)
    assert [c for c in uac.codes if c >= 200] == [500]


def test_serial_failover_through_on_failure():
    def router(hook, event):
        rec = Recorder(hook)
        if hook == "on_request":
            rec.set_vars({"tried": 1})
            rec.relay(UAS0)
        else:
            assert event["reply"]["code"] == 486
            assert event["vars"] == {"tried": 1}
            rec.relay(UAS1)
        return rec.decision

    net, proxy, uac, uases = setup(router, uas_scripts=((486,), (180, 200)), hooks={"on_request", "on_failure"})
    uac.request()
    net.run(until=5)
    assert [c for c in uac.codes if c >= 200] == [200]
    assert [e["hook"] for e in proxy.events] == ["on_request", "on_failure"]


def test_serial_mode_tries_targets_in_order():
    net, proxy, uac, uases = setup(relay(UAS0, UAS1, mode="serial"), uas_scripts=((500,), (180, 200)))
    uac.request()
    net.run(until=5)
    assert [c for c in uac.codes if c >= 200] == [200]
    first_uas1 = min(t for t, s, d, line in net.trace if d == ("127.0.0.1", 5072))
    final_uas0 = min(t for t, s, d, line in net.trace if s == ("127.0.0.1", 5071) and "500" in line)
    assert final_uas0 <= first_uas1


def test_per_branch_timeout_cancels_ringing_branch_and_moves_on():
    net, proxy, uac, uases = setup(relay(UAS0, UAS1, mode="serial", timeout=2), uas_scripts=((180,), (180, 200)))
    uac.request()
    net.run(until=10)
    assert [c for c in uac.codes if c >= 200] == [200]
    assert any(getattr(m, "method", "") == "CANCEL" for m in uases[0].received)


def test_no_answer_at_all_gives_408_after_timer_b():
    net, proxy, uac, (uas,) = setup(relay(UAS0), uas_scripts=((),))
    net.drop = lambda src, dst, data: dst == ("127.0.0.1", 5071)
    uac.request()
    net.run(until=40)
    assert [c for c in uac.codes if c >= 200] == [408]
    assert not proxy.core.client_txns  # nothing leaks


def test_route_reply_redirect_and_drop():
    def replying(hook, event):
        rec = Recorder(hook)
        rec.reply(403, "Go Away", [["X-Why", "test"]])
        return rec.decision

    net, proxy, uac, _ = setup(replying)
    uac.request()
    net.run(until=2)
    assert uac.codes == [100, 403]
    assert uac.responses[-1].reason == "Go Away" and uac.responses[-1].header("x-why") == "test"
    assert uac.responses[-1].to_tag

    def redirecting(hook, event):
        rec = Recorder(hook)
        rec.redirect(["sip:a@1.2.3.4", "sip:b@5.6.7.8"])
        return rec.decision

    net, proxy, uac, _ = setup(redirecting)
    uac.request("MESSAGE")
    net.run(until=2)
    assert uac.codes == [302]
    assert uac.responses[-1].header_values("contact") == ["<sip:a@1.2.3.4>", "<sip:b@5.6.7.8>"]

    def dropping(hook, event):
        rec = Recorder(hook)
        rec.drop()
        return rec.decision

    net, proxy, uac, _ = setup(dropping)
    uac.request("MESSAGE")
    net.send(uac.addr, PROXY, uac.sent[0].serialize(), delay=0.5)  # a retransmission
    net.run(until=60)
    assert uac.codes == [] and len(proxy.events) == 1
    assert not proxy.core.server_txns  # forgotten after 64*T1


def test_edits_are_applied_to_the_relayed_request():
    def router(hook, event):
        rec = Recorder(hook)
        rec.set_ruri(UAS1)
        rec.add_header("X-Added", "1")
        rec.set_header("Subject", "changed")
        rec.remove_header("X-Gone")
        return rec.decision

    net, proxy, uac, uases = setup(router, uas_scripts=((200,), (200,)))
    uac.request(headers=[("subject", "orig"), ("x-gone", "bye")])
    net.run(until=3)
    got = uases[1].received[0]
    assert got.uri == UAS1 and got.header("x-added") == "1"
    assert got.header("subject") == "changed" and got.header("x-gone") is None
    assert got.header("record-route") is None  # not asked for


def test_max_forwards_zero_gives_483_and_loop_gives_482():
    net, proxy, uac, _ = setup(relay(UAS0))
    uac.request(max_forwards=0)
    net.run(until=2)
    assert uac.codes == [483]
    # A request relayed back to ourselves unchanged is a loop.
    net, proxy, uac, _ = setup(relay("sip:bob@127.0.0.1:5060", rr=False))
    uac.request()
    net.run(until=5)
    assert 482 in uac.codes


def test_options_to_the_proxy_itself_is_answered():
    net, proxy, uac, _ = setup(relay(UAS0))
    uac.request("OPTIONS", ruri="sip:127.0.0.1:5060")
    net.run(until=2)
    assert uac.codes == [200]
    assert "INVITE" in uac.responses[0].header("allow")
    assert proxy.events == []


def test_retransmitted_invite_is_absorbed():
    net, proxy, uac, (uas,) = setup(relay(UAS0), uas_scripts=((180,),))
    inv = uac.request()
    net.send(uac.addr, PROXY, inv.serialize(), delay=0.2)
    net.run(until=1)
    invites = [m for m in uas.received if getattr(m, "method", "") == "INVITE"]
    assert len(invites) == 1 and len(proxy.events) == 1
    assert uac.codes.count(180) == 2  # the retransmission got the last provisional again


def test_lost_invite_is_retransmitted_by_timer_a():
    lost = []

    def drop(src, dst, data):
        # Lose the proxy's first two copies of the INVITE.
        if src == PROXY and data.startswith(b"INVITE") and len(lost) < 2:
            lost.append(data)
            return True
        return False

    net, proxy, uac, (uas,) = setup(relay(UAS0))
    net.drop = drop
    uac.request()
    net.run(until=20)
    assert len(lost) == 2 and lost[0] == lost[1]  # retransmissions are byte-identical
    assert uac.codes == [100, 180, 200]
    sent_at = [t for t, s, d, line in net.trace if s == PROXY and line.startswith("INVITE")]
    assert sent_at == [0.0, 0.5, 1.5]  # Timer A: T1, then 2*T1


def test_strict_router_request_uri_is_restored():
    net, proxy, uac, (uas,) = setup(relay(UAS0))
    # A strict router put our URI (no lr) in the Request-URI and the real
    # target as the last Route (§16.4).
    uac.request("BYE", ruri="sip:127.0.0.1:5060", to_tag="x", headers=[("route", f"<{UAS0}>")],
                branch="z9hG4bK-strict")
    net.run(until=3)
    bye = uas.received[0]
    assert bye.uri == UAS0 and bye.header("route") is None


def test_static_relay_mode_uses_next_hop_and_keeps_request_uri():
    net, proxy, uac, (uas,) = setup(relay_to="sip:127.0.0.1:5071")
    uac.request(ruri="sip:service@127.0.0.1:5060")
    net.run(until=3)
    inv = uas.received[0]
    assert inv.uri == "sip:service@127.0.0.1:5060"
    assert inv.header("record-route") == "<sip:127.0.0.1:5060;lr>"
    assert uac.codes == [100, 180, 200]


def test_bad_request_gets_400_and_unparseable_response_is_dropped():
    net, proxy, uac, _ = setup(relay(UAS0))
    bad = (b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-bad\r\n"
           b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: bad1\r\nCSeq: 1 REGISTER\r\n\r\n")
    net.send(uac.addr, PROXY, bad)
    net.send(uac.addr, PROXY, b"SIP/2.0 200 OK\r\n\r\n")
    net.run(until=1)
    assert uac.codes == [400]
    stats = proxy.core.stats
    assert stats.bad_replied == 1 and stats.bad_dropped == 1


def test_unsupported_version_and_scheme():
    net, proxy, uac, _ = setup(relay(UAS0))
    base = ("{m} {u} {v}\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}\r\nFrom: <sip:a@x>;tag=1\r\n"
            "To: <sip:b@y>\r\nCall-ID: v{n}\r\nCSeq: 1 {m}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    net.send(uac.addr, PROXY, base.format(m="OPTIONS", u="sip:b@y", v="SIP/7.0", n=1).encode())
    net.send(uac.addr, PROXY, base.format(m="OPTIONS", u="foo:b@y", v="SIP/2.0", n=2).encode())
    net.run(until=1)
    assert sorted(uac.codes) == [416, 505]


def test_transactions_are_cleaned_up_after_a_call():
    net, proxy, uac, (uas,) = setup(relay(UAS0))
    inv = uac.request()
    net.run(until=2)
    uac.ack_2xx(uac.responses[-1], inv)
    net.run(until=100)
    assert not proxy.core.server_txns and not proxy.core.client_txns


def test_a_relay_target_that_is_not_a_uri_answers_400():
    def router(hook, event):
        return Decision(verb="relay", targets=["not a uri"])

    net, proxy, uac, _ = setup(router)
    uac.request()
    net.run(until=2)
    assert uac.codes == [100, 400]


def test_parse_of_relayed_bytes_roundtrips():
    net, proxy, uac, (uas,) = setup(relay(UAS0))
    uac.request()
    net.run(until=2)
    raw = uas.received[0].serialize()
    assert parse_message(raw).call_id == "call-1"


def test_on_reply_can_swallow_provisionals_and_edit_replies_in_order():
    def router(hook, event):
        rec = Recorder(hook)
        if hook == "on_request":
            rec.relay(UAS0)
        elif event["reply"]["code"] == 180:
            rec.drop()
        else:
            rec.add_header("X-Seen", str(event["reply"]["code"]))
        return rec.decision

    net, proxy, uac, _ = setup(router, uas_scripts=((180, 183, 200),), hooks={"on_request", "on_reply"})
    uac.request()
    net.run(until=3)
    assert uac.codes == [100, 183, 200]
    assert [r.header("x-seen") for r in uac.responses[1:]] == ["183", "200"]
    assert [e["reply"]["code"] for e in proxy.events[1:]] == [180, 183, 200]


def test_route_answers_after_cancel_are_ignored():
    pending = []

    def router(hook, event):
        pending.append(event)
        return Recorder(hook).decision  # "no decision" -> relay

    net, proxy, uac, (uas,) = setup(router, uas_scripts=((180,),))
    # Hold the decision: answer the CANCEL while the route is still thinking.
    held = []
    proxy.execute = (lambda orig: (lambda actions: held.extend(actions) if any(
        type(a).__name__ == "Consult" for a in actions) else orig(actions)))(proxy.execute)
    inv = uac.request()
    net.run(until=0.5)
    cancel = inv.copy()
    cancel.method = "CANCEL"
    cancel.set_header("cseq", "1 CANCEL")
    cancel.cseq_method = "CANCEL"
    net.send(uac.addr, PROXY, cancel.serialize())
    net.run(until=1)
    assert sorted(c for c in uac.codes if c >= 200) == [200, 487]
    consult = next(a for a in held if type(a).__name__ == "Consult")
    late = proxy.core.decided(consult.token, Decision(), "route", frozenset())
    assert late == []  # nothing is relayed for a cancelled request
    assert uas.received == []


def test_a_bad_route_header_gets_400_and_leaves_no_transaction():
    net, proxy, uac, _ = setup(relay(UAS0))
    uac.request("BYE", ruri="sip:bob@example.com", to_tag="x", headers=[("route", "<foo:bar>")],
                branch="z9hG4bK-badroute")
    net.run(until=40)
    assert uac.codes[-1] in (400, 416)
    assert not proxy.core.server_txns and not proxy.core.client_txns


def test_draining_refuses_new_calls_with_503_and_lets_calls_in_progress_finish():
    net, proxy, uac, (uas,) = setup(relay(UAS0), uas_scripts=((180, 200),))
    uac.request()
    net.run(until=0.005)  # the INVITE is in progress, not answered yet
    assert proxy.core.unanswered() == 1
    proxy.core.draining = True
    uac.request(call_id="call-2", branch="z9hG4bK-new")
    net.run(until=3)
    by_call = {(r.call_id, r.status) for r in uac.responses}
    assert ("call-1", 200) in by_call and ("call-2", 503) in by_call
    refused = next(r for r in uac.responses if r.call_id == "call-2")
    assert refused.header("retry-after") == "5"
    assert proxy.core.unanswered() == 0


def test_transport_error_on_the_only_branch_answers_500_to_the_caller():
    net, proxy, uac, _ = setup(relay(UAS0))
    net.drop = lambda src, dst, data: dst == ("127.0.0.1", 5071)
    uac.request("MESSAGE")
    net.run(until=0.001)
    # The transport reports it could not send the relayed request (§16.9: a 503 of that branch).
    (txn,) = [t for t in proxy.core.client_txns.values() if t.request.method == "MESSAGE"]
    proxy.execute(proxy.core.transport_error(txn))
    net.run(until=1)
    assert uac.codes == [500]  # a 503 is never passed upstream as is (§16.7 step 6)
    assert uac.responses[0].via.branch == "z9hG4bK-uac1"  # the caller's own Via is kept
