"""Messages the proxy writes itself, not by copying what it relays: the
ACK for a non-2xx, a CANCEL, and a reply to a request it could not parse."""

from __future__ import annotations

from .errors import BadMessage
from .headers import Via, parse_via
from .message import Request, Response

# What a reply to a broken request keeps of it (RFC 3261 §8.2.6.2), in any spelling.
_SALVAGED = {"via": "via", "v": "via", "from": "from", "f": "from", "to": "to", "t": "to",
             "call-id": "call-id", "i": "call-id", "cseq": "cseq"}
_NAMES = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}


def salvage_reply(data: bytes, status: int, reason: str) -> tuple[bytes, Via] | None:
    """A reply to a request too broken to parse, built from its raw lines:
    the start line may be fine while one header is not. None when it has no
    usable Via, since then nobody can be answered.

    It keeps the first of each salvaged header and only the top Via value:
    the answer goes back to the sender only (RFC 3261 §8.2.6.2 would echo
    every Via, but a message we cannot parse is not relayed anywhere, and
    echoing 1,800 Vias would make us a reflector as large as the request)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
    keep: dict[str, str] = {}
    for line in head[1:]:
        name, colon, value = line.partition(":")
        key = _SALVAGED.get(name.strip().lower())
        if colon and key is not None and key not in keep:
            value = value.strip()
            if key == "via":
                value = value.split(",")[0].strip()
            keep[key] = value
    if "via" not in keep:
        return None
    try:
        via = parse_via(keep["via"])
    except BadMessage:
        return None
    lines = [f"SIP/2.0 {status} {reason}", *(f"{_NAMES[k]}: {v}" for k, v in keep.items()),
             "Content-Length: 0", "", ""]
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
