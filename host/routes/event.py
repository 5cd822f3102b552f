"""The event a route script sees, built from the core's `Consult` (see verbs.py).

The core hands over its request and reply objects; this is the one place they
become the flat dict of the route contract. The fields a route reads on
nearly every event (method, URIs, tags, source) are filled at once; the
header lists and the body are built only when read (`ScriptEvent`), so a Lua
route that looks at two fields does not pay for copying every header. A
runtime that serializes the whole event (line-JSON) takes `plain()`.
"""

from __future__ import annotations

from host.services.location import local_domain
from host.sip.actions import Consult
from host.sip.decision import ON_REQUEST
from host.sip.digest import DigestError, parse_credentials
from host.sip.errors import BadMessage
from host.sip.headers import display_name, tag_of, uri_of
from host.sip.message import Request, Response


def digest_username(req: Request) -> str:
    """Who the request's digest credentials say they are (Authorization for
    a REGISTER, Proxy-Authorization otherwise, RFC 3261 §22), so the route
    can look up that user's password; empty without credentials."""
    name = "authorization" if req.method == "REGISTER" else "proxy-authorization"
    for value in req.header_values(name):
        try:
            return parse_credentials(value).username
        except DigestError:
            continue
    return ""


def _header_list(message) -> list[list[str]]:
    return [[display_name(k), v] for k, v in message.headers]


class ScriptEvent(dict):
    """A dict whose costly entries ("headers", and "body" of a request) are
    built from the message on first read, by `[]` or `get`, and then kept.

    A dict subclass, not a Mapping, because Lua (lupa) indexes it like a dict
    and the route table and runtimes call `get`. `in`, `len` and iteration
    see only what was built so far: hand `plain()` to code that walks it.
    The message is only read, never changed, while the event is handled
    (the core changes it only once the decision is back)."""

    __slots__ = ("_message",)

    def __init__(self, message, fields):
        super().__init__(fields)
        self._message = message

    def __missing__(self, key):
        value = self._build(key)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def get(self, key, default=None):
        # No KeyError raised and caught for a key that is there, nor for a
        # missing "reply", which every request is asked for.
        if key in self:
            return dict.__getitem__(self, key)
        value = self._build(key)
        return default if value is _ABSENT else value

    def _build(self, key):
        """A costly entry, built from the message and kept; _ABSENT for a
        key this event does not have."""
        message = self._message
        if key == "headers":
            value = _header_list(message)
        elif key == "body" and isinstance(message, Request):
            value = message.body.decode("utf-8", "replace")
        elif key == "auth_user" and isinstance(message, Request) and self["hook"] == ON_REQUEST:
            value = digest_username(message)
        else:
            return _ABSENT
        self[key] = value
        return value

    def plain(self) -> dict:
        """Every field built, as a plain dict in the contract's order (nested
        reply included): for runtimes that serialize the whole event."""
        out = {}
        for key in _ORDER:
            value = self.get(key, _ABSENT)
            if value is not _ABSENT:
                out[key] = value.plain() if type(value) is ScriptEvent else value
        return out


_ABSENT = object()
_ORDER = ("hook", "method", "ruri", "ruri_user", "ruri_host", "ruri_local", "call_id", "cseq", "from_uri",
          "from_tag", "to_uri", "to_tag", "source_ip", "source_port", "transport", "in_dialog",
          "auth_user", "headers", "body", "vars", "reply", "code", "reason")


def script_event(consult: Consult) -> ScriptEvent:
    """The event of `consult`, lazy in its header lists and body."""
    req = consult.request
    transport, ip, port = consult.source
    try:
        uri = req.parsed_uri   # shared by every request to the same URI: read only
        ruri_user, ruri_host = uri.user or "", uri.host
        ruri_local = local_domain(uri.host, uri.port) is not None
    except BadMessage:
        ruri_user = ruri_host = ""
        ruri_local = False
    from_value, to_value = req.header("from"), req.header("to")
    vars = consult.vars
    event = ScriptEvent(req, {
        "hook": consult.hook,
        "method": req.method,
        "ruri": req.uri,
        "ruri_user": ruri_user,
        "ruri_host": ruri_host,
        "ruri_local": ruri_local,
        "call_id": req.call_id,
        "cseq": req.cseq,
        "from_uri": uri_of(from_value),
        "from_tag": tag_of(from_value) or "",
        "to_uri": uri_of(to_value),
        "to_tag": tag_of(to_value) or "",
        "source_ip": ip,
        "source_port": port,
        "transport": transport,
        "in_dialog": consult.in_dialog,
        "vars": vars if vars is not None else {},
    })
    reply: Response | None = consult.reply
    if reply is not None:
        event["reply"] = ScriptEvent(reply, {"code": reply.status, "reason": reply.reason})
    return event


def request_event(hook: str, req: Request, source: tuple[str, str, int], *,
                  in_dialog: bool, vars: dict | None, reply: Response | None = None) -> dict:
    """The whole event as a plain dict (tests, tools)."""
    return script_event(Consult(0, hook, req, reply, source, in_dialog, vars, None)).plain()
