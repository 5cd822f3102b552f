"""Per-source flood limits in the shell (host/sip/pike.py decides).

Each request is checked against its source IP's bucket before the core
parses it: the IP is all it costs to know. Responses are never limited
(they end our own transactions), nor bare keepalives. A denied request is
dropped, or (`action="503"`) answered statelessly with 503 and a
Retry-After, built from its raw lines; an ACK is never answered.
"""

from __future__ import annotations

import logging

import trio

from host.sip.answers import salvage_reply
from host.sip.pike import DENY, SourceLimiter

log = logging.getLogger("babelsip")

LOG_WINDOW = 10.0        # seconds
LOG_LINES = 10           # block/unblock lines per window; the rest are counted


class FloodGuard:
    def __init__(self, limiter: SourceLimiter, action: str = "drop", retry_after: int = 5,
                 clock=trio.current_time):
        self.limiter, self.action, self.retry_after, self.clock = limiter, action, retry_after, clock
        self.answered = 0
        self.dropped = 0
        self._window = (0.0, 0, 0)   # (start, lines logged, lines held back)

    def wrap(self, on_message, reply):
        """`on_message(data, src)` behind the limiter; `reply(data, host,
        port)` sends our 503 back the way the request came."""
        limiter, clock = self.limiter, self.clock

        def guarded(data: bytes, src) -> None:
            if data[:4] == b"SIP/" or len(data) < 16:
                on_message(data, src)     # a response, or a CRLF keepalive
                return
            verdict = limiter.admit(src[0], clock())
            if limiter.changes:
                self._log_changes()
            if verdict is not DENY:
                on_message(data, src)
                return
            if self.action == "503" and data[:4] != b"ACK ":
                answer = salvage_reply(data, 503, "Service Unavailable")
                if answer is not None:
                    head, _, _ = answer[0].rpartition(b"Content-Length: 0")
                    reply(head + b"Retry-After: %d\r\nContent-Length: 0\r\n\r\n" % self.retry_after,
                          src[0], src[1])
                    self.answered += 1
                    return
            self.dropped += 1

        return guarded

    def _log_changes(self) -> None:
        now = self.clock()
        start, logged, held = self._window
        if now - start >= LOG_WINDOW:
            if held:
                log.warning("flood limits: %d more block/unblock events in the last %.0f s", held, LOG_WINDOW)
            start, logged, held = now, 0, 0
        changes = self.limiter.changes
        while changes:
            change = changes.popleft()
            if logged < LOG_LINES:
                logged += 1
                if change.blocked:
                    log.warning("flood limits: blocking requests from %s (over %g/s, burst %g): %s",
                                change.ip, self.limiter.rate, self.limiter.burst,
                                "answered 503" if self.action == "503" else "dropped")
                else:
                    log.warning("flood limits: %s is under its rate again, unblocked", change.ip)
            else:
                held += 1
        self._window = (start, logged, held)

    def statistics(self) -> dict:
        return {**self.limiter.statistics(), "answered_503": self.answered, "dropped": self.dropped}
