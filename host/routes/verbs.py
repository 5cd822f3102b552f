"""The host's side of the route contract: verb rules, decisions, the recorder.

The table itself (hooks, verbs with their parameters, event fields, host
calls) is `host.routes.contract`; `VERBS` and `HOOKS` here are derived from
it, and `Recorder` has one method per verb row (tests/contract checks that).
A route handles *events* (hooks) and answers each with at most one *decision*
plus any number of *edits*; a verb used in a hook that does not allow it is a
`VerbError` with a message naming both.

What an event without a decision means (the route "just returns"):
  on_request  -> relay to the (possibly edited) request URI, as a plain proxy would;
  on_failure  -> send the best final response upstream (RFC 3261 §16.7);
  on_reply    -> forward the reply (with any header edits applied).

The event a hook receives is a flat dict (cheap to hand to Lua, one JSON
object on the wire) with the fields of `contract.FIELDS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

# Decision lives below the core, which applies it (host/sip imports nothing above itself).
from host.sip.decision import Decision  # noqa: F401  (re-exported for runtimes and SDK tests)

from host.routes import contract
from host.routes.contract import DECISION, EDIT, HOOKS, ON_FAILURE, ON_REPLY, ON_REQUEST

@dataclass(frozen=True)
class Verb:
    """A row of contract.VERBS in the shape the host checks calls against."""

    name: str
    kind: str  # DECISION or EDIT
    hooks: frozenset[str]
    params: tuple[str, ...]  # in call order; optional ones end with "?"
    doc: str


VERBS: dict[str, Verb] = {
    v.name: Verb(v.name, v.kind, frozenset(v.hooks), tuple(p.spec for p in v.params), v.doc)
    for v in contract.VERBS
}

# Headers the core owns: a route may read them but not edit them, because
# transactions, routing and framing depend on them (RFC 3261 §16.6, §18.3).
PROTECTED_HEADERS = frozenset({
    "via", "call-id", "cseq", "from", "to", "content-length",
    "max-forwards", "route", "record-route",
})

REPLY_MAX = 699

# Per-call variables a route may keep (Decision.vars), in bytes as JSON writes
# them. The host keeps them for the whole call, outside any route's memory cap:
# 64 KiB, the most one SIP message over UDP can carry, is far more than routing
# state (numbers, names, attempts) needs and small enough for many calls.
VARS_MAX_BYTES = 64 * 1024


class VerbError(ValueError):
    """A route called a verb wrongly: wrong hook, bad arguments, a second decision."""


class Recorder:
    """Collects the verbs a route calls while handling one event, validating each.

    Every runtime funnels verb calls through one of these, so the rules (hook
    allowed, one decision per event, argument types, protected headers) are
    enforced in one place.
    """

    __slots__ = ("hook", "decision")

    def __init__(self, hook: str):
        self.hook = hook
        self.decision = Decision()

    def _check(self, name: str) -> None:
        verb = VERBS[name]
        if self.hook not in verb.hooks:
            allowed = ", ".join(sorted(verb.hooks))
            raise VerbError(f"{name}() is not allowed in {self.hook} (allowed in: {allowed})")
        if verb.kind == DECISION and self.decision.verb is not None:
            raise VerbError(f"{name}(): this event already has a decision ({self.decision.verb})")

    def reply(self, code, reason=None, headers=None) -> None:
        self._check("reply")
        code = _int(code, "reply", "code")
        lowest = 200 if self.hook == ON_FAILURE else 101  # 100 is the core's own
        if not lowest <= code <= REPLY_MAX:
            raise VerbError(f"reply(): code must be {lowest}-{REPLY_MAX} in {self.hook}, got {code}")
        d = self.decision
        d.verb, d.code = "reply", code
        d.reason = _str(reason, "reply", "reason") if reason is not None else ""
        d.headers = _header_pairs(headers, "reply")

    def relay(self, targets=None, opts=None) -> None:
        self._check("relay")
        d = self.decision
        if targets is None:
            d.targets = []
        elif isinstance(targets, str):
            d.targets = [targets]
        else:
            d.targets = [_str(t, "relay", "target") for t in _seq(targets, "relay", "targets")]
        opts = dict(opts or {})
        mode = opts.pop("mode", "parallel")
        if mode not in ("parallel", "serial"):
            raise VerbError(f"relay(): mode must be 'parallel' or 'serial', got {mode!r}")
        timeout = opts.pop("timeout", None)
        if timeout is not None:
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
                raise VerbError(f"relay(): timeout must be a positive number of seconds, got {timeout!r}")
            timeout = float(timeout)
        if opts:
            raise VerbError(f"relay(): unknown option(s) {', '.join(sorted(map(str, opts)))}")
        d.verb, d.parallel, d.timeout = "relay", mode == "parallel", timeout

    def redirect(self, contacts) -> None:
        self._check("redirect")
        if isinstance(contacts, str):
            contacts = [contacts]
        contacts = [_str(c, "redirect", "contact") for c in _seq(contacts, "redirect", "contacts")]
        if not contacts:
            raise VerbError("redirect(): needs at least one contact")
        self.decision.verb, self.decision.contacts = "redirect", contacts

    def drop(self) -> None:
        self._check("drop")
        self.decision.verb = "drop"

    def set_ruri(self, uri) -> None:
        self._check("set_ruri")
        uri = _str(uri, "set_ruri", "uri")
        if ":" not in uri:
            raise VerbError(f"set_ruri(): not a URI: {uri!r}")
        self.decision.edits.append(("set_ruri", uri))

    def set_header(self, name, value) -> None:
        self._header_edit("set_header", name, value)

    def add_header(self, name, value) -> None:
        self._header_edit("add_header", name, value)

    def remove_header(self, name) -> None:
        self._check("remove_header")
        self.decision.edits.append(("remove_header", _header_name(name, "remove_header")))

    def record_route(self) -> None:
        self._check("record_route")
        self.decision.edits.append(("record_route",))

    def set_vars(self, values) -> None:
        if values is not None and not isinstance(values, dict):
            raise VerbError("vars must be a table/dict of simple values")
        if values:
            try:
                size = len(orjson.dumps(values))
            except (TypeError, orjson.JSONEncodeError):
                raise VerbError("vars must hold only strings, numbers, booleans, lists and tables") from None
            if size > VARS_MAX_BYTES:
                raise VerbError(f"vars take {size} bytes as JSON, more than the {VARS_MAX_BYTES} allowed per call")
        self.decision.vars = values

    def _header_edit(self, verb, name, value) -> None:
        self._check(verb)
        name = _header_name(name, verb)
        value = _str(value, verb, "value")
        if "\r" in value or "\n" in value:
            raise VerbError(f"{verb}(): header value may not contain CR or LF")
        self.decision.edits.append((verb, name, value))

    def apply(self, verb: str, args: list) -> None:
        """Call a verb by name with positional args (used by the line-JSON runtimes)."""
        if verb not in VERBS:
            raise VerbError(f"unknown verb {verb!r}")
        if not isinstance(args, list):
            raise VerbError(f"{verb}(): args must be a list")
        spec = VERBS[verb].params
        required = sum(1 for p in spec if not p.endswith("?"))
        if not required <= len(args) <= len(spec):
            raise VerbError(f"{verb}(): takes {required}-{len(spec)} arguments, got {len(args)}")
        getattr(self, verb)(*args)


def _int(v, verb, what):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise VerbError(f"{verb}(): {what} must be an integer, got {v!r}")
    return int(v)


def _str(v, verb, what):
    if not isinstance(v, str):
        raise VerbError(f"{verb}(): {what} must be a string, got {type(v).__name__}")
    return v


def _seq(v, verb, what):
    if isinstance(v, (list, tuple)):
        return v
    if isinstance(v, dict):  # a Lua array arrives as a 1-based dict
        return [v[k] for k in sorted(v)]
    raise VerbError(f"{verb}(): {what} must be a list, got {type(v).__name__}")


def _header_name(name, verb):
    name = _str(name, verb, "header name")
    if not name or any(c in name for c in " :\t\r\n"):
        raise VerbError(f"{verb}(): bad header name {name!r}")
    if name.lower() in PROTECTED_HEADERS:
        raise VerbError(f"{verb}(): {name} is managed by the SIP core and cannot be edited")
    return name


def _header_pairs(headers, verb):
    if not headers:
        return []
    if isinstance(headers, dict):
        items = list(headers.items())
    else:
        items = [tuple(h) for h in _seq(headers, verb, "headers")]
    out = []
    for item in items:
        if len(item) != 2:
            raise VerbError(f"{verb}(): headers must be name/value pairs")
        out.append((_header_name(item[0], verb), _str(item[1], verb, "header value")))
    return out
