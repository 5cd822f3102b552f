"""LmdbStore shared by real processes (`--workers N` with no `--store`).

Each worker is `python -c WORKER` on one store directory: it opens the store,
says "ready", waits for "go" on stdin (so the workers start their loops
together), does its part and prints its results as one JSON line. The test
process itself is one more process on the same directory for the checks.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from host.storage.lmdb import LmdbStore

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 30.0        # seconds any one worker may take
AOR = "sip:race@example.com"

WORKER = r"""
import json, sys, time
import trio
from host.sip.registrar import Binding
from host.storage.lmdb import LmdbStore

path, op, n, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
AOR = "sip:race@example.com"

def binding(contact):
    now = time.time()
    return Binding(contact, now + 600, 1.0, "cid-" + tag, 1, ("udp", "127.0.0.1", 5060), (), "ua",
                   "", 0, "core-" + tag, now, False)

def appended(contact):
    return lambda current: (current + [binding(contact)], len(current))

def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()

async def main():
    store = LmdbStore(path)
    say("ready")
    sys.stdin.readline()
    out = []
    if op == "append":           # n updates of one AoR, each adding its own binding
        for i in range(n):
            await store.update_bindings(AOR, appended(f"sip:{tag}-{i}@192.0.2.1"))
    elif op == "advance":        # present nonce-counts 1..n, as a phone would
        out = [v for v in range(1, n + 1) if await store.advance("nonce", v, 60)]
    elif op == "incr":
        out = [await store.incr("hits", 1, ttl=600) for _ in range(n)]
    elif op == "write":
        await store.set("greeting", {"from": tag, "list": [1, 2.5, None]}, ttl=600)
        await store.put_dialog("d-" + tag, {"id": "d-" + tag, "state": "confirmed"}, 600)
        await store.profile_add("calls", "alice", "d-" + tag, 600)
        await store.update_bindings("sip:alice@example.com", appended("sip:alice@" + tag))
    elif op == "read":
        out = [await store.get("greeting"), await store.dialogs(),
               await store.profile_count("calls", "alice"),
               [b.contact for b in await store.bindings("sip:alice@example.com")],
               await store.aors()]
    elif op == "hold":           # blocked inside update_bindings' write transaction
        def change(current):
            say("inside")
            time.sleep(60)
            return current + [binding("sip:half-done@192.0.2.9")], None
        await store.update_bindings(AOR, change)
    elif op == "churn":          # writes for ever, saying each counter value it got
        for i in range(10**9):
            value = await store.incr("churn")
            await store.update_bindings(AOR, lambda cur: ([binding(f"sip:{tag}-{value}@h")], None))
            say(str(value))
    say(json.dumps(out))
    await store.aclose()

trio.run(main)
"""


class Worker:
    def __init__(self, path: Path, op: str, n: int = 0, tag: str = "w"):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), op, str(n), tag], cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)
        self._pending = b""      # read from the pipe, not yet returned as lines
        self.last_line = ""

    def line(self, timeout: float = DEADLINE) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                raise AssertionError(f"worker {self.proc.args[3:]} said nothing for {timeout} s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            assert chunk, f"worker {self.proc.args[3:]} exited ({self.proc.wait(5)})"
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        self.last_line = line.decode().strip()
        return self.last_line

    def drain_after_death(self) -> str:
        """The last whole line the (dead) worker wrote: each was one short
        write, atomic on a pipe, so none is cut."""
        for _ in range(10_000):
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                break
            self._pending += chunk
        lines = self._pending.split(b"\n")[:-1]
        return lines[-1].decode().strip() if lines else self.last_line

    def go(self) -> None:
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def result(self):
        out = json.loads(self.line())
        assert self.proc.wait(DEADLINE) == 0
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(DEADLINE)
        self._selector.close()
        self.proc.stdout.close()
        self.proc.stdin.close()


@pytest.fixture
def workers():
    started: list[Worker] = []

    def start(path, op, n=0, tag="w", count=1):
        batch = [Worker(path, op, n, f"{tag}{i}") for i in range(count)]
        started.extend(batch)
        for w in batch:
            assert w.line() == "ready"
        return batch
    yield start
    for w in started:
        w.kill()


def run_together(batch: list[Worker]) -> list:
    for w in batch:
        w.go()
    return [w.result() for w in batch]


def in_this_process(path, fn):
    """Run `await fn(store)` on our own LmdbStore of `path`."""
    async def main():
        store = LmdbStore(path)
        try:
            return await fn(store)
        finally:
            await store.aclose()
    return trio.run(main)


def test_concurrent_update_bindings_lose_no_update(tmp_path, workers):
    batch = workers(tmp_path, "append", 150, count=3)
    run_together(batch)
    contacts = in_this_process(tmp_path, lambda s: s.bindings(AOR))
    expected = {f"sip:w{p}-{i}@192.0.2.1" for p in range(3) for i in range(150)}
    assert len(contacts) == 450
    assert {b.contact for b in contacts} == expected
    for p in range(3):   # each process's own appends keep their order
        mine = [b.contact for b in contacts if b.contact.startswith(f"sip:w{p}-")]
        assert mine == [f"sip:w{p}-{i}@192.0.2.1" for i in range(150)]


def test_concurrent_advance_accepts_each_value_once(tmp_path, workers):
    # Each process presents 1..n in order, so the counter only ever moves by
    # one: every value is accepted by exactly one process.
    accepted = run_together(workers(tmp_path, "advance", 400, count=3))
    everything = sorted(v for mine in accepted for v in mine)
    assert everything == list(range(1, 401))
    assert in_this_process(tmp_path, lambda s: s.advance("nonce", 400, 60)) is False


def test_incr_from_processes_sums_exactly(tmp_path, workers):
    seen = run_together(workers(tmp_path, "incr", 500, count=3))
    assert sorted(v for mine in seen for v in mine) == list(range(1, 1501))
    assert in_this_process(tmp_path, lambda s: s.get("hits")) == 1500


def test_what_one_process_writes_the_other_reads(tmp_path, workers):
    run_together(workers(tmp_path, "write", tag="a"))
    (reader,) = workers(tmp_path, "read", tag="b")
    greeting, dialogs, count, contacts, aors = run_together([reader])[0]
    assert greeting == {"from": "a0", "list": [1, 2.5, None]}
    assert dialogs == [{"id": "d-a0", "state": "confirmed"}]
    assert count == 1
    assert contacts == ["sip:alice@a0"]
    assert aors == ["sip:alice@example.com"]


def test_killed_inside_a_write_transaction_leaves_the_store_consistent(tmp_path, workers):
    """SIGKILL while a worker holds the writer lock half-way through
    update_bindings: its change is not stored, and the next writer gets the
    lock at once (LMDB's robust mutex) instead of waiting for ever."""
    async def first(store):
        await store.update_bindings(AOR, lambda cur: (cur, None))   # nothing yet: a no-op
        await store.set("before", "kept")
    in_this_process(tmp_path, first)
    (holder,) = workers(tmp_path, "hold")
    holder.go()
    assert holder.line() == "inside"
    holder.kill()

    async def after(store):
        start = time.monotonic()
        with trio.fail_after(5):
            await store.update_bindings(AOR, lambda cur: (cur, len(cur)))
            waited = time.monotonic() - start
            return (waited, await store.bindings(AOR), await store.get("before"),
                    await store.incr("after"))
    waited, bindings, before, after_count = in_this_process(tmp_path, after)
    assert waited < 1.0
    assert bindings == []              # the half-done binding was never committed
    assert before == "kept"
    assert after_count == 1


def test_killed_while_churning_leaves_counts_consistent(tmp_path, workers):
    """SIGKILL at an arbitrary point of a busy writer; another worker goes on
    writing meanwhile and after. Every commit is whole: the counter is what
    the killed worker last reported or one more (a commit it did not get to
    print), and the AoR record decodes to the one binding it last wrote."""
    churner, other = workers(tmp_path, "churn", tag="k") + workers(tmp_path, "incr", 300, tag="o")
    churner.go()
    other.go()
    for _ in range(200):
        churner.line()
    churner.proc.send_signal(signal.SIGKILL)
    churner.proc.wait(DEADLINE)
    last = int(churner.drain_after_death())   # the last commit it reported
    assert last >= 200
    seen = other.result()
    assert seen == list(range(1, 301))            # the other worker's own key, undisturbed

    async def check(store):
        with trio.fail_after(5):
            return (await store.get("churn"), await store.bindings(AOR), await store.incr("churn"),
                    await store.sweep())
    value, bindings, next_value, _ = in_this_process(tmp_path, check)
    assert value in (last, last + 1)
    assert len(bindings) == 1
    assert bindings[0].contact in (f"sip:k0-{last}@h", f"sip:k0-{last + 1}@h")
    assert next_value == value + 1
