"""The one exception the SIP layer raises for bad input from the network."""


class BadMessage(Exception):
    """Malformed or unacceptable SIP input.

    `status` is the response the shell should send when a reply is possible
    (400 by default; 505 bad version, 416 unsupported URI scheme, 420 bad
    extension, 513 too large). `None` means the input cannot be answered (a
    request without a usable Via to send a response to, any broken response):
    the shell counts it and drops it.

    `headers` are (name, value) pairs the reply must carry, e.g.
    `[("Unsupported", "foo, bar")]` with a 420 (RFC 3261 §16.3 step 5).
    """

    def __init__(self, reason: str, status: int | None = 400,
                 headers: list[tuple[str, str]] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers: list[tuple[str, str]] = list(headers) if headers else []

    def __repr__(self) -> str:
        return f"BadMessage({self.reason!r}, status={self.status!r})"
