"""What the proxy core asks of its shell, and the counters it keeps."""

from __future__ import annotations


class Transmit:
    """Send `data` to (transport, host, port). A failure is reported back
    with `error_key` through `ProxyCore.transport_error`. For a response on a
    stream, (host, port) is the connection the request came on and `alt` the
    Via's address, used when that connection is gone (§18.2.2). `name`: the
    SIP domain a TLS next hop found through DNS must prove it serves
    (RFC 5922 §4: the host of the URI that was located, not the address);
    None when `host` itself is what was addressed."""
    __slots__ = ("data", "transport", "host", "port", "error_key", "alt", "name")

    def __init__(self, data, transport, host, port, error_key=None, alt=None, name=None):
        self.data, self.transport, self.host, self.port, self.error_key = data, transport, host, port, error_key
        self.alt, self.name = alt, name

    def __repr__(self):
        return f"Transmit({self.transport}:{self.host}:{self.port}, {self.data[:40]!r})"


class Locate:
    """Find where a branch's next hop is (RFC 3263: NAPTR, SRV, A/AAAA) and
    call `ProxyCore.located(token, targets)` with the ordered list of
    `locate.Target`s (empty: unresolvable). `scheme`, `host`, `port`,
    `transport` are the next-hop URI's (port and transport None when not
    given); `supported` the transports the core has listeners for."""
    __slots__ = ("token", "scheme", "host", "port", "transport", "supported")

    def __init__(self, token, scheme, host, port, transport, supported):
        self.token, self.scheme, self.host, self.port = token, scheme, host, port
        self.transport, self.supported = transport, supported

    def __repr__(self):
        return f"Locate({self.token}, {self.scheme}:{self.host}:{self.port};{self.transport})"


class Arm:
    """Call `ProxyCore.timer(key)` after `delay` seconds.

    `key` is a timer key of records.py: a NamedTuple of plain values (ids,
    a timer name, a generation) that the core resolves through its own
    tables, hashable as a tuple, never a reference to call
    state: a pending timer must not keep a finished call alive (Timer C
    lasts 180 s). Keys are unique: each carries a generation, and the core
    ignores a key that is not the latest, so a shell that never cancels is
    still correct, only slower to free its entries."""
    __slots__ = ("delay", "key")

    def __init__(self, delay, key):
        self.delay, self.key = delay, key

    def __repr__(self):
        return f"Arm({self.delay}, {self.key!r})"


class DialogChange:
    """A tracked dialog entered `state` (dialogs.py: trying, early,
    confirmed, ended): the shell mirrors `record` into the store and counts
    the call in, or out of, its profiles. `record` is a dict, or the Dialog
    itself, whose record is then built when first read (by the shell's
    store writer, not on the core's path)."""
    __slots__ = ("state", "_record", "profiles", "_now")

    def __init__(self, state, record, profiles, now=None):
        self.state, self._record, self.profiles, self._now = state, record, profiles, now

    @property
    def subject(self):
        """Which dialog changed, without building its record: the Dialog, or
        the record's id."""
        record = self._record
        return record["id"] if type(record) is dict else record

    @property
    def record(self) -> dict:
        record = self._record
        if type(record) is not dict:
            record = self._record = record.as_record(self._now)
        return record

    def __repr__(self):
        return f"DialogChange({self.state}, {self.record.get('id')})"


class KeepaliveAnswer:
    """A response to one of our keepalive pings (keepalive.py) came back."""
    __slots__ = ("branch", "status")

    def __init__(self, branch, status):
        self.branch, self.status = branch, status


class Disarm:
    """The timer armed with `key` is no longer wanted: drop it if pending
    (unknown or fired keys are ignored)."""
    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __repr__(self):
        return f"Disarm({self.key!r})"


class Consult:
    """Run `hook` of a route for `request`, then call `ProxyCore.decided(token, ...)`.

    The core hands over its own objects, not the dict a script sees: the
    event is built at the routes boundary (host/routes/event.py), only as far
    as the runtime reads it. `reply` is the response on_failure/on_reply are
    about, `source` the (transport, ip, port) the request came from, `vars`
    the call's variables as the route last set them (None: none yet).
    `route` is None for an initial request (the shell picks the route) and the
    pinned route afterwards, so a call stays on the generation that started it.

    The request and reply are not changed by the core until `decided`: the
    shell runs one event of a call at a time, so it may read them later."""
    __slots__ = ("token", "hook", "request", "reply", "source", "in_dialog", "vars", "route")

    def __init__(self, token, hook, request, reply, source, in_dialog, vars, route):
        self.token, self.hook, self.request, self.reply = token, hook, request, reply
        self.source, self.in_dialog, self.vars, self.route = source, in_dialog, vars, route

    def __repr__(self):
        return f"Consult({self.token}, {self.hook}, {self.request.method} {self.request.call_id})"


class CoreStats:
    """Plain integer counters, bumped where things happen and read by the
    management API and the metrics collector at scrape time. The per-kind
    ones: `requests` by method (parsed, not yet checked), `replies` and
    `forwarded_replies` by status class (index 1..6), `stateless` by the
    status the core answered with no transaction (482, 483, 503, 400...).
    `stateless_unlocated`: requests relayed without a transaction (ACKs for
    2xx) dropped because their next hop's name did not resolve."""
    __slots__ = ("received", "bad_replied", "bad_dropped", "stray_responses", "consults",
                 "server_txns", "client_txns", "script_decision_errors", "overloaded",
                 "dialogs", "dialogs_untracked", "dialogs_timed_out", "dialogs_ended_by_operator",
                 "retransmissions", "failovers", "stateless_unlocated",
                 "requests", "replies", "forwarded_replies", "stateless")
    PER_KIND = ("requests", "replies", "forwarded_replies", "stateless")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)
        self.requests: dict[str, int] = {}
        self.replies = [0] * 7
        self.forwarded_replies = [0] * 7
        self.stateless: dict[int, int] = {}

    def as_dict(self):
        out = {name: getattr(self, name) for name in self.__slots__}
        out["requests"] = dict(self.requests)
        out["stateless"] = {str(k): v for k, v in self.stateless.items()}
        for name in ("replies", "forwarded_replies"):
            out[name] = {f"{c}xx": n for c, n in enumerate(getattr(self, name)) if c}
        return out
