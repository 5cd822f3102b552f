"""SIP transaction timer values, all derived from one frozen T1/T2/T4 record.

RFC 3261 §17 (Table 4 in Appendix A) defines every transaction timer in terms
of three base values; RFC 6026 §8.11 adds Timer L and Timer M for the Accepted
state. Nothing here is a module global: a process that wants other values
(e.g. a larger T1 on a high-latency link, §17.1.1.1 allows it) builds its own
`TimerConfig`, and tests build a tiny one.

Retransmission timers (A, E, G) are only started on unreliable transports;
the transaction machines check that. The "wait" timers D, I, J and K are zero
on reliable transports, which the machines treat as "fire now".
"""

from __future__ import annotations

__all__ = ["TimerConfig", "DEFAULT_TIMERS"]


class TimerConfig:
    """Base timer values (seconds) and the durations derived from them.

    Immutable: assigning an attribute raises `AttributeError`. Derived values
    are computed once here so the hot path reads attributes, not arithmetic.
    """

    __slots__ = ("t1", "t2", "t4", "c", "d_unreliable",
                 "_b", "_f", "_h", "_j", "_l", "_m")

    def __init__(self, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0,
                 c: float = 180.0, d_unreliable: float = 32.0):
        # T1 = RTT estimate (500 ms), T2 = maximum retransmit interval for
        # non-INVITE requests and INVITE responses (4 s), T4 = maximum time a
        # message stays in the network (5 s) — RFC 3261 Appendix A.
        if not (t1 > 0 and t2 >= t1 and t4 >= 0 and c > 0 and d_unreliable >= 0):
            raise ValueError(f"bad timer values t1={t1} t2={t2} t4={t4} c={c} d={d_unreliable}")
        sa = object.__setattr__
        sa(self, "t1", float(t1))
        sa(self, "t2", float(t2))
        sa(self, "t4", float(t4))
        # Timer C: "MUST be set for a value larger than 3 minutes" (§16.6 step 11).
        sa(self, "c", float(c))
        # Timer D: "at least 32 seconds for unreliable transports" (§17.1.1.2).
        sa(self, "d_unreliable", float(d_unreliable))
        t64 = 64.0 * t1
        for name in ("_b", "_f", "_h", "_j", "_l", "_m"):
            sa(self, name, t64)

    def __setattr__(self, name, value):
        raise AttributeError(f"TimerConfig is frozen (tried to set {name!r})")

    def __delattr__(self, name):
        raise AttributeError(f"TimerConfig is frozen (tried to delete {name!r})")

    def __repr__(self) -> str:
        return (f"TimerConfig(t1={self.t1}, t2={self.t2}, t4={self.t4}, "
                f"c={self.c}, d_unreliable={self.d_unreliable})")

    def __eq__(self, other) -> bool:
        if type(other) is not TimerConfig:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def _values(self):
        return (self.t1, self.t2, self.t4, self.c, self.d_unreliable)

    # -- INVITE client transaction (§17.1.1.2) ---------------------------

    def a(self) -> float:
        """Timer A, first INVITE retransmit interval; doubles each time (`a_next`)."""
        return self.t1

    def a_next(self, previous: float) -> float:
        # §17.1.1.2: "retransmitted with intervals that double after each
        # transmission" — no cap; Timer B bounds the whole thing.
        return previous * 2.0

    def b(self) -> float:
        """Timer B, INVITE transaction timeout: 64*T1."""
        return self._b

    def d(self, reliable: bool) -> float:
        """Timer D, wait time for response retransmits: >= 32 s unreliable, 0 reliable."""
        return 0.0 if reliable else self.d_unreliable

    def m(self) -> float:
        """Timer M (RFC 6026 §7.2), ICT Accepted wait for 2xx retransmits: 64*T1."""
        return self._m

    # -- non-INVITE client transaction (§17.1.2.2) ------------------------

    def e(self) -> float:
        """Timer E, first request retransmit interval: T1."""
        return self.t1

    def e_next(self, previous: float) -> float:
        # §17.1.2.2 Trying: "MIN(2*T1, T2)", then doubling, capped at T2.
        return min(previous * 2.0, self.t2)

    def e_proceeding(self) -> float:
        # §17.1.2.2 Proceeding: "Timer E MUST be reset with a value of T2 seconds."
        return self.t2

    def f(self) -> float:
        """Timer F, non-INVITE transaction timeout: 64*T1."""
        return self._f

    def k(self, reliable: bool) -> float:
        """Timer K, wait time for response retransmits: T4 unreliable, 0 reliable."""
        return 0.0 if reliable else self.t4

    # -- INVITE server transaction (§17.2.1) ------------------------------

    def g(self) -> float:
        """Timer G, first non-2xx final response retransmit interval: T1."""
        return self.t1

    def g_next(self, previous: float) -> float:
        # §17.2.1: "MIN(2*T1, T2)", doubling, "unless that value exceeds T2".
        return min(previous * 2.0, self.t2)

    def h(self) -> float:
        """Timer H, wait time for ACK receipt: 64*T1."""
        return self._h

    def i(self, reliable: bool) -> float:
        """Timer I, wait time for ACK retransmits: T4 unreliable, 0 reliable."""
        return 0.0 if reliable else self.t4

    def l(self) -> float:  # noqa: E743 — the RFC's name
        """Timer L (RFC 6026 §7.1), IST Accepted wait for 2xx from TU / ACKs: 64*T1."""
        return self._l

    # -- non-INVITE server transaction (§17.2.2) --------------------------

    def j(self, reliable: bool) -> float:
        """Timer J, wait time for request retransmits: 64*T1 unreliable, 0 reliable."""
        return 0.0 if reliable else self._j

    # -- proxy (§16.6 step 11, §16.8) -------------------------------------

    def timer_c(self) -> float:
        """Timer C, proxy INVITE transaction timeout (> 3 min). Owned by the
        proxy, not by the transaction machines: it restarts on provisionals
        and its expiry means CANCEL (§16.8)."""
        return self.c

    def retransmit_schedule(self, timer: str, count: int) -> tuple[float, ...]:
        """The first `count` intervals of retransmit timer "A", "E" or "G" on an
        unreliable transport, while staying in the state that retransmits
        (Calling / Trying / Completed). For logs and tests."""
        first, step = {"A": (self.a, self.a_next), "E": (self.e, self.e_next),
                       "G": (self.g, self.g_next)}[timer]
        out, value = [], first()
        for _ in range(count):
            out.append(value)
            value = step(value)
        return tuple(out)


DEFAULT_TIMERS = TimerConfig()
