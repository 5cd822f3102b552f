"""The thread a Lua state runs in: its job queue, batched answers, watchdog.

The event loop hands a job over with `StateWorker.submit` and goes on at
once; the thread runs jobs in order and hands the answers back. Per event
that is one queue put and, when the loop is busy, a share of one wake-up:
no trio task, no cancel scope, no lock (issue 7's first threaded version
spent all three per event and fell from 1,000 to under 600 calls/s).

Answers. After each job the thread posts `run_sync_soon(self._deliver)` only
if none is pending yet and either its queue is empty or BATCH_MAX answers are
waiting; `_deliver` then answers everything finished since the last post, on
the trio thread, so under load one wake-up of the loop carries many answers.
A job whose deadline passed before its turn came is answered `late` without
running: the events queued behind a slow one get their fallback within their
own deadline instead of running after it.

Watchdog. The jobs the loop has not been answered for yet are kept in order
(`_pending`); only the first of them can be running. One trio system task
per worker sleeps until that job's deadline + OVERRUN_GRACE (nothing else
moves that time: a job submitted behind it is never checked before it) and,
if the job is still not finished then, abandons the state: the job is
answered `overrun`, every job queued behind it `abandoned`, and the thread
drops whatever it still finishes and frees the state when it reaches STOP.
The loop never touches a state that may be busy.

A short wait instead of a ride. Handing a job over and its answer back costs
two thread wake-ups, plus a GIL hand-over for every callback the script makes
while the loop's thread is busy — together more than a routing decision
itself. So when nothing is queued ahead, `submit(job, wait)` blocks the loop
for at most `wait` seconds (releasing the GIL, so the script's callbacks get
it at once) and answers the job right there if it finished by then. The bound
is what keeps this safe: a job that takes longer goes on in the thread and is
answered by the usual ride, and the state is not waited on again for
SLOW_HOLD seconds once it is known to have run that long (a job merely
scheduled late on a busy machine does not count); and a state is waited on
for at most WAIT_SHARE of each
second, so even a route whose every event takes just under `wait` cannot
hold the loop for more than that share.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time

import trio

log = logging.getLogger("babelsip.routes.lua")

# How long past its deadline a job may still run before its state is
# abandoned. The count hook stops a script within ~0.1 ms of its deadline;
# the rest is the thread waking up and taking the GIL on a loaded machine
# (measured: p99 ~5 ms with 2 busy cores).
OVERRUN_GRACE = 0.1

# Answers one wake-up of the loop carries at most before the thread posts
# another, even while jobs keep coming. At ~100 us a job, 32 answers wait at
# most ~3 ms for their ride; more would only add latency (one wake-up costs
# ~10-20 us of CPU, spread over 32 events it is noise).
BATCH_MAX = 32

# A state whose job outlasted its wait is not waited on for this long: a slow
# route then costs the loop one bounded wait per SLOW_HOLD, not one per event.
SLOW_HOLD = 1.0

# The share of each second the loop may spend waiting on one state; past it,
# jobs take the ride until the next second. Waiting is the route's own work
# (what running it inline cost), so a busy quick route legitimately takes a
# good part of the loop; half is the cap, the other half stays for the core,
# the other routes, in-dialog requests and retransmissions. (5 % was tried:
# at 1,000 calls/s a quick route already needs ~35 %, and riding instead made
# it fail that rate.)
WAIT_SHARE = 0.5

# Why a job was answered without a result of its own (`errors(why, job)`).
LATE, OVERRUN, ABANDONED = "late", "overrun", "abandoned"


def detached(exc: BaseException) -> BaseException:
    """`exc` with no traceback or chained exceptions: a result crossing from
    the worker thread must not keep that thread's frames (and the Lua objects
    in them) alive, or they would be freed on the event loop's thread."""
    exc.__traceback__ = exc.__context__ = exc.__cause__ = None
    return exc


class Suspended:
    """A job's result that is not its answer yet: the job's function stopped
    to wait for something on the trio side (a Lua host call). Delivered to
    `suspended(job)` on the trio thread instead of `job.done`; the job is then
    finished as far as the worker is concerned (not running, not pending:
    the watchdog no longer counts it), and whoever continues it submits a new
    job with the same `done` and deadline."""

    __slots__ = ()

    def suspended(self, job: "Job") -> None:
        raise NotImplementedError


def answer(job: "Job") -> None:
    """On the trio thread: job.done(result), or result.suspended(job)."""
    result = job.result
    if isinstance(result, Suspended):
        call_safely(result.suspended, job)
    else:
        call_safely(job.done, result)


class Job:
    """fn(*args) to run in the thread before `deadline_at` (time.monotonic());
    `done(result)` is called on the trio thread with what fn returned (fn
    should not raise; an exception it raises is passed as the result)."""

    __slots__ = ("fn", "args", "deadline_at", "done", "result", "waiter", "handed", "wait", "ran")

    def __init__(self, fn, args, deadline_at: float, done):
        self.fn, self.args, self.deadline_at, self.done = fn, args, deadline_at, done
        self.result = None
        # Set while the loop waits for this job: the thread then hands the
        # result over by releasing `waiter` (and setting `handed`), not by a ride.
        self.waiter: threading.Lock | None = None
        self.handed = False
        self.wait = 0.0     # how long the loop was ready to wait for it
        self.ran = 0.0      # seconds fn took in the thread


def call_safely(done, result) -> None:
    """done(result), on the trio thread, from a run_sync_soon callback: an
    exception escaping one would end trio.run (TrioInternalError), so a bug
    in a callback is logged and costs that event only."""
    try:
        done(result)
    except Exception:
        log.exception("a Lua route's completion callback failed")


class StateWorker:
    """One thread, one Lua state; created on the trio thread, inside trio.run."""

    STOP = None

    def __init__(self, name: str, drop_state, errors, deadline: float):
        """drop_state(): frees the state, called in the thread after its last
        job. errors(why, job) -> the exception a job answered without running
        gets (why: LATE, in the thread; OVERRUN or ABANDONED, on the loop).
        deadline: the usual per-job deadline (how long the idle watchdog sleeps)."""
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._drop_state, self._errors = drop_state, errors
        self._token = trio.lowlevel.current_trio_token()
        # Shared with the thread, under _lock: answers not yet handed over, and
        # whether a _deliver is on its way; `abandoned` is set under it too.
        self._lock = threading.Lock()
        self._outbox: list[Job] = []
        self._posted = False
        self.abandoned = False
        # Trio side only.
        self._pending: collections.deque[Job] = collections.deque()
        self._stopped = False
        self._watch: trio.CancelScope | None = None
        self._watch_at = math.inf        # time.monotonic() the watchdog wakes at
        self._idle = deadline
        # The bounded wait (see the module doc): no waiting before _slow_until;
        # seconds waited in the second that started at _window.
        self._slow_until = 0.0
        self._window = 0.0
        self._waited = 0.0
        self.waits = self.waits_answered = 0
        threading.Thread(target=self._loop, name=name, daemon=True).start()
        trio.lowlevel.spawn_system_task(self._watchdog, name=f"{name} watchdog")

    # --------------------------------------------------------- trio side

    @property
    def usable(self) -> bool:
        return not (self._stopped or self.abandoned)

    def submit(self, job: Job, wait: float = 0.0) -> bool:
        """Queue a job; False (and nothing queued) once stopped or abandoned.
        With `wait` > 0 and nothing queued ahead, block for at most that long
        and, if the job finished by then, call its `done` before returning."""
        if not self.usable:
            return False
        pending = self._pending
        pending.append(job)
        # The watchdog sleeps until the first pending job's deadline, or a
        # spec deadline ahead when there was none: move it only if this job,
        # now first, is due earlier (a caller's shorter deadline).
        if len(pending) == 1 and job.deadline_at + OVERRUN_GRACE < self._watch_at:
            self._rewatch(job.deadline_at + OVERRUN_GRACE)
        if wait <= 0 or len(pending) > 1 or not self._may_wait(started := time.monotonic()):
            self._jobs.put(job)
            return True
        waiter = job.waiter = threading.Lock()
        job.wait = wait
        waiter.acquire()
        self._jobs.put(job)
        waiter.acquire(timeout=wait)     # releases the GIL while it waits
        with self._lock:
            handed = job.handed
            job.waiter = None            # not handed yet: it takes the ride
        now = time.monotonic()
        self._waited += now - started
        self.waits += 1
        if not handed:
            return True    # it rides; _deliver marks the state slow if it was
        self.waits_answered += 1
        pending.popleft()                # it was the only one pending
        answer(job)
        return True

    def may_run_inline(self) -> bool:
        """Whether the loop may run the next event in the state itself: the
        thread has nothing queued or running (so the state is free), and the
        bounded wait's rules (SLOW_HOLD, WAIT_SHARE) allow the time."""
        return self.usable and not self._pending and self._may_wait(time.monotonic())

    def ran_inline(self, seconds: float, slow: bool) -> None:
        """An inline run took `seconds` of the loop; `slow`: it outgrew its
        inline budget (the state is then not run inline for SLOW_HOLD)."""
        self._waited += seconds
        if slow:
            self._slow_until = time.monotonic() + SLOW_HOLD

    def _may_wait(self, now: float) -> bool:
        if now < self._slow_until:
            return False
        if now - self._window >= 1.0:
            self._window, self._waited = now, 0.0
        return self._waited < WAIT_SHARE

    def stop(self) -> None:
        """No more jobs; those queued still run (and are answered), then the
        thread frees the state and ends. Idempotent; never waits."""
        if not self._stopped:
            self._stopped = True
            self._jobs.put(self.STOP)
            if self._watch is not None:
                self._watch.cancel()

    def _deliver(self) -> None:
        """run_sync_soon callback: answer what the thread finished. Never raises."""
        try:
            with self._lock:
                batch, self._outbox, self._posted = self._outbox, [], False
            pending = self._pending
            for job in batch:
                # Jobs finish in submission order, so each is the first pending.
                if pending and pending[0] is job:
                    pending.popleft()
                if job.wait and job.ran > job.wait:
                    # Slow in itself, not merely late to be scheduled on a
                    # busy machine: stop waiting on this state for a while.
                    self._slow_until = time.monotonic() + SLOW_HOLD
                answer(job)
            if self._stopped and not pending and self._watch is not None:
                self._watch.cancel()   # nothing left to guard: let the watchdog end
        except Exception:   # a bug here must not end trio.run
            log.exception("delivering Lua results failed")

    def _rewatch(self, at: float) -> None:
        self._watch_at = at
        if self._watch is not None:
            self._watch.deadline = trio.current_time() + (at - time.monotonic())

    async def _watchdog(self) -> None:
        idle = self._idle
        try:
            while not self._stopped or self._pending:
                pending = self._pending
                at = (pending[0].deadline_at + OVERRUN_GRACE) if pending else time.monotonic() + idle
                with trio.CancelScope() as scope:
                    self._watch = scope
                    self._rewatch(at)
                    await trio.sleep_forever()
                self._watch, self._watch_at = None, math.inf
                self._check()
                if self.abandoned:
                    return
        except Exception:
            log.exception("the Lua watchdog failed; abandoning its state")
            self._abandon()

    def _check(self) -> None:
        """Abandon the state if the first pending job is past its deadline +
        grace and still not finished (decided under the lock, so a job the
        thread finishes meanwhile is either delivered or dropped, never both)."""
        pending = self._pending
        if not pending or pending[0].deadline_at + OVERRUN_GRACE > time.monotonic():
            return
        with self._lock:
            finished = bool(self._outbox)
            if not finished:
                self.abandoned = True
        if finished:
            self._deliver()   # it finished in time; only its ride is late
        else:
            self._answer_the_rest(overrun=True)

    def _abandon(self) -> None:
        """Give the state up whatever runs in it (the watchdog itself failed)."""
        with self._lock:
            if self.abandoned:
                return
            self.abandoned = True
        self._deliver()   # those finished before the cut: their own answers
        self._answer_the_rest(overrun=False)

    def _answer_the_rest(self, overrun: bool) -> None:
        pending = self._pending
        if overrun and pending:
            first = pending.popleft()
            call_safely(first.done, self._errors(OVERRUN, first))
        while pending:
            job = pending.popleft()
            call_safely(job.done, self._errors(ABANDONED, job))
        self.stop()

    # ------------------------------------------------------- the thread

    def _loop(self) -> None:
        jobs, lock, outbox_max = self._jobs, self._lock, BATCH_MAX
        clock = time.monotonic
        while True:
            job = jobs.get()
            if job is self.STOP:
                break
            if self.abandoned:
                continue   # answered by the watchdog; the state is not used again
            began = clock()
            if began >= job.deadline_at:
                result = self._errors(LATE, job)
            else:
                try:
                    result = job.fn(*job.args)
                except BaseException as exc:   # a bug: reported as the job's result
                    result = detached(exc)
                job.ran = clock() - began
            job.result = result
            with lock:
                if self.abandoned:
                    post = False   # already answered; drop it
                elif job.waiter is not None:
                    job.handed, post = True, False   # the loop is waiting for it
                    job.waiter.release()
                else:
                    self._outbox.append(job)
                    post = not self._posted and (jobs.empty() or len(self._outbox) >= outbox_max)
                    if post:
                        self._posted = True
            if post:
                self._post()
            # Dropped here, not on the event loop's thread.
            del job, result
        try:
            self._drop_state()
        finally:
            with lock:
                post = bool(self._outbox) and not self._posted
                self._posted = self._posted or post
            if post:
                self._post()

    def _post(self) -> None:
        try:
            self._token.run_sync_soon(self._deliver)
        except trio.RunFinishedError:
            pass
