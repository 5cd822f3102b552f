"""What a route sees: the request (`Request`), a reply (`Reply`), and the
host's services: the store (`Store`), the registrar's bindings (`Registrar`)
and the dialog profiles (`Dialog`).

Verbs only *record* calls; the runner sends them as one decision message when
the hook returns, and the host validates them against its verb table. The
checks here are the cheap ones that give the script an error at the line that
made it (a second decision, a verb in the wrong hook).
"""

from __future__ import annotations

from babelsip_sdk.contract import ALLOWED as _ALLOWED
from babelsip_sdk.contract import DECISIONS as _DECISIONS
from babelsip_sdk.contract import VALUE_FIELDS


class VerbError(ValueError):
    """A verb called where or how the contract does not allow."""


def _find(headers, name):
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


class Reply:
    """The reply an on_failure/on_reply hook is about."""

    __slots__ = ("code", "reason", "_headers")

    def __init__(self, data: dict):
        self.code = data.get("code", 0)
        self.reason = data.get("reason", "")
        self._headers = data.get("headers") or []

    def header(self, name):
        found = _find(self._headers, name)
        return found[0] if found else None

    def headers(self, name=None):
        if name is None:
            return [tuple(h) for h in self._headers]
        return _find(self._headers, name)

    def __repr__(self):
        return f"<Reply {self.code} {self.reason}>"


class Store:
    """The host's key/value store with TTL. Each call is a round trip to the
    host; it blocks this handler (not the worker's other events when the
    route sets CONCURRENCY > 1)."""

    __slots__ = ("_session", "_event")

    def __init__(self, session, event_id):
        self._session, self._event = session, event_id

    def get(self, key):
        return self._session.call("kv.get", [key], self._event)

    def set(self, key, value, ttl=None):
        self._session.call("kv.set", [key, value, ttl], self._event)

    def delete(self, key):
        return self._session.call("kv.delete", [key], self._event)

    def incr(self, key, delta=1, ttl=None):
        return self._session.call("kv.incr", [key, delta, ttl], self._event)

    def call(self, op, *args):
        """Any host call by name (PROTOCOL.md "Host calls"), e.g. one this SDK
        version does not wrap yet."""
        return self._session.call(op, list(args), self._event)


class _Service:
    __slots__ = ("_session", "_event")

    def __init__(self, session, event_id):
        self._session, self._event = session, event_id

    def _call(self, op, *args):
        if self._session is None:
            raise StoreError(f"{op}: the request is not connected to a host")
        return self._session.call(op, list(args), self._event)


class Registrar(_Service):
    """The registrar's location service, read-only (`req.registrar`)."""

    __slots__ = ()

    def lookup(self, aor):
        """The live bindings of an address-of-record (a sip: URI), best q first:
        dicts with contact, expires (seconds left), q, received, transport,
        path, user_agent, instance, reg_id."""
        return self._call("registrar.lookup", aor)


class Dialog(_Service):
    """The calls tracked as dialogs (`req.dialog`): see `Request.add_profile`."""

    __slots__ = ()

    def count(self, profile, key=None):
        """How many calls are active in `profile` (under `key`, default none)."""
        args = [profile] if key is None else [profile, key]
        return self._call("dialog.count", *args)


class Request:
    """One event of one call, as an object. Attributes mirror the event dict
    of PROTOCOL.md; verbs mirror the host verb table."""

    __slots__ = ("_ev", "_hook", "_verbs", "_decided", "_vars0", "vars", "store", "registrar",
                 "dialog", "reply_info")

    def __init__(self, hook: str, event: dict, store: Store | None = None):
        self._ev = event
        self._hook = hook
        self._verbs: list = []
        self._decided = None
        v = event.get("vars")
        self.vars = dict(v) if isinstance(v, dict) else {}
        self._vars0 = dict(self.vars)
        self.store = store
        session, event_id = (store._session, store._event) if store is not None else (None, None)
        self.registrar = Registrar(session, event_id)
        self.dialog = Dialog(session, event_id)
        r = event.get("reply")
        self.reply_info = Reply(r) if isinstance(r, dict) else None

    # -- event fields ---------------------------------------------------
    # The other fields (method, ruri, cseq ...) are properties made from the
    # contract's field table below the class.
    hook = property(lambda self: self._hook)
    event = property(lambda self: self._ev)

    def header(self, name):
        """First value of a header (case-insensitive name), or None."""
        found = _find(self._ev.get("headers") or (), name)
        return found[0] if found else None

    def headers(self, name=None):
        """All values of a header; without a name, every (name, value) pair."""
        if name is None:
            return [tuple(h) for h in self._ev.get("headers") or ()]
        return _find(self._ev.get("headers") or (), name)

    # -- verbs ----------------------------------------------------------
    def _verb(self, name, *args):
        if self._hook not in _ALLOWED[name]:
            raise VerbError(f"{name}() is not allowed in {self._hook}")
        if name in _DECISIONS:
            if self._decided:
                raise VerbError(f"{name}(): this event already has a decision ({self._decided})")
            self._decided = name
        self._verbs.append([name, *args])

    def reply(self, code, reason=None, headers=None):
        args = [code]
        if reason is not None or headers is not None:
            args.append(reason)
        if headers is not None:
            args.append([list(h) for h in (headers.items() if isinstance(headers, dict) else headers)])
        self._verb("reply", *args)

    def relay(self, targets=None, mode=None, timeout=None):
        opts = {}
        if mode is not None:
            opts["mode"] = mode
        if timeout is not None:
            opts["timeout"] = timeout
        if isinstance(targets, tuple):
            targets = list(targets)
        if opts:
            self._verb("relay", targets, opts)
        elif targets is not None:
            self._verb("relay", targets)
        else:
            self._verb("relay")

    def redirect(self, contacts):
        self._verb("redirect", [contacts] if isinstance(contacts, str) else list(contacts))

    def drop(self):
        self._verb("drop")

    def set_ruri(self, uri):
        self._verb("set_ruri", uri)

    def set_header(self, name, value):
        self._verb("set_header", name, value)

    def add_header(self, name, value):
        self._verb("add_header", name, value)

    def remove_header(self, name):
        self._verb("remove_header", name)

    def record_route(self):
        self._verb("record_route")

    # -- services: the route decides whether, the core does the RFC work ---
    def authenticate(self, realm, *, password=None, ha1=None, credentials=None,
                     algorithms=None, identity=None):
        """Require digest credentials before the decision applies (the core
        answers the 401/407 challenge without them). Give the password (or
        ha1) of `req.auth_user`, or `credentials`, a file beside the routes."""
        opts = _options(password=password, ha1=ha1, credentials=credentials,
                        algorithms=[algorithms] if isinstance(algorithms, str) else
                        (list(algorithms) if algorithms is not None else None),
                        identity=identity)
        self._verb("authenticate", realm, *([opts] if opts else []))

    def save(self, *, aor=None, min_expires=None, max_expires=None, default_expires=None,
             max_contacts=None):
        """Registrar: apply this REGISTER's bindings and answer it."""
        opts = _options(aor=aor, min_expires=min_expires, max_expires=max_expires,
                        default_expires=default_expires, max_contacts=max_contacts)
        self._verb("save", *([opts] if opts else []))

    def lookup(self, *, aor=None, code=None, reason=None, timeout=None):
        """Relay to the registered bindings of the request URI's AoR (or `aor`);
        without any, reply `code` (default 404) `reason`."""
        opts = _options(aor=aor, code=code, reason=reason, timeout=timeout)
        self._verb("lookup", *([opts] if opts else []))

    def fix_contact(self):
        """Rewrite the Contact of a UA behind a NAT to where the message came from."""
        self._verb("fix_contact")

    def limit_duration(self, seconds):
        """End the call (BYE both ways) after this many seconds."""
        self._verb("limit_duration", seconds)

    def add_profile(self, name, key=None):
        """Count the call in a profile (under `key`) while it lasts: `req.dialog.count`."""
        if key is None:
            self._verb("add_profile", name)
        else:
            self._verb("add_profile", name, key)

    # -- for the runner -------------------------------------------------
    def decision_message(self, ident) -> dict:
        msg = {"type": "decision", "id": ident, "verbs": self._verbs}
        if self.vars != self._vars0:
            msg["vars"] = self.vars
        return msg

    def __repr__(self):
        return f"<Request {self.method} {self.ruri}>"


def _options(**given):
    return {k: v for k, v in given.items() if v is not None}


def _field(name, default):
    if isinstance(default, bool):
        return property(lambda self: bool(self._ev.get(name, default)))
    return property(lambda self: self._ev.get(name, default))


for _name, _default in VALUE_FIELDS.items():
    setattr(Request, _name, _field(_name, _default))
del _name, _default


class StoreError(Exception):
    """The host refused a store call (bad key, not an integer, unknown op)."""
