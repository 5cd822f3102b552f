"""What a route sees: the request (`Request`), a reply (`Reply`), the store.

Verbs only *record* calls; the runner sends them as one decision message when
the hook returns, and the host validates them against its verb table. The
checks here are the cheap ones that give the script an error at the line that
made it (a second decision, a verb in the wrong hook).
"""

from __future__ import annotations

# Which hooks may call which verb: mirrors host/routes/verbs.py VERBS.
_ALLOWED = {
    "reply": ("on_request", "on_failure"),
    "relay": ("on_request", "on_failure"),
    "redirect": ("on_request", "on_failure"),
    "drop": ("on_request", "on_reply"),
    "set_ruri": ("on_request", "on_failure"),
    "set_header": ("on_request", "on_failure", "on_reply"),
    "add_header": ("on_request", "on_failure", "on_reply"),
    "remove_header": ("on_request", "on_failure", "on_reply"),
    "record_route": ("on_request",),
}
_DECISIONS = frozenset({"reply", "relay", "redirect", "drop"})


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
        """Any other host call by name (PROTOCOL.md "Host calls")."""
        return self._session.call(op, list(args), self._event)


class Request:
    """One event of one call, as an object. Attributes mirror the event dict
    of PROTOCOL.md; verbs mirror the host verb table."""

    __slots__ = ("_ev", "_hook", "_verbs", "_decided", "_vars0", "vars", "store", "reply_info")

    def __init__(self, hook: str, event: dict, store: Store | None = None):
        self._ev = event
        self._hook = hook
        self._verbs: list = []
        self._decided = None
        v = event.get("vars")
        self.vars = dict(v) if isinstance(v, dict) else {}
        self._vars0 = dict(self.vars)
        self.store = store
        r = event.get("reply")
        self.reply_info = Reply(r) if isinstance(r, dict) else None

    # -- event fields ---------------------------------------------------
    hook = property(lambda self: self._hook)
    method = property(lambda self: self._ev.get("method", ""))
    ruri = property(lambda self: self._ev.get("ruri", ""))
    ruri_user = property(lambda self: self._ev.get("ruri_user", ""))
    ruri_host = property(lambda self: self._ev.get("ruri_host", ""))
    from_uri = property(lambda self: self._ev.get("from_uri", ""))
    from_tag = property(lambda self: self._ev.get("from_tag", ""))
    to_uri = property(lambda self: self._ev.get("to_uri", ""))
    to_tag = property(lambda self: self._ev.get("to_tag", ""))
    call_id = property(lambda self: self._ev.get("call_id", ""))
    cseq = property(lambda self: self._ev.get("cseq", 0))
    source_ip = property(lambda self: self._ev.get("source_ip", ""))
    source_port = property(lambda self: self._ev.get("source_port", 0))
    transport = property(lambda self: self._ev.get("transport", ""))
    in_dialog = property(lambda self: bool(self._ev.get("in_dialog", False)))
    body = property(lambda self: self._ev.get("body", ""))
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

    # -- for the runner -------------------------------------------------
    def decision_message(self, ident) -> dict:
        msg = {"type": "decision", "id": ident, "verbs": self._verbs}
        if self.vars != self._vars0:
            msg["vars"] = self.vars
        return msg

    def __repr__(self):
        return f"<Request {self.method} {self.ruri}>"


class StoreError(Exception):
    """The host refused a store call (bad key, not an integer, unknown op)."""
