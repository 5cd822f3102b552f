"""StdioRuntime.submit: events without a task per event, with real Python workers.

submit(hook, event, deadline_at, done) queues the event and returns; done()
gets the Decision or a ScriptError on the trio thread, exactly once, by the
deadline — answered, overdue, or failed with the worker.
"""

import os
import signal
import threading
import time

import trio

from host.routes.event import ScriptEvent
from host.routes.runtime import ScriptError
from host.routes.verbs import Decision

from jsonline_fixtures import event  # noqa: E402
from test_stdio import alive, spec_for, started  # noqa: E402


class Answers:
    """done() for many submits: each answer by event, checked to come once,
    on the trio thread."""

    def __init__(self):
        self.by_key: dict = {}
        self.thread = threading.get_ident()
        self.changed = trio.Event()

    def done_for(self, key):
        def done(result):
            assert threading.get_ident() == self.thread
            assert key not in self.by_key, f"{key} answered twice"
            self.by_key[key] = result
            self.changed.set()
            self.changed = trio.Event()
        return done

    async def wait_for(self, n: int, timeout: float = 5.0):
        with trio.fail_after(timeout):
            while len(self.by_key) < n:
                await self.changed.wait()
        return self.by_key


def soon(seconds: float = 1.0) -> float:
    return time.monotonic() + seconds


# Python handlers run on the reading thread (CONCURRENCY = 1) and answer no
# pings while they sleep: slow pings, so that a slow event is slow, not hung.
SLOW_PINGS = (("ping_interval", 2.0),)


async def test_submit_answers_300_pipelined_events_matched_by_id(tmp_path):
    rt = await started(spec_for(tmp_path, pool=2))
    answers = Answers()
    try:
        for i in range(300):
            assert rt.submit("on_request", event(f"u{i}"), soon(5), answers.done_for(i))
        got = await answers.wait_for(300)
        assert all(got[i].targets == [f"sip:u{i}@backend"] for i in range(300))
        assert rt.statistics()["in_flight"] == 0
        # Both workers took a share (least in flight first).
        assert all(s.answered for s in rt._sessions)
    finally:
        await rt.aclose()


async def test_submit_writes_a_lazy_event_whole(tmp_path):
    code = """
    def on_request(req):
        req.reply(200, f"{req.method} {len(req.headers())} {req.header('subject')} {req.body}")
    """
    rt = await started(spec_for(tmp_path, code))
    answers = Answers()

    class Message:   # what ScriptEvent reads the headers from
        headers = [("via", "SIP/2.0/UDP a"), ("subject", "hi")]

    lazy = ScriptEvent(Message(), {k: v for k, v in event().items() if k not in ("headers", "body")})
    lazy["body"] = "sdp"
    try:
        assert rt.submit("on_request", lazy, soon(), answers.done_for("lazy"))
        got = await answers.wait_for(1)
        assert not isinstance(got["lazy"], ScriptError), got["lazy"]
        assert got["lazy"].reason == "INVITE 2 hi sdp"
    finally:
        await rt.aclose()


async def test_submit_of_a_hook_the_route_lacks_answers_at_once(tmp_path):
    rt = await started(spec_for(tmp_path))
    seen = []
    try:
        assert rt.submit("on_reply", event(), soon(), seen.append)
        assert seen == [Decision()]
        assert rt.statistics()["in_flight"] == 0
    finally:
        await rt.aclose()


async def test_submit_deadline_times_out_and_the_late_answer_is_dropped(tmp_path):
    rt = await started(spec_for(tmp_path, options=SLOW_PINGS))
    answers = Answers()
    try:
        t0 = time.monotonic()
        assert rt.submit("on_request", event("sleep0.4"), soon(0.1), answers.done_for("slow"))
        got = await answers.wait_for(1)
        assert 0.09 <= time.monotonic() - t0 < 0.35
        err = got["slow"]
        assert isinstance(err, ScriptError) and err.kind == "timeout" and not err.damaged
        assert "deadline" in err.message
        assert rt.statistics()["in_flight"] == 0
        # The late decision arrives and is ignored; the worker goes on serving.
        await trio.sleep(0.4)
        assert rt.submit("on_request", event("ok"), soon(), answers.done_for("ok"))
        assert (await answers.wait_for(2))["ok"].targets == ["sip:ok@backend"]
        assert rt.statistics()["restarts"] == 0
    finally:
        await rt.aclose()


async def test_third_overrun_in_a_row_marks_the_runtime_damaged(tmp_path):
    """As the registry's own deadline does (handle.HUNG_AFTER): a runtime
    whose events keep overrunning is replaced; an answer resets the count."""
    rt = await started(spec_for(tmp_path))
    answers = Answers()
    try:
        for i in range(2):
            rt.submit("on_request", event("sleep0.15"), soon(0.05), answers.done_for(f"late{i}"))
            await answers.wait_for(1 + i)
        await trio.sleep(0.3)   # the worker finishes the sleeps
        rt.submit("on_request", event("ok"), soon(), answers.done_for("ok"))
        await answers.wait_for(3)
        for i in range(3):
            rt.submit("on_request", event("sleep0.15"), soon(0.05), answers.done_for(f"again{i}"))
            await answers.wait_for(4 + i)
        got = answers.by_key
        assert [got[f"late{i}"].damaged for i in range(2)] == [False, False]
        assert got["ok"].verb == "relay"
        assert [got[f"again{i}"].damaged for i in range(3)] == [False, False, True]
    finally:
        await rt.aclose()


async def test_kill_9_fails_submitted_events_and_submit_declines_until_restarted(tmp_path):
    rt = await started(spec_for(tmp_path))
    answers = Answers()
    try:
        old = rt.pids[0]
        for i in range(5):
            assert rt.submit("on_request", event("sleep0.1"), soon(5), answers.done_for(i))
        await trio.sleep(0.05)
        os.kill(old, signal.SIGKILL)
        got = await answers.wait_for(5)
        kinds = [r.kind if isinstance(r, ScriptError) else "ok" for r in got.values()]
        assert "crash" in kinds and set(kinds) <= {"ok", "crash"}
        # No live worker until the restart: nothing is queued, done is not called.
        declined = []
        assert rt.submit("on_request", event(), soon(), declined.append) is False
        with trio.fail_after(5):
            while not rt.statistics()["ready"]:
                await trio.sleep(0.01)
        assert rt.submit("on_request", event("after"), soon(), answers.done_for("after"))
        assert (await answers.wait_for(6))["after"].targets == ["sip:after@backend"]
        assert declined == [] and rt.pids[0] != old and not alive(old)
    finally:
        await rt.aclose()


async def test_submit_declines_when_every_worker_is_at_its_cap(tmp_path):
    rt = await started(spec_for(tmp_path, options=(("max_in_flight", 3),)))
    answers = Answers()
    try:
        for i in range(3):
            assert rt.submit("on_request", event("sleep0.05"), soon(), answers.done_for(i))
        assert rt.submit("on_request", event(), soon(), answers.done_for("over")) is False
        await answers.wait_for(3)
        assert "over" not in answers.by_key
        assert rt.submit("on_request", event(), soon(), answers.done_for("room"))
        assert (await answers.wait_for(4))["room"].verb == "relay"
    finally:
        await rt.aclose()


async def test_an_event_that_cannot_be_sent_is_answered_at_once(tmp_path):
    rt = await started(spec_for(tmp_path, options=(("max_line", 2000),)))
    seen = []
    try:
        assert rt.submit("on_request", event(body="x" * 5000), soon(), seen.append)
        assert len(seen) == 1 and seen[0].kind == "error" and "line limit" in seen[0].message
        assert rt.statistics()["in_flight"] == 0
    finally:
        await rt.aclose()


async def test_a_failing_receiver_does_not_end_the_session(tmp_path):
    rt = await started(spec_for(tmp_path))
    answers = Answers()

    def broken(result):
        raise RuntimeError("the core choked on this decision")

    try:
        assert rt.submit("on_request", event("first"), soon(), broken)
        assert rt.submit("on_request", event("second"), soon(), answers.done_for("second"))
        assert (await answers.wait_for(1))["second"].targets == ["sip:second@backend"]
        assert rt.statistics()["restarts"] == 0 and rt.statistics()["ready"] == 1
    finally:
        await rt.aclose()


async def test_a_worker_told_to_shut_down_gets_no_more_events(tmp_path):
    """After `shutdown` a worker takes no new events (PROTOCOL.md §3): they
    go to the other worker of the pool, not into a pipe nobody reads."""
    rt = await started(spec_for(tmp_path, pool=2))
    answers = Answers()
    try:
        stopping, other = rt._sessions
        stopping.shutdown()
        for i in range(10):
            assert rt.submit("on_request", event(f"u{i}"), soon(), answers.done_for(i))
        got = await answers.wait_for(10)
        assert all(got[i].targets == [f"sip:u{i}@backend"] for i in range(10))
        assert (stopping.answered, other.answered) == (0, 10)
    finally:
        await rt.aclose()
