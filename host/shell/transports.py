"""Which transport object serves a `--listen` entry: the one place that
knows udp, tcp, tls, ws and wss.

Every stream transport is host/shell/tcp.py's `TcpTransport` with the same
limits (ServerConfig.extra["tcp"]); TLS and WSS add a `TlsLayer` made from
ServerConfig.extra["tls"] (a `tls.TlsSettings`), WS and WSS WebSocket
framing. The TLS contexts are made once per server, so a bad certificate is
reported before anything listens.
"""

from __future__ import annotations

from .tcp import TcpTransport
from .tls import TlsLayer, TlsSettings
from .udp import UdpTransport

STREAM_TRANSPORTS = ("tcp", "tls", "ws", "wss")
TRANSPORTS = ("udp",) + STREAM_TRANSPORTS


def tls_layers(listen, settings: TlsSettings | None) -> dict[str, TlsLayer]:
    """The TLS layer of each secure transport listened on ("tls", "wss");
    raises tls.TlsConfigError for settings that cannot serve them."""
    names = {t for t, _, _ in listen if t in ("tls", "wss")}
    settings = settings or TlsSettings()
    return {name: TlsLayer(settings, https_compatible=name == "wss") for name in sorted(names)}


def make_transport(transport: str, host: str, port: int, *, on_message, on_error, extra: dict,
                   layers: dict, inherited=None, on_connection=None):
    """The transport for one listener; UDP is bound here, stream ones bind
    when the server awaits `bind()`."""
    if transport == "udp":
        t = UdpTransport(host, port, on_message, stun=extra.get("stun", False), sock=inherited)
        t.bind()
        return t
    if transport not in STREAM_TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}")
    kwargs = dict(extra.get("tcp", {}))   # limits: see tcp.py
    if transport in layers:
        kwargs["layer"] = layers[transport]
    return TcpTransport(host, port, on_message, on_error, listener=inherited,
                        on_connection=on_connection, websocket=transport in ("ws", "wss"), **kwargs)
