"""When to ping NATed UDP bindings with OPTIONS, and what to send (RFC 5626 §4.4
keeps flows alive from the UA; this is the server-side counterpart, as
Kamailio's nathelper and OpenSIPS do it).

The shell sends the pings and feeds back the answers; this module decides:

- every flow (transport, ip, port) is pinged once per `interval`, each at its
  own phase: the n-th flow added starts at frac(n·φ)·interval after it is
  added (φ the golden ratio, a low-discrepancy sequence), so any number of
  flows is spread almost evenly over the interval instead of pinged in one
  burst, and re-adding a flow (a re-REGISTER) keeps its phase;
- a flow whose last ping is still unanswered when the next one is due has
  missed one; after `misses` in a row it is taken out of the schedule and
  handed over by `dead()` (the shell drops its bindings);
- any response to any ping of a flow (a 200, a 404, a 483: the NAT binding
  let it through) clears its misses. Pings are told apart by their Via
  branch: KEEPALIVE_BRANCH_PREFIX, the schedule's `salt`, the flow's serial
  number and the ping's. The salt (the shell passes a random token per
  process) keeps answers to an earlier process's pings from matching.

A binary heap of (due time, serial) holds one live entry per flow; entries
left by removed or re-timed flows are skipped when they surface and the heap
is rebuilt when they outnumber the live ones, so every operation is O(log n)
amortised and a removed flow costs nothing once its entry is gone.

Pure: the clock is injected (host/sip imports no `time`).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable

from .headers import parse_name_addr

__all__ = ["KEEPALIVE_BRANCH_PREFIX", "KeepaliveSchedule", "Ping", "options_ping"]

KEEPALIVE_BRANCH_PREFIX = "z9hG4bK-ka-"   # the core recognises answers to our pings by this
_GOLDEN = (math.sqrt(5) - 1) / 2           # frac(φ)

Flow = tuple[str, str, int]                # (transport, ip, port)


@dataclass(frozen=True, slots=True)
class Ping:
    flow: Flow
    branch: str
    request: bytes


class _Entry:
    __slots__ = ("serial", "aor", "contact", "at", "pinged", "sent", "missed")

    def __init__(self, serial: int, aor: str, contact: str, at: float):
        self.serial = serial
        self.aor, self.contact = aor, contact
        self.at = at            # when the next ping is due
        self.pinged = False     # a ping is out and unanswered
        self.sent = 0           # pings sent (numbers the branches)
        self.missed = 0         # pings unanswered in a row


class KeepaliveSchedule:
    def __init__(self, interval: float, misses: int = 3,
                 clock: Callable[[], float] | None = None, *,
                 local: tuple[str, str, int] = ("udp", "127.0.0.1", 5060),
                 from_uri: str = "sip:keepalive@invalid", salt: str = ""):
        """`clock` gives the time that add() places new flows from; without
        one, the last `now` passed to due() is used. `local` is our address
        for the Via sent-by, `from_uri` the pings' From. `salt` must not
        hold "." (it is cut off the branch by position)."""
        if interval <= 0 or misses < 1:
            raise ValueError("interval must be > 0 and misses >= 1")
        if "." in salt:
            raise ValueError("salt must not contain '.'")
        self.interval, self.misses = interval, misses
        self._clock = clock
        self.local, self.from_uri = local, from_uri
        self._prefix = KEEPALIVE_BRANCH_PREFIX + salt
        self._now = 0.0
        self._flows: dict[Flow, _Entry] = {}
        self._serials: dict[int, Flow] = {}
        self._heap: list[tuple[float, int]] = []
        self._next_serial = 0
        self._dead: list[tuple[Flow, str, str]] = []

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, flow) -> bool:
        return flow in self._flows

    # ---------------------------------------------------------- flows
    def add(self, flow: Flow, aor: str, contact: str) -> None:
        """Start pinging `flow` for `aor`'s binding `contact`; for a flow
        already scheduled, update aor and contact and keep its phase."""
        entry = self._flows.get(flow)
        if entry is not None:
            entry.aor, entry.contact = aor, contact
            return
        now = self._clock() if self._clock is not None else self._now
        serial = self._next_serial
        self._next_serial += 1
        phase = (serial * _GOLDEN) % 1.0 * self.interval
        entry = _Entry(serial, aor, contact, now + phase)
        self._flows[flow] = entry
        self._serials[serial] = flow
        heapq.heappush(self._heap, (entry.at, serial))

    def remove(self, flow) -> None:
        entry = self._flows.pop(flow, None)
        if entry is not None:
            del self._serials[entry.serial]
            self._compact()

    # ---------------------------------------------------------- timing
    def due(self, now: float) -> list[Ping]:
        """The pings to send now. Flows that have missed `misses` pings are
        taken out instead and wait in dead()."""
        self._now = max(self._now, now)
        heap, interval = self._heap, self.interval
        pings = []
        while heap and heap[0][0] <= now:
            at, serial = heapq.heappop(heap)
            flow = self._serials.get(serial)
            if flow is None:
                continue                     # removed since
            entry = self._flows[flow]        # one heap entry per live serial
            if entry.pinged:
                entry.missed += 1
                if entry.missed >= self.misses:
                    del self._flows[flow], self._serials[serial]
                    self._dead.append((flow, entry.aor, entry.contact))
                    continue
            entry.sent += 1
            entry.pinged = True
            branch = f"{self._prefix}{serial:x}.{entry.sent:x}"
            pings.append(Ping(flow, branch, options_ping(
                entry.contact, flow, branch, self.local, self.from_uri)))
            # Keep the phase; if we were called late, skip the slots missed.
            entry.at = at + interval * (math.floor((now - at) / interval) + 1)
            heapq.heappush(heap, (entry.at, serial))
        self._compact()
        return pings

    def next_due(self) -> float | None:
        """When due() has something to do next, None when nothing is scheduled."""
        heap = self._heap
        while heap and heap[0][1] not in self._serials:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # ---------------------------------------------------------- answers
    def answered(self, branch: str) -> None:
        """A response to one of our pings arrived: its flow is alive."""
        if not branch.startswith(self._prefix):
            return
        serial, dot, _ = branch[len(self._prefix):].partition(".")
        try:
            flow = self._serials.get(int(serial, 16)) if dot else None
        except ValueError:
            return
        if flow is not None:
            entry = self._flows[flow]
            entry.pinged = False
            entry.missed = 0

    def dead(self) -> list[tuple[Flow, str, str]]:
        """(flow, aor, contact) of the flows that missed `misses` pings in a
        row since the last call; they are no longer in the schedule."""
        out, self._dead = self._dead, []
        return out

    def _compact(self) -> None:
        """Rebuild the heap once stale entries outnumber live ones."""
        if len(self._heap) > 2 * len(self._flows) + 16:
            self._heap = [(e.at, e.serial) for e in self._flows.values()]
            heapq.heapify(self._heap)


def _request_uri(contact: str) -> str:
    text = contact.strip(" \t")
    return parse_name_addr(text).uri if "<" in text else text


def options_ping(contact: str, flow: Flow, branch: str, local: tuple[str, str, int],
                 from_uri: str) -> bytes:
    """A complete OPTIONS request to `contact` (a URI or Contact value) over
    `flow`: Request-URI and To the contact's URI, Via with `branch` and
    rport (RFC 3581, so the answer comes back through the NAT binding), its
    transport the flow's and its sent-by `local`'s host and port. Tag and
    Call-ID derive from the branch, which is unique per ping."""
    uri = _request_uri(contact)
    host = local[1]
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    token = branch[len(KEEPALIVE_BRANCH_PREFIX):] if branch.startswith(
        KEEPALIVE_BRANCH_PREFIX) else branch
    return (
        f"OPTIONS {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{flow[0].upper()} {host}:{local[2]};branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <{from_uri}>;tag=ka{token}\r\n"
        f"To: <{uri}>\r\n"
        f"Call-ID: ka-{token}\r\n"
        f"CSeq: 1 OPTIONS\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
