"""TLS for SIP connections (RFC 3261 §26, RFC 5630): settings, contexts, and
the layer the stream transport (host/shell/tcp.py) puts over a TCP stream.

The TCP transport does everything a connection needs (table by remote,
limits, framing, keep-alive); TLS only changes how a connection's stream is
made: `TlsLayer.secure` runs the handshake over the accepted or connected
TCP stream, within the transport's handshake timeout, and returns trio's
`SSLStream` over it. A failed or late handshake ends that connection only.

Client connections (to next hops) verify the server's certificate by
default (`verify="peer"`: against `ca`, else the system's CA store, with the
name the next hop was addressed by); `verify="none"` is for labs. A client
certificate (`client_cert`, `client_key`) is offered to servers that ask
for one (mutual TLS with a trunk). A listener asks its clients for a
certificate only with `require_client_cert`, checked against `ca`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio

VERIFY_MODES = ("none", "peer")

# Seconds a TLS handshake may take once the TCP connection is up: a few
# round trips and two signatures, under a second on any sane path; ten leaves
# room for a loaded peer while a client that opens and stalls is let go.
HANDSHAKE_TIMEOUT = 10.0


class TlsConfigError(Exception):
    """A TLS setting that cannot be used; the message names the flag."""


@dataclass(frozen=True)
class TlsSettings:
    cert: str | None = None                 # --tls-cert: our certificate chain (PEM)
    key: str | None = None                  # --tls-key
    ca: str | None = None                   # --tls-ca: CA bundle for verifying peers
    verify: str = "peer"                    # --tls-verify: next hops' certificates
    client_cert: str | None = None          # --tls-client-cert: offered to next hops
    client_key: str | None = None
    require_client_cert: bool = False       # --tls-require-client-cert on listeners
    handshake_timeout: float = HANDSHAKE_TIMEOUT


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The context of a TLS (or WSS) listener; raises TlsConfigError."""
    if not settings.cert or not settings.key:
        raise TlsConfigError("a tls: or wss: listener needs --tls-cert FILE and --tls-key FILE")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, settings.cert, settings.key, "--tls-cert/--tls-key")
    if settings.require_client_cert:
        if not settings.ca:
            raise TlsConfigError("--tls-require-client-cert needs --tls-ca FILE to check them against")
        _load_ca(ctx, settings.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """The context of connections we open to next hops; raises TlsConfigError."""
    if settings.verify not in VERIFY_MODES:
        raise TlsConfigError(f"--tls-verify {settings.verify!r}: expected one of {', '.join(VERIFY_MODES)}")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.verify == "none":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif settings.ca:
        _load_ca(ctx, settings.ca)
    if settings.client_cert or settings.client_key:
        if not (settings.client_cert and settings.client_key):
            raise TlsConfigError("give both --tls-client-cert and --tls-client-key")
        _load_chain(ctx, settings.client_cert, settings.client_key, "--tls-client-cert/--tls-client-key")
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, flags: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TlsConfigError(f"{flags}: {exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"{flags} {cert}, {key}: not a certificate and its key: {exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise TlsConfigError(f"--tls-ca {ca}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"--tls-ca {ca}: not a PEM CA bundle: {exc}") from None


class TlsLayer:
    """Makes a connection's stream a TLS one; what host/shell/tcp.py asks
    of a layer (the plain one is `tcp.PLAIN`)."""

    secure = True

    def __init__(self, settings: TlsSettings, *, listening: bool = True, https_compatible: bool = False):
        self.settings = settings
        self.handshake_timeout = settings.handshake_timeout
        self.server_ctx = server_context(settings) if listening else None
        self.client_ctx = client_context(settings)
        # Browsers end WebSocket connections without TLS close_notify; for
        # them a missing one is a normal end, not an error (trio's wording).
        self.https_compatible = https_compatible

    async def wrap(self, stream: trio.SocketStream, *, inbound: bool,
                   server_name: str | None) -> trio.SSLStream:
        if inbound:
            tls = trio.SSLStream(stream, self.server_ctx, server_side=True,
                                 https_compatible=self.https_compatible)
        else:
            tls = trio.SSLStream(stream, self.client_ctx, server_hostname=server_name,
                                 https_compatible=self.https_compatible)
        await tls.do_handshake()
        return tls
