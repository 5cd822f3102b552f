"""Flow tokens: how one core asks another to deliver a request over a flow
(a NAT binding, a TCP connection) that only the other one holds.

A binding remembers the core that owns its flow (host/sip/registrar.py
`Binding.core`). A call entering at another core is relayed through the
owner with a Route naming it and carrying the flow, signed with the
cluster's secret, so only cores that share the secret can make a core send
to an address (a Route from anyone else is refused: no open relay, no
reflector). This is the "federation" model of OpenSIPS's clusterer: the
owner delivers, the others route to it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

FLOW_PARAM = "bsflow"      # the Route URI parameter that carries a token
_TAG_BYTES = 12
_TRANSPORTS = frozenset({"udp", "tcp", "tls", "ws", "wss"})


def flow_token(secret: bytes, flow: tuple[str, str, int]) -> str:
    """`flow` = (transport, ip, port), signed; URI-parameter safe."""
    body = f"{flow[0]}|{flow[1]}|{flow[2]}".encode()
    tag = hmac.new(secret, b"flow\x00" + body, hashlib.sha256).digest()[:_TAG_BYTES]
    return _b64(body) + "." + _b64(tag)


def flow_of(secret: bytes, token: str) -> tuple[str, str, int] | None:
    """The flow a token names, or None when it is not one of ours."""
    body_text, dot, tag_text = token.partition(".")
    if not dot:
        return None
    try:
        body, tag = _unb64(body_text), _unb64(tag_text)
    except ValueError:
        return None
    expected = hmac.new(secret, b"flow\x00" + body, hashlib.sha256).digest()[:_TAG_BYTES]
    if not hmac.compare_digest(tag, expected):
        return None
    try:
        transport, ip, port = body.decode().split("|")
        port = int(port)
    except (UnicodeDecodeError, ValueError):
        return None
    if transport not in _TRANSPORTS or not 0 < port < 65536 or not ip:
        return None
    return transport, ip, port


def owner_route(core: str, token: str) -> str:
    """The Route value that sends a request through core `host:port`."""
    return f"<sip:{core};lr;{FLOW_PARAM}={token}>"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None
