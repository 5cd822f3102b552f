"""TLS for SIP connections (RFC 3261 §26, RFC 5630): settings, contexts, and
the layer the stream transport (host/shell/tcp.py) puts over a TCP stream.

The TCP transport does everything a connection needs (table by remote,
limits, framing, keep-alive); TLS only changes how a connection's stream is
made: `TlsLayer.secure` runs the handshake over the accepted or connected
TCP stream, within the transport's handshake timeout, and returns trio's
`SSLStream` over it. A failed or late handshake ends that connection only.

Client connections (to next hops) verify the server's certificate by
default (`verify="peer"`: against `ca`, else the system's CA store), for the
name the next hop was reached by, which is also the SNI: the domain of the
URI when DNS found the address (RFC 5922 §4), else the address. A host with
a pin (`pins`, host/shell/tls_identity.py) is checked by its pin alone,
after the handshake; a mismatch is `PinMismatch`. `verify="none"` is for
labs. A client certificate (`client_cert`, `client_key`) is offered to
servers that ask for one (mutual TLS with a trunk). A listener asks its
clients for a certificate only with `require_client_cert`, checked against
`ca`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio

from .tls_identity import PinSet, fingerprint, names_domain, show

VERIFY_MODES = ("none", "peer")

# Seconds a TLS handshake may take once the TCP connection is up: a few
# round trips and two signatures, under a second on any sane path; ten leaves
# room for a loaded peer while a client that opens and stalls is let go.
HANDSHAKE_TIMEOUT = 10.0


class TlsConfigError(Exception):
    """A TLS setting that cannot be used; the message names the flag."""


class PinMismatch(Exception):
    """A pinned next hop presented another certificate."""

    def __init__(self, host: str, pinned: frozenset[bytes], presented: bytes | None):
        self.host, self.pinned, self.presented = host, pinned, presented
        super().__init__(f"certificate of {host} does not match its pin: pinned "
                         f"{', '.join(sorted(show(p) for p in pinned))}, presented "
                         f"{show(presented) if presented is not None else 'none'}")


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
    pins: tuple = ()                        # --tls-pin: tls_identity.Pin per next hop certificate


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


def client_context(settings: TlsSettings, *, pinned: bool = False) -> ssl.SSLContext:
    """The context of connections we open to next hops (`pinned`: to hosts
    checked by their pin instead of a CA); raises TlsConfigError."""
    if settings.verify not in VERIFY_MODES:
        raise TlsConfigError(f"--tls-verify {settings.verify!r}: expected one of {', '.join(VERIFY_MODES)}")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.verify == "none" or pinned:
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
        self.pins = PinSet(settings.pins)
        self.pinned_ctx = client_context(settings, pinned=True) if self.pins else None
        # Browsers end WebSocket connections without TLS close_notify; for
        # them a missing one is a normal end, not an error (trio's wording).
        self.https_compatible = https_compatible

    async def wrap(self, stream: trio.SocketStream, *, inbound: bool,
                   server_name: str | None) -> trio.SSLStream:
        pinned = not inbound and server_name in self.pins
        if inbound:
            tls = trio.SSLStream(stream, self.server_ctx, server_side=True,
                                 https_compatible=self.https_compatible)
        else:
            # server_hostname is both the SNI and the name verified (an IP
            # address is verified but, as RFC 6066 §3 wants, sent as no SNI).
            tls = trio.SSLStream(stream, self.pinned_ctx if pinned else self.client_ctx,
                                 server_hostname=server_name, https_compatible=self.https_compatible)
        await tls.do_handshake()
        if pinned:
            der = tls.getpeercert(binary_form=True)
            if not self.pins.matches(server_name, der):
                raise PinMismatch(server_name, self.pins.pinned(server_name),
                                  fingerprint(der) if der else None)
        return tls

    def proves(self, tls: trio.SSLStream, name: str) -> bool:
        """Whether an established connection's peer is `name` too: a
        connection opened for one name about to carry a request for another
        (connection reuse must not skip the check, RFC 5922 §4)."""
        if name in self.pins:
            return self.pins.matches(name, tls.getpeercert(binary_form=True))
        if self.settings.verify == "none":
            return True
        return names_domain(tls.getpeercert(), name)
