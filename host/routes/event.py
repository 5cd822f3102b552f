"""Turn SIP messages into the flat event dicts routes receive (see verbs.py)."""

from __future__ import annotations

from host.sip.headers import display_name, parse_name_addr, tag_of
from host.sip.message import Request, Response
from host.sip.uri import parse_uri
from host.sip.errors import BadMessage


def _uri_of(value: str | None) -> str:
    if not value:
        return ""
    try:
        return parse_name_addr(value).uri
    except BadMessage:
        return ""


def request_event(hook: str, req: Request, source: tuple[str, str, int], *,
                  in_dialog: bool, vars: dict | None, reply: Response | None = None) -> dict:
    transport, ip, port = source
    try:
        uri = parse_uri(req.uri)
        ruri_user, ruri_host = uri.user or "", uri.host
    except BadMessage:
        ruri_user = ruri_host = ""
    from_value, to_value = req.header("from"), req.header("to")
    event = {
        "hook": hook,
        "method": req.method,
        "ruri": req.uri,
        "ruri_user": ruri_user,
        "ruri_host": ruri_host,
        "call_id": req.call_id,
        "cseq": req.cseq,
        "from_uri": _uri_of(from_value),
        "from_tag": tag_of(from_value) or "",
        "to_uri": _uri_of(to_value),
        "to_tag": tag_of(to_value) or "",
        "source_ip": ip,
        "source_port": port,
        "transport": transport,
        "in_dialog": in_dialog,
        "headers": [[display_name(k), v] for k, v in req.headers],
        "body": req.body.decode("utf-8", "replace"),
        "vars": vars if vars is not None else {},
    }
    if reply is not None:
        event["reply"] = {
            "code": reply.status,
            "reason": reply.reason,
            "headers": [[display_name(k), v] for k, v in reply.headers],
        }
    return event
