"""The registrar's rules (RFC 3261 §10.2-10.3; RFC 3327 Path; RFC 5626 outbound basics).

Pure functions over a parsed REGISTER, the current bindings of one
address-of-record and the wall-clock time, which the caller passes in: no
sockets, no store, no clock. The shell reads the bindings, calls
`parse_register` and `apply_update` inside the store's atomic update, and
answers with `ok_headers` or with the `RegistrarError` raised on the way.

    update = parse_register(req, settings, source=src, core=core_id, now=now)
    new = apply_update(current, update, settings)      # raises RegistrarError
    reply 200 with ok_headers(new, update)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from .errors import BadMessage
from .headers import parse_name_addr, split_commas, unquote_string
from .message import Request
from .uri import URI, parse_uri

__all__ = [
    "Settings", "Binding", "RegistrarError", "ContactUpdate", "RegisterUpdate",
    "address_of_record", "parse_register", "apply_update", "ok_headers", "live", "branch_groups",
]

# Expires values are delta-seconds below 2**32 (RFC 3261 §20.19); any value
# longer than this many digits is huge and clamps to max_expires, so int()
# never sees a megabyte of digits.
_MAX_EXPIRES_DIGITS = 10
_DELTA_SECONDS = re.compile(r"[0-9]+")
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )  (RFC 3261 §25.1)
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
# reg-id = 1*DIGIT, from 1 to 2**31-1 (RFC 5626 §4.2, §12).
_REG_ID = re.compile(r"[1-9][0-9]{0,9}")
_REG_ID_MAX = 2**31 - 1
_ONE_HOUR = 3600


@dataclass(slots=True)
class Settings:
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10   # 0 = no limit


@dataclass(slots=True)
class Binding:
    """One registered contact of an address-of-record, as the store keeps it."""

    contact: str                    # the Contact URI as registered, without <>
    expires_at: float               # wall-clock seconds, so several cores agree
    q: float                        # 0.0-1.0
    call_id: str
    cseq: int
    source: tuple[str, str, int]    # (transport, ip, port) the REGISTER came from
    path: tuple[str, ...]           # Path values in order (RFC 3327)
    user_agent: str
    instance: str                   # +sip.instance without its quotes, "" when absent
    reg_id: int                     # 0 when absent (or not used, see parse_register)
    core: str                       # the core process that owns the flow
    registered_at: float            # first registration under this Call-ID
    nat: bool = False               # registered from behind a NAT: reach it at `source`

    def expires_in(self, now: float) -> int:
        """Whole seconds left, rounded; never 0 while the binding is live, so
        a 200 cannot tell a UA that a binding we keep was removed."""
        remaining = self.expires_at - now
        if remaining <= 0:
            return 0
        return max(1, round(remaining))

    def to_dict(self) -> dict:
        return {
            "contact": self.contact, "expires_at": self.expires_at, "q": self.q,
            "call_id": self.call_id, "cseq": self.cseq, "source": list(self.source),
            "path": list(self.path), "user_agent": self.user_agent, "instance": self.instance,
            "reg_id": self.reg_id, "core": self.core, "registered_at": self.registered_at,
            "nat": self.nat,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Binding:
        transport, ip, port = d["source"]
        return cls(d["contact"], float(d["expires_at"]), float(d["q"]), d["call_id"], int(d["cseq"]),
                   (transport, ip, int(port)), tuple(d["path"]), d["user_agent"], d["instance"],
                   int(d["reg_id"]), d["core"], float(d["registered_at"]), bool(d.get("nat", False)))


class RegistrarError(Exception):
    """The registrar refuses the REGISTER; `status`, `reason` and `headers`
    are the answer to send (e.g. 423 with Min-Expires)."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] = ()):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = list(headers)

    def __repr__(self) -> str:
        return f"RegistrarError({self.status}, {self.reason!r})"


@dataclass(slots=True)
class ContactUpdate:
    uri: str
    expires: int        # seconds granted (after clamping); 0 removes
    q: float
    instance: str
    reg_id: int


@dataclass(slots=True)
class RegisterUpdate:
    """What a REGISTER asks for, checked (§10.3 step 6)."""

    star: bool                      # "Contact: *" with Expires: 0
    contacts: list[ContactUpdate]   # empty and star False: a query
    call_id: str
    cseq: int
    path: tuple[str, ...]
    user_agent: str
    source: tuple[str, str, int]
    core: str
    now: float
    supported: frozenset[str] = field(default_factory=frozenset)   # option tags, lower-case
    nat: bool = False               # the UA is behind a NAT (the caller decides: nat.py)


# --------------------------------------------------------------- §10.3 step 5

def address_of_record(uri_text: str, local_domain: Callable[[str, int | None], str | None]) -> str:
    """The canonical AoR "sip:user@domain" of a To value or a URI (§10.3 step 5):
    URI parameters, password and port dropped, the user unescaped (and
    otherwise compared as is: user parts are case-sensitive, §19.1.4), the
    host lower-cased, or replaced by the name `local_domain(host, port)`
    gives for one of our own addresses.

    sips is folded into sip: RFC 5630 §3.1.1 says a sips AoR and the sip AoR
    with the same user and domain are one resource, so a UA registering over
    TLS and one registering over UDP land in one record. The result is an
    index key, not a URI to send to: an unescaped user may hold ';' or '@'.
    """
    try:
        uri = parse_uri(parse_name_addr(uri_text).uri)
    except BadMessage as exc:
        raise RegistrarError(400, f"Bad To URI ({exc.reason})") from None
    # §10.3 step 3: an AoR this registrar cannot hold is a 404; a tel URI or
    # a bare domain names no user to register.
    if uri.scheme == "tel" or not uri.user:
        raise RegistrarError(404, "Not Found (no user in the address-of-record)")
    host = uri.host.lower()
    return f"sip:{uri.user_unescaped}@{local_domain(host, uri.port) or host}"


# --------------------------------------------------------------- §10.3 step 6

def parse_register(req: Request, settings: Settings, *, source: tuple[str, str, int], core: str,
                   now: float) -> RegisterUpdate:
    """Read and check the Contacts, expiry, Path, User-Agent and Supported of
    a REGISTER. Raises only RegistrarError (400, 416, 423), before any
    binding changes."""
    try:
        return _read_register(req, settings, source, core, now)
    except BadMessage as exc:
        raise RegistrarError(exc.status or 400, f"Bad Request ({exc.reason})") from None


def _read_register(req: Request, settings: Settings, source: tuple[str, str, int], core: str,
                   now: float) -> RegisterUpdate:
    supported = frozenset(tag.strip().lower() for value in req.header_values("supported")
                          for tag in split_commas(value) if tag.strip())
    header_expires = _expires_header(req)
    values = [v for raw in req.header_values("contact") for v in split_commas(raw)]
    star = any(v.strip() == "*" for v in values)
    if star and (len(values) > 1 or header_expires != 0):
        # §10.3 step 6: '*' only alone and only with Expires: 0.
        raise RegistrarError(400, "Bad Request ('*' Contact needs to be alone and have Expires: 0)")
    outbound = "outbound" in supported
    contacts = [] if star else [_contact(v, header_expires, settings, outbound) for v in values]
    if outbound and len(contacts) > 1 and any(c.reg_id for c in contacts):
        # RFC 5626 §6: a REGISTER for a flow registers exactly one Contact.
        raise RegistrarError(400, "Bad Request (reg-id with more than one Contact)")
    path = tuple(v for raw in req.header_values("path") for v in split_commas(raw))
    for value in path:
        # Checked now: requests to this AoR will be routed through them.
        parse_uri(parse_name_addr(value).uri)
    return RegisterUpdate(star, contacts, req.call_id, req.cseq, path, req.header("user-agent") or "",
                          source, core, now, supported)


def _expires_header(req: Request) -> int | None:
    values = req.header_values("expires")
    if not values:
        return None
    if len(values) > 1:
        raise RegistrarError(400, "Bad Request (more than one Expires)")
    return _delta_seconds(values[0].strip(), "Expires")


def _delta_seconds(text: str | None, what: str) -> int:
    # RFC 3261 §20.19 defines only integers; a registrar that guessed at
    # "3600.5" or "" could keep a binding far longer or shorter than meant.
    if text is None or _DELTA_SECONDS.fullmatch(text) is None:
        raise RegistrarError(400, f"Bad Request (bad {what} value)")
    if len(text) > _MAX_EXPIRES_DIGITS:
        return 2**32 - 1
    return int(text)


def _contact(value: str, header_expires: int | None, settings: Settings, outbound: bool) -> ContactUpdate:
    try:
        addr = parse_name_addr(value)
        parse_uri(addr.uri)   # checked now, so apply_update cannot fail on it later
    except BadMessage as exc:
        raise RegistrarError(exc.status or 400, f"Bad Contact ({exc.reason})") from None
    params = addr.params
    # Expiry precedence of §10.2.1.1: the Contact's own parameter, then the
    # Expires header, then the registrar's choice.
    if "expires" in params:
        requested = _delta_seconds(params["expires"], "expires")
    elif header_expires is not None:
        requested = header_expires
    else:
        requested = settings.default_expires
    if 0 < requested < min(settings.min_expires, _ONE_HOUR):
        # §10.3 step 7: too brief a refresh is refused, naming our minimum;
        # the RFC allows that only for intervals under an hour.
        raise RegistrarError(423, "Interval Too Brief", [("Min-Expires", str(settings.min_expires))])
    # §10.3 step 7: the registrar MAY shorten the interval, never lengthen it.
    expires = min(requested, settings.max_expires)
    q = 1.0
    if "q" in params:
        text = params["q"]
        if text is None or _QVALUE.fullmatch(text) is None:
            raise RegistrarError(400, "Bad Request (bad q value)")
        q = float(text)
    instance = unquote_string(params.get("+sip.instance") or "")
    reg_id = 0
    # RFC 5626 §6: reg-id means nothing without +sip.instance, and outbound
    # processing applies only when the REGISTER says it supports outbound.
    if instance and outbound and "reg-id" in params:
        text = params["reg-id"]
        if text is None or _REG_ID.fullmatch(text) is None or int(text) > _REG_ID_MAX:
            raise RegistrarError(400, "Bad Request (bad reg-id value)")
        reg_id = int(text)
    return ContactUpdate(addr.uri, expires, q, instance, reg_id)


# --------------------------------------------------------------- §10.3 steps 7-8

def apply_update(current: list[Binding], update: RegisterUpdate, settings: Settings) -> list[Binding]:
    """The bindings after `update` (§10.3 steps 7-8). All or nothing: when
    any contact is refused, RegistrarError is raised and the caller keeps
    `current`, which is never modified."""
    now = update.now
    bindings = live(current, now)
    if update.star:
        for b in bindings:
            _check_order(b, update)
        return []
    written: list[Binding] = []   # this request's own bindings: no CSeq check against them
    for contact in update.contacts:
        at = _find(bindings, contact)
        old = bindings[at] if at is not None else None
        if old is not None and not any(old is w for w in written):
            _check_order(old, update)
        if contact.expires == 0:
            if at is not None:
                del bindings[at]
            continue
        registered_at = old.registered_at if old is not None and old.call_id == update.call_id else now
        new = Binding(contact.uri, now + contact.expires, contact.q, update.call_id, update.cseq,
                      update.source, update.path, update.user_agent, contact.instance, contact.reg_id,
                      update.core, registered_at, update.nat)
        written.append(new)
        if at is None:
            bindings.append(new)
        else:
            bindings[at] = new
    if settings.max_contacts and len(bindings) > settings.max_contacts:
        # RFC 3261 names no code for this. 403 says the request was understood
        # and will not be granted as it stands; 503 would send the UA to
        # another server and 423/400 would name a fault it does not have.
        raise RegistrarError(403, "Too Many Contacts")
    return bindings


def _check_order(binding: Binding, update: RegisterUpdate) -> None:
    # §10.3 step 7: within one Call-ID only a higher CSeq may change a
    # binding; anything else is a late or repeated request and the update
    # is aborted. The RFC names no code: 500 says the request failed without
    # blaming its syntax, and the UA's next REGISTER (higher CSeq) succeeds.
    if binding.call_id == update.call_id and update.cseq <= binding.cseq:
        raise RegistrarError(500, "Stale CSeq")


def _find(bindings: list[Binding], contact: ContactUpdate) -> int | None:
    """Index of the binding `contact` refreshes: the same flow (instance and
    reg-id, RFC 5626 §6) or else an equivalent URI (§10.3 step 7, §19.1.4)."""
    if contact.instance and contact.reg_id:
        for i, b in enumerate(bindings):
            if b.reg_id == contact.reg_id and b.instance == contact.instance:
                return i
        return None
    uri = parse_uri(contact.uri)
    for i, b in enumerate(bindings):
        if _same_uri(uri, b.contact):
            return i
    return None


def _same_uri(uri: URI, text: str) -> bool:
    try:
        return uri == parse_uri(text)
    except BadMessage:
        return False   # a stored contact we cannot read matches nothing new


# --------------------------------------------------------------- answers and lookup

def ok_headers(bindings: list[Binding], update: RegisterUpdate) -> list[tuple[str, str]]:
    """Headers of the 200 (§10.3 step 8): every live binding with the time
    it has left, the Date, and what RFC 3327 and RFC 5626 ask to echo."""
    now = update.now
    headers = [("Contact", _contact_value(b, now)) for b in live(bindings, now)]
    headers.append(("Date", _http_date(now)))
    if update.path and "path" in update.supported:
        # RFC 3327 §5.3: the Path values are echoed only to a UA that said it
        # supports them.
        headers.extend(("Path", p) for p in update.path)
    if "outbound" in update.supported and any(c.instance and c.reg_id for c in update.contacts):
        # RFC 5626 §6: the registrar says it applied outbound processing.
        headers.append(("Require", "outbound"))
    return headers


def _contact_value(b: Binding, now: float) -> str:
    value = f"<{b.contact}>;expires={b.expires_in(now)}"
    if b.q != 1.0:
        value += f";q={b.q:.3f}".rstrip("0").rstrip(".")
    if b.instance:
        value += f';+sip.instance="{b.instance}"'
    if b.reg_id:
        value += f";reg-id={b.reg_id}"
    return value


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _http_date(now: float) -> str:
    # RFC 3261 §20.17: RFC 1123 date, always GMT. Names spelled out here
    # because strftime follows the process locale.
    t = datetime.fromtimestamp(int(now), timezone.utc)
    return (f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year} "
            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT")


def live(bindings: list[Binding], now: float) -> list[Binding]:
    """The bindings not yet expired, in their order (a new list)."""
    return [b for b in bindings if b.expires_at > now]


def branch_groups(bindings: list[Binding], now: float) -> list[list[Binding]]:
    """Live bindings grouped for forking (RFC 3261 §16.6 and §10.2.1.2):
    highest q first, the bindings of one q together (tried in parallel),
    in stored order inside a group."""
    groups: dict[float, list[Binding]] = {}
    for b in live(bindings, now):
        groups.setdefault(b.q, []).append(b)
    return [groups[q] for q in sorted(groups, reverse=True)]
