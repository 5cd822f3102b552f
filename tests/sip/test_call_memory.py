"""Memory of the proxy core is bounded by the calls in progress (issue 7 §5).

A finished call leaves nothing behind: no timer that still names it (timer
keys are plain ids, and the core cancels what it no longer needs), no table
entry, and no reference cycle for the collector: its objects are freed by
reference counting the moment its last transaction ends. And the server
transaction table has a cap beyond which new requests get a stateless 503.
"""

import gc
import tracemalloc
import uuid
import weakref

import pytest
from callflow import PROXY, UAC, UAS, Network, ProxyNode

from host.sip import transaction as tx
from host.sip.context import Branch, ResponseContext
from host.sip.message import Request
from host.sip.parser import parse_message
from host.sip.proxy import Arm, Disarm, ProxyCore, Transmit
from host.sip.timers import TimerConfig

UAS_ADDR = ("127.0.0.1", 5071)
UAS_URI = "sip:bob@127.0.0.1:5071"
CALL_KINDS = (ResponseContext, Branch, tx.ServerTransaction, tx.ClientTransaction)


class TimedProxy(ProxyNode):
    """The proxy core with timers kept the way the shell keeps them
    (host/shell/timers.py): an Arm is pending until it fires or a Disarm
    cancels it; a cancelled entry stays queued but drops its key and never
    reaches the core."""

    def __init__(self, **kw):
        super().__init__(relay_to=UAS_URI, **kw)
        self.pending: dict = {}   # key -> its queue entry, [key]
        self.armed: list = []     # every key ever armed (only where asked)
        self.keep_keys = True

    def execute(self, actions):
        for a in actions:
            if isinstance(a, Arm):
                entry = self.pending[a.key] = [a.key]
                if self.keep_keys:
                    self.armed.append(a.key)
                self.net.at(a.delay, lambda entry=entry: self._fire(entry))
            elif isinstance(a, Disarm):
                entry = self.pending.pop(a.key, None)
                if entry is not None:
                    entry[0] = None
            else:
                super().execute([a])

    def _fire(self, entry):
        key = entry[0]
        if key is not None:
            del self.pending[key]
            self.execute(self.core.timer(key))


def network(uas_script=(180, 200), **kw):
    net = Network()
    proxy = TimedProxy(**kw)
    net.attach(PROXY, proxy)
    uas = UAS(uas_script, tag="uas0")
    net.attach(UAS_ADDR, uas)
    return net, proxy, uas


def add_uac(net, port=5061):
    uac = UAC()
    net.attach(("127.0.0.1", port), uac)
    return uac


def cancel_of(inv: Request) -> bytes:
    cancel = inv.copy()
    cancel.method = "CANCEL"
    cancel.headers = [h for h in cancel.headers if h[0] != "contact"]
    cancel.set_header("cseq", "1 CANCEL")
    cancel.cseq_method = "CANCEL"
    return cancel.serialize()


def answered(net, uac, call_id, bye=True):
    """INVITE/180/200/ACK (and BYE/200) from `uac`, from the current time on."""
    inv = uac.request(call_id=call_id, branch=f"z9hG4bK-{call_id}")

    def ack_and_bye():
        ok = next(r for r in uac.responses if r.status == 200 and r.cseq_method == "INVITE")
        uac.ack_2xx(ok, inv)
        if bye:
            uac.request("BYE", ruri="sip:uas@127.0.0.1:5071", call_id=call_id, cseq=2,
                        branch=f"z9hG4bK-{call_id}-bye", to_tag="uas0",
                        headers=[("route", "<sip:127.0.0.1:5060;lr>")])
    net.at(1.0, ack_and_bye)
    return inv


# Each scenario: (name, uas script, what the caller does, virtual seconds to
# let every transaction end, extra core options). 64*T1 = 32 s is the longest
# a transaction lingers after its final answer (Timers B, D, H, J, L, M).
def _answered(net, uac):
    answered(net, uac, "c-answered")


def _busy(net, uac):
    uac.request(call_id="c-busy")


def _caller_cancels(net, uac):
    inv = uac.request(call_id="c-cancel")
    net.at(1.0, lambda: net.send(uac.addr, PROXY, cancel_of(inv)))


def _unanswered(net, uac):
    net.drop = lambda src, dst, data: dst == UAS_ADDR  # a dead next hop
    uac.request(call_id="c-dead")


def _rings_past_timer_c_and_ignores_cancel(net, uac):
    net.drop = lambda src, dst, data: dst == UAS_ADDR and data.startswith(b"CANCEL")
    uac.request(call_id="c-ringing")


SCENARIOS = [
    ("answered", (180, 200), _answered, 40, {}),
    ("busy", (180, 486), _busy, 40, {}),
    ("caller CANCEL", (180,), _caller_cancels, 40, {}),
    ("dead next hop (Timer B)", (), _unanswered, 80, {}),
    # Timer C (shortened) fires on a ringing branch; the CANCEL is lost and no
    # final ever comes: 64*T1 later the INVITE client transaction is
    # destroyed (§9.1) instead of waiting in Proceeding forever.
    ("ringing forever", (180,), _rings_past_timer_c_and_ignores_cancel, 120,
     {"timers": TimerConfig(c=10.0)}),
]


def _plain(value) -> bool:
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float))


@pytest.mark.parametrize("name,script,caller,settle,options", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_a_finished_call_leaves_no_timer_no_transaction_and_keys_name_nothing(
        name, script, caller, settle, options):
    net, proxy, uas = network(script, **options)
    uac = add_uac(net)
    caller(net, uac)
    net.run(until=settle)
    assert [r.status for r in uac.responses if r.status >= 200 and r.cseq_method == "INVITE"], \
        "the caller got no final answer"
    core = proxy.core
    assert not core.server_txns and not core.client_txns
    # Nothing pending: Timer C (180 s) was cancelled, not left to run out.
    assert proxy.pending == {}
    # A pending key holds ids, never the call's objects.
    assert proxy.armed and all(_plain(k) for k in proxy.armed), \
        [k for k in proxy.armed if not _plain(k)][:3]


def _call_objects(call_ids):
    # A completed non-INVITE server transaction has let go of its request.
    return [o for o in gc.get_objects()
            if isinstance(o, CALL_KINDS) and o.request is not None and o.request.call_id in call_ids]


def _one_call_without_the_collector(call_id, mid_call):
    """An answered call with gc disabled; `mid_call(core)` runs while it rings."""
    gc.collect()
    gc.disable()
    try:
        net, proxy, uas = network((180, 200))
        uac = add_uac(net)
        answered(net, uac, call_id)
        net.run(until=0.5)
        mid_call(proxy.core)
        net.run(until=40)
        assert not proxy.core.server_txns and not proxy.core.client_txns
    finally:
        gc.enable()


def test_a_finished_call_is_freed_by_reference_counting_alone():
    """No cycle collector needed: with gc disabled, every object of the call
    is gone once its transactions ended, while stale timer entries of the
    call may still be queued (they name it by id only)."""
    call_id = f"refcount-{uuid.uuid4().hex}"

    def mid_call(core):
        # The search finds the call's objects while it is in progress.
        assert {type(o) for o in _call_objects({call_id})} >= set(CALL_KINDS)

    gc.disable()
    try:
        _one_call_without_the_collector(call_id, mid_call)
        assert _call_objects({call_id}) == []
    finally:
        gc.enable()


def test_the_response_context_dies_with_its_last_transaction():
    refs = []

    def mid_call(core):
        (txn,) = core.server_txns.values()
        refs.append(weakref.ref(txn.context))

    gc.disable()
    try:
        _one_call_without_the_collector(f"weakref-{uuid.uuid4().hex}", mid_call)
        assert refs[0]() is None
    finally:
        gc.enable()


def test_many_overlapping_calls_leave_no_memory_allocated_by_the_core():
    """tracemalloc over host/sip: 200 answered calls, 25 ms apart (so ~40 are
    in progress at once, each ringing with Timer C running), allocate nothing
    that outlives them. A first batch of the same shape warms up what is
    kept on purpose (caches, table sizes, the interpreter's free lists)."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        net, proxy, uas = network((180, 200))
        net.trace = _Discard()
        proxy.keep_keys = False
        batch = 200
        uacs = [add_uac(net, 6000 + i) for i in range(2 * batch)]

        def calls(first):
            for i in range(first, first + batch):
                net.at((i - first) * 0.025, lambda i=i: answered(net, uacs[i], f"bulk-{i}", bye=False))
            net.run(until=net.now + batch * 0.025 + 40)
            assert sum(1 for u in uacs[first:first + batch]
                       if any(r.status == 200 for r in u.responses)) == batch
            for u in uacs:
                u.responses.clear(), u.sent.clear()
            uas.received.clear(), uas.answered.clear()
            uas.pending_invite = None
            assert not proxy.core.server_txns and not proxy.core.client_txns
            assert proxy.pending == {}

        def sip_bytes():
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, "*/host/sip/*")])
            return sum(stat.size for stat in snap.statistics("filename"))

        calls(0)
        before = sip_bytes()
        calls(batch)
        grown = sip_bytes() - before
        # One call in progress holds ~11 KB: 200 left behind would be ~2 MB.
        assert grown < 64 * 1024, f"{grown} bytes still held by host/sip after {batch} calls ended"
    finally:
        tracemalloc.stop()
        gc.enable()


class _Discard(list):
    def append(self, item):
        pass


# --------------------------------------------------------------------------
# the cap on server transactions


def _statuses(uac, method="INVITE"):
    return [r.status for r in uac.responses if r.cseq_method == method]


def test_beyond_the_transaction_cap_new_requests_get_a_stateless_503_and_calls_in_progress_go_on():
    net, proxy, uas = network((180,), max_server_transactions=2)
    core = proxy.core
    uac1, uac2, uac3, uac4 = (add_uac(net, p) for p in (5061, 5062, 5063, 5064))
    inv1 = uac1.request(call_id="cap-1", branch="z9hG4bK-cap-1")
    inv2 = uac2.request(call_id="cap-2", branch="z9hG4bK-cap-2")
    net.run(until=0.5)
    assert len(core.server_txns) == 2 and len(uas.received) == 2

    uac3.request(call_id="cap-3", branch="z9hG4bK-cap-3")
    uac3.request("OPTIONS", call_id="cap-3o", branch="z9hG4bK-cap-3o")
    net.run(until=1.0)
    refused = [r for r in uac3.responses if r.status == 503]
    assert [r.cseq_method for r in refused] == ["INVITE", "OPTIONS"]
    assert all(r.header("retry-after") == "32" for r in refused)
    assert _statuses(uac3) == [503]  # stateless: not even a 100 Trying
    assert len(core.server_txns) == 2 and core.stats.overloaded == 2
    # Nothing of the refused requests went on, not even the ACK of the 503.
    assert len(uas.received) == 2

    # A retransmission of a call in progress is still its transaction's.
    net.send(uac1.addr, PROXY, inv1.serialize())
    net.run(until=1.5)
    assert _statuses(uac1) == [100, 180, 180]
    # ... and so is a CANCEL (one per INVITE at most: not capped). The UAS
    # here answers the CANCEL of the last INVITE it got.
    net.send(uac2.addr, PROXY, cancel_of(inv2))
    net.run(until=2.0)
    assert _statuses(uac2, "CANCEL") == [200] and _statuses(uac2) == [100, 180, 487]
    assert core.stats.overloaded == 2

    # Once that call's transactions are over, a new call gets through again.
    net.run(until=40)
    assert len(core.server_txns) == 1
    uac4.request(call_id="cap-4", branch="z9hG4bK-cap-4")
    net.run(until=41)
    assert _statuses(uac4) == [100, 180]


def test_the_cap_has_a_documented_default():
    from host.sip import proxy as proxy_module
    core = ProxyCore([("udp", "127.0.0.1", 5060)], new_id=lambda: "x")
    assert core.max_server_transactions == proxy_module.MAX_SERVER_TRANSACTIONS == 100_000


def test_the_ack_of_a_stateless_answer_is_not_relayed():
    """483 (Max-Forwards 0) is answered without a transaction; its ACK stops here."""
    core = ProxyCore([("udp", "127.0.0.1", 5060)], relay_to=UAS_URI, new_id=lambda: "x")
    invite = (b"INVITE sip:bob@example.com SIP/2.0\r\n"
              b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-mf0;rport\r\n"
              b"Max-Forwards: 0\r\nFrom: <sip:a@x>;tag=f\r\nTo: <sip:bob@example.com>\r\n"
              b"Call-ID: mf0\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    (reply,) = [a for a in core.receive(invite, "udp", ("127.0.0.1", 5061)) if isinstance(a, Transmit)]
    resp = parse_message(reply.data)
    assert resp.status == 483
    ack = (invite.replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
           .replace(b"Max-Forwards: 0", b"Max-Forwards: 70")
           .replace(b"To: <sip:bob@example.com>", f"To: {resp.header('to')}".encode()))
    assert core.receive(ack, "udp", ("127.0.0.1", 5061)) == []
