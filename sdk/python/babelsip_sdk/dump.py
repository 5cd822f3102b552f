"""`python -m babelsip_sdk.runner --dump-contract`: what this SDK offers, as JSON.

The contract tests (tests/contract) compare this with the host's table. The
names are found by trying the SDK's own objects, not read from a list, so a
wrapper that is missing, misnamed or sends the wrong wire name shows up:
every public method of `Request` is called in every hook on a fresh request
(arguments are placeholders); one that records a verb, or refuses with
VerbError, is a verb, any other public name is an event accessor, and the
event keys it reads are recorded. The methods of the host-call objects
(req.store, req.registrar, req.dialog) are called on a fake session that
records the op they send. The Perl and Java runners print the same shape.
"""

from __future__ import annotations

import inspect

from babelsip_sdk.loader import HOOKS
from babelsip_sdk.request import Dialog, Registrar, Request, Store, VerbError

# Public names that are the runner's, not the route's.
_NOT_ROUTE_API = {"decision_message"}


class _ReadLog(dict):
    """An empty event that remembers which keys were asked for."""

    def __init__(self):
        super().__init__()
        self.read: list[str] = []

    def get(self, key, default=None):
        self.read.append(key)
        return default

    def __getitem__(self, key):
        self.read.append(key)
        raise KeyError(key)


class _CallLog:
    def __init__(self):
        self.ops: list[str] = []

    def call(self, op, args, event):
        self.ops.append(op)
        return 1   # a plausible answer for every op (incr wants a number)


def _placeholders(fn) -> list:
    sig = inspect.signature(fn)
    return ["x" for p in list(sig.parameters.values())[1:]
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _try(name, hook):
    """(verb sent or None, refused as a verb?, event keys read) for one call."""
    ev = _ReadLog()
    req = Request(hook, ev)
    ev.read.clear()  # reads made by the constructor belong to no accessor
    attr = getattr(type(req), name)
    try:
        if callable(attr):
            getattr(req, name)(*_placeholders(attr))
        else:
            getattr(req, name)
    except VerbError:
        return None, True, ev.read
    verbs = req.decision_message(1)["verbs"]
    return (verbs[0][0] if verbs else None), False, ev.read


def _is_decision(name, hook) -> bool:
    req = Request(hook, {})
    method = getattr(req, name)
    args = _placeholders(getattr(Request, name))
    method(*args)
    try:
        method(*args)
    except VerbError:
        return True
    return False


def dump() -> dict:
    verbs, fields = {}, {}
    names = sorted(n for n in dir(Request) if not n.startswith("_") and n not in _NOT_ROUTE_API)
    for name in names:
        tries = {hook: _try(name, hook) for hook in HOOKS}
        sent = {s for s, _, _ in tries.values() if s}
        if sent or any(refused for _, refused, _ in tries.values()):
            allowed = [h for h, (s, _, _) in tries.items() if s]
            verbs[name] = {"sends": sorted(sent)[0] if sent else None, "hooks": allowed,
                           "decision": bool(allowed) and _is_decision(name, allowed[0])}
        else:
            fields[name] = sorted({k for _, _, read in tries.values() for k in read})
    # Instance attributes of the request (slots) are accessors too: vars, store, reply_info.
    for name in Request.__slots__:
        if not name.startswith("_"):
            fields.setdefault(name, [])
    out = {"sdk": "python", "hooks": list(HOOKS), "verbs": verbs, "fields": fields}
    for key, cls in (("store", Store), ("registrar", Registrar), ("dialog", Dialog)):
        out[key] = _host_calls(cls)
    return out


def _host_calls(cls) -> dict:
    """{method: op it sends} of one host-call object."""
    found = {}
    for name in sorted(n for n in dir(cls) if not n.startswith("_") and n != "call"):
        log = _CallLog()
        getattr(cls(log, 1), name)(*_placeholders(getattr(cls, name)))
        found[name] = log.ops[0] if log.ops else None
    return found
