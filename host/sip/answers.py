"""Messages the proxy writes itself, not by copying what it relays: the
ACK for a non-2xx, a CANCEL, and a reply to a request it could not parse."""

from __future__ import annotations

from .errors import BadMessage
from .headers import Via, parse_via
from .message import Request, Response

# What a reply to a broken request keeps of it (RFC 3261 §8.2.6.2), in any spelling.
_SALVAGED = frozenset({"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"})


def salvage_reply(data: bytes, status: int, reason: str) -> tuple[bytes, Via] | None:
    """A reply to a request too broken to parse, built from its raw lines:
    the start line may be fine while one header is not. None when it has no
    usable Via, since then nobody can be answered."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
    keep, vias = [], []
    for line in head[1:]:
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if colon and name in _SALVAGED:
            keep.append(line)
            if name in ("via", "v"):
                vias.append(value.strip())
    if not vias:
        return None
    try:
        via = parse_via(vias[0].split(",")[0])
    except BadMessage:
        return None
    lines = [f"SIP/2.0 {status} {reason}", *keep, "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode("utf-8", "replace"), via


def cancel_for(inv: Request) -> Request:
    """§9.1: a CANCEL for a relayed INVITE: same Request-URI, top Via
    (so the same branch), Route, From, To, Call-ID and CSeq number."""
    cancel = Request("CANCEL", inv.uri)
    cancel.headers = [("via", inv.header("via"))]
    cancel.headers.extend((k, v) for k, v in inv.headers if k in ("route", "from", "to", "call-id"))
    cancel.headers.append(("max-forwards", "70"))
    cancel.headers.append(("cseq", f"{inv.cseq} CANCEL"))
    cancel.call_id, cancel.cseq, cancel.cseq_method = inv.call_id, inv.cseq, "CANCEL"
    return cancel


def ack_for(inv: Request, resp: Response) -> Request:
    """§17.1.1.3: the ACK a client transaction sends for a 300-699: the
    INVITE's top Via and Route set, and the To of the response (its tag)."""
    ack = Request("ACK", inv.uri)
    ack.headers = [("via", inv.header("via"))]
    ack.headers.extend((k, v) for k, v in inv.headers if k in ("route", "from", "call-id"))
    ack.headers.append(("to", resp.header("to") or inv.header("to")))
    ack.headers.append(("cseq", f"{inv.cseq} ACK"))
    ack.headers.append(("max-forwards", "70"))
    ack.call_id, ack.cseq, ack.cseq_method = inv.call_id, inv.cseq, "ACK"
    return ack
