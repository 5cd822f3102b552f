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

    # ------------------------------------------------------------ services
    def authenticate(self, realm, opts=None) -> None:
        self._check("authenticate")
        realm = _str(realm, "authenticate", "realm")
        if not realm or '"' in realm or "\\" in realm or "\r" in realm or "\n" in realm:
            raise VerbError(f"authenticate(): bad realm {realm!r}")
        opts = _opts(opts, "authenticate", AUTH_OPTIONS)
        if "algorithms" in opts:
            algorithms = opts["algorithms"]
            if isinstance(algorithms, str):
                algorithms = [algorithms]
            algorithms = [_str(a, "authenticate", "algorithm").upper()
                          for a in _seq(algorithms, "authenticate", "algorithms")]
            unknown = [a for a in algorithms if a not in AUTH_ALGORITHMS]
            if unknown or not algorithms:
                raise VerbError(f"authenticate(): algorithms must be some of "
                                f"{', '.join(AUTH_ALGORITHMS)}, got {opts['algorithms']!r}")
            opts["algorithms"] = algorithms
        for name in ("password", "credentials"):
            if opts.get(name) is not None:
                _str(opts[name], "authenticate", name)
        ha1 = opts.get("ha1")
        if ha1 is not None and not isinstance(ha1, str):
            if not isinstance(ha1, dict) or not all(isinstance(v, str) for v in ha1.values()):
                raise VerbError("authenticate(): ha1 must be a hex string (MD5) or a table "
                                "of algorithm -> hex string")
            opts["ha1"] = {str(k).upper(): v for k, v in ha1.items()}
        credentials = opts.get("credentials")
        if credentials is not None and (not credentials or "/" in credentials
                                        or "\\" in credentials or credentials.startswith(".")):
            raise VerbError(f"authenticate(): credentials names a file beside the routes, "
                            f"got {credentials!r}")
        if "identity" in opts and not isinstance(opts["identity"], bool):
            raise VerbError("authenticate(): identity must be true or false")
        opts["realm"] = realm
        self.decision.auth = opts

    def save(self, opts=None) -> None:
        self._check("save")
        opts = _opts(opts, "save", SAVE_OPTIONS)
        for name in ("min_expires", "max_expires", "default_expires", "max_contacts"):
            if name in opts:
                opts[name] = _int(opts[name], "save", name)
                if opts[name] < 0:
                    raise VerbError(f"save(): {name} must not be negative")
        if "aor" in opts:
            _aor(opts["aor"], "save")
        self.decision.verb, self.decision.options = "save", opts

    def lookup(self, opts=None) -> None:
        self._check("lookup")
        opts = _opts(opts, "lookup", LOOKUP_OPTIONS)
        if "aor" in opts:
            _aor(opts["aor"], "lookup")
        if "code" in opts:
            opts["code"] = code = _int(opts["code"], "lookup", "code")
            if not 300 <= code <= REPLY_MAX:
                raise VerbError(f"lookup(): code must be 300-{REPLY_MAX}, got {code}")
        if "reason" in opts:
            _str(opts["reason"], "lookup", "reason")
        if "timeout" in opts:
            opts["timeout"] = _seconds(opts["timeout"], "lookup", "timeout")
        self.decision.verb, self.decision.options = "lookup", opts
        self.decision.timeout = opts.get("timeout")

    def fix_contact(self) -> None:
        self._check("fix_contact")
        self.decision.edits.append(("fix_contact",))

    def limit_duration(self, seconds) -> None:
        self._check("limit_duration")
        self._dialog()["max_duration"] = _seconds(seconds, "limit_duration", "seconds")

    def add_profile(self, name, key=None) -> None:
        self._check("add_profile")
        name = _str(name, "add_profile", "name")
        key = "" if key is None else _str(key, "add_profile", "key")
        if not name or len(name) > 128 or len(key) > 256:
            raise VerbError("add_profile(): name must be 1-128 characters, key at most 256")
        profiles = self._dialog()["profiles"]
        if name not in profiles and len(profiles) >= MAX_PROFILES:
            raise VerbError(f"add_profile(): at most {MAX_PROFILES} profiles per call")
        profiles[name] = key

    def _dialog(self) -> dict:
        if self.decision.dialog is None:
            self.decision.dialog = {"max_duration": None, "profiles": {}}
        return self.decision.dialog

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


AUTH_ALGORITHMS = ("SHA-512-256", "SHA-256", "MD5")   # strongest first (RFC 7616 §3.7)
AUTH_OPTIONS = frozenset({"password", "ha1", "credentials", "algorithms", "identity"})
SAVE_OPTIONS = frozenset({"aor", "min_expires", "max_expires", "default_expires", "max_contacts"})
LOOKUP_OPTIONS = frozenset({"aor", "code", "reason", "timeout"})
MAX_PROFILES = 16


def _opts(opts, verb, known) -> dict:
    if opts is None or (isinstance(opts, (list, tuple)) and not opts):
        return {}   # an empty Lua table arrives as an empty list
    if not isinstance(opts, dict):
        raise VerbError(f"{verb}(): options must be a table/dict, got {type(opts).__name__}")
    opts = {k: v for k, v in opts.items() if v is not None}
    unknown = [str(k) for k in opts if k not in known]
    if unknown:
        raise VerbError(f"{verb}(): unknown option(s) {', '.join(sorted(unknown))} "
                        f"(known: {', '.join(sorted(known))})")
    return opts


def _seconds(v, verb, what) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 31 * 86400:
        raise VerbError(f"{verb}(): {what} must be a positive number of seconds, got {v!r}")
    return float(v)


def _aor(v, verb) -> str:
    v = _str(v, verb, "aor")
    if not (v.startswith("sip:") or v.startswith("sips:")) or "@" not in v:
        raise VerbError(f"{verb}(): aor must be a sip: URI with a user, got {v!r}")
    return v


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
