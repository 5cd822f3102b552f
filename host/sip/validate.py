"""RFC 3261 §16.3 request validation (minimal first version; being hardened)."""

from __future__ import annotations

from .errors import BadMessage
from .message import Request
from .uri import parse_uri


def check_request(req: Request) -> None:
    if req.via is None:
        raise BadMessage("missing Via", None)
    for name in ("from", "to"):
        if req.header(name) is None:
            raise BadMessage(f"missing {name.title()}")
    parse_uri(req.uri)
    mf = req.header("max-forwards")
    if mf is not None and (not mf.isdigit() or int(mf) > 255):
        raise BadMessage("bad Max-Forwards")
    if req.header("proxy-require") is not None:
        err = BadMessage("unsupported Proxy-Require", 420)
        err.headers = [("unsupported", req.header("proxy-require"))]
        raise err
