"""The records the proxy core files away and gets back: timer keys and consults.

Timer keys travel through the shell (`Arm`, `Disarm`, `ProxyCore.timer`) and
so hold plain values only — a transaction key, a timer name, a generation —
never a reference to call state: a pending timer must not keep a finished
call alive (Timer C lasts 180 s). NamedTuples, so the shell's timer table
hashes and compares them as cheaply as the bare tuples they replace, and a
key of the wrong kind is a type, not a misspelt string.

Consult records stay inside the core (`ProxyCore._consults`, by token) and say
what the route's answer is for; they may reference the call, whose consult is
outstanding anyway.
"""

from __future__ import annotations

from typing import NamedTuple

# A NamedTuple's generated __new__ is a Python function: 136 ns a key against
# 64 ns for `new_key(ClientTimer, (txn_key, name, generation))`, which the hot
# paths use (about 12 keys a call: a 1 % of the core's time per call).
new_key = tuple.__new__


# ----------------------------------------------------------------- timer keys
class ClientTimer(NamedTuple):
    """A timer of a client transaction's own machine (§17.1: A, B, D, E, F, K)."""
    txn_key: tuple
    name: str
    generation: int


class ServerTimer(NamedTuple):
    """A timer of a server transaction's own machine (§17.2: G, H, I, J, L)."""
    txn_key: tuple
    name: str
    generation: int


class BranchTimer(NamedTuple):
    """The one timer of a branch, by its client transaction's key: Timer C
    (§16.8), the route's per-branch timeout, or the give-up after our CANCEL."""
    txn_key: tuple
    generation: int


class ForgetTimer(NamedTuple):
    """The end of a dropped request, by its server transaction's key: until
    then its retransmissions are absorbed instead of reaching the route."""
    txn_key: tuple
    generation: int


class DialogTimer(NamedTuple):
    """A tracked dialog's maximum duration ran out, by its Call-ID and From tag."""
    call_id: str
    from_tag: str


# ------------------------------------------------------------ consult records
class RequestConsult(NamedTuple):
    """on_request for the initial request of `ctx`."""
    ctx: object


class FailureConsult(NamedTuple):
    """on_failure: every branch of `ctx` has failed."""
    ctx: object


class ReplyConsult(NamedTuple):
    """on_reply for the first response in `ctx.reply_queue`."""
    ctx: object


class AckConsult(NamedTuple):
    """on_request for an ACK of a 2xx, which has no transaction (§16.6)."""
    request: object
    source: tuple
