"""What the proxy core asks of its shell, and the counters it keeps."""

from __future__ import annotations


class Transmit:
    """Send `data` to (transport, host, port). A failure is reported back
    with `error_key` through `ProxyCore.transport_error`. For a response on a
    stream, (host, port) is the connection the request came on and `alt` the
    Via's address, used when that connection is gone (§18.2.2)."""
    __slots__ = ("data", "transport", "host", "port", "error_key", "alt")

    def __init__(self, data, transport, host, port, error_key=None, alt=None):
        self.data, self.transport, self.host, self.port, self.error_key = data, transport, host, port, error_key
        self.alt = alt

    def __repr__(self):
        return f"Transmit({self.transport}:{self.host}:{self.port}, {self.data[:40]!r})"


class Arm:
    """Call `ProxyCore.timer(key)` after `delay` seconds."""
    __slots__ = ("delay", "key")

    def __init__(self, delay, key):
        self.delay, self.key = delay, key


class Consult:
    """Run `hook` of a route with `event`, then call `ProxyCore.decided(token, ...)`.
    `route` is None for an initial request (the shell picks the route) and the
    pinned route afterwards, so a call stays on the generation that started it."""
    __slots__ = ("token", "hook", "event", "route")

    def __init__(self, token, hook, event, route):
        self.token, self.hook, self.event, self.route = token, hook, event, route


class CoreStats:
    __slots__ = ("received", "bad_replied", "bad_dropped", "stray_responses", "consults",
                 "server_txns", "client_txns", "script_decision_errors")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}
