"""Which name a TLS next hop is verified for, with real sockets on
127.0.0.1: the name the core gives (the SIP domain a located URI named,
RFC 5922 §4) is checked and sent as SNI, a pinned host is accepted by its
certificate's fingerprint alone (self-signed), a wrong certificate for a pin
closes the connection and is reported, and a connection opened for one name
does not carry a message for a name its certificate does not prove."""

import logging

import pytest
import trio

from host.shell.tcp import TcpTransport
from host.shell.tls import TlsLayer, TlsSettings
from host.shell.tls_identity import parse_pin, show
from tests.shell.tls_certs import make_pki, openssl_available, openssl_fingerprint, self_signed

pytestmark = pytest.mark.skipif(not openssl_available(), reason="the openssl command is not installed")

MSG = (b"OPTIONS sip:a@sip.example.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bK1\r\n"
       b"From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
       b"Content-Length: 0\r\n\r\n")
DOMAIN = "sip.example.test"


@pytest.fixture(scope="module")
def domain_pki(tmp_path_factory):
    """A CA whose server certificate names the SIP domain only, no address."""
    return make_pki(tmp_path_factory.mktemp("domain-pki"), san=f"DNS:{DOMAIN}")


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (a trunk with no CA)."""
    return self_signed(tmp_path_factory.mktemp("trunk"))


async def wait_for(predicate, timeout=5.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def listener(cert, key, got):
    return TcpTransport("127.0.0.1", 0, lambda d, s: got.append(d),
                        layer=TlsLayer(TlsSettings(cert=str(cert), key=str(key))))


def client(errors, **settings):
    return TcpTransport("127.0.0.1", 0, lambda d, s: None, errors.append,
                        layer=TlsLayer(TlsSettings(**settings), listening=False))


async def test_the_domain_is_verified_and_sent_as_sni_not_the_address(domain_pki):
    got, errors, sni = [], [], []
    server = listener(domain_pki.cert, domain_pki.key, got)
    server.layer.server_ctx.sni_callback = lambda sslobj, name, ctx: sni.append(name)
    by_domain = client(errors, ca=str(domain_pki.ca))
    by_address = client(errors, ca=str(domain_pki.ca))
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve)
        await nursery.start(by_domain.serve)
        await nursery.start(by_address.serve)
        assert by_domain.send(MSG, "127.0.0.1", port, DOMAIN)
        await wait_for(lambda: got)
        assert sni == [DOMAIN] and errors == []
        # The same certificate checked against the address fails: it does not name it.
        assert by_address.send(MSG, "127.0.0.1", port)
        await wait_for(lambda: errors)
        assert errors == [("127.0.0.1", port)] and by_address.handshake_failures == 1
        assert got == [MSG]
        nursery.cancel_scope.cancel()


async def test_a_pinned_self_signed_next_hop_is_accepted_by_its_fingerprint(trunk):
    got, errors = [], []
    server = listener(*trunk, got)
    pin = parse_pin(f"127.0.0.1={openssl_fingerprint(trunk[0])}")
    pinned = client(errors, pins=(pin,))                 # verify="peer": the pin replaces the CA
    unpinned = client(errors)                            # the system CAs do not know it
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve)
        await nursery.start(pinned.serve)
        await nursery.start(unpinned.serve)
        assert pinned.send(MSG, "127.0.0.1", port)
        await wait_for(lambda: got)
        assert errors == [] and pinned.pin_mismatches == 0
        assert unpinned.send(MSG, "127.0.0.1", port)
        await wait_for(lambda: errors)
        assert unpinned.handshake_failures == 1 and got == [MSG]
        nursery.cancel_scope.cancel()


async def test_another_certificate_than_the_pinned_one_closes_the_connection_and_says_both(
        trunk, domain_pki, caplog):
    got, errors = [], []
    server = listener(*trunk, got)
    wrong = openssl_fingerprint(domain_pki.cert)         # some other certificate's fingerprint
    presented = "sha256:" + openssl_fingerprint(trunk[0]).partition(":")[2].replace(":", "").lower()
    pinned = client(errors, ca=str(domain_pki.ca), pins=(parse_pin(f"127.0.0.1={wrong}"),))
    caplog.set_level(logging.WARNING, "babelsip.transport")
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve)
        await nursery.start(pinned.serve)
        assert pinned.send(MSG, "127.0.0.1", port)
        await wait_for(lambda: errors)
        assert errors == [("127.0.0.1", port)] and pinned.pin_mismatches == 1
        assert pinned.statistics()["pin_mismatches"] == 1
        await wait_for(lambda: not pinned.connections())
        nursery.cancel_scope.cancel()
    assert got == []
    line = next(r.getMessage() for r in caplog.records if "pin" in r.getMessage())
    assert f"127.0.0.1:{port}" in line
    assert f"pinned {show(parse_pin('h=' + wrong).fingerprint)}, presented {presented}" in line, line


async def test_a_connection_carries_messages_only_for_names_its_certificate_proves(tmp_path):
    pki = make_pki(tmp_path, san=f"IP:127.0.0.1,DNS:{DOMAIN}")
    got, errors = [], []
    server = listener(pki.cert, pki.key, got)
    sender = client(errors, ca=str(pki.ca))
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve)
        await nursery.start(sender.serve)
        assert sender.send(MSG, "127.0.0.1", port, DOMAIN)
        await wait_for(lambda: got)
        # The certificate names the address too, and the address as such
        # (no name: a Record-Route by IP, a flow) reuses the connection.
        assert sender.send(MSG, "127.0.0.1", port, "127.0.0.1")
        assert sender.send(MSG, "127.0.0.1", port)
        # A domain that resolved to the same address but is not in the
        # certificate must not ride on it.
        assert not sender.send(MSG, "127.0.0.1", port, "other.example.test")
        assert sender.identity_refused == 1
        await wait_for(lambda: len(got) == 3)
        assert sender.connections() == [("127.0.0.1", port)] and errors == []
        nursery.cancel_scope.cancel()
