"""End to end: the quickstart route (examples/quickstart/routes/main.lua) as
a registrar with digest authentication, driven by sipp and by raw UDP.

One babelsip serves a copy of the quickstart routes folder for the module,
on a fresh port. sipp registers with -au/-ap (scenarios/services_register_*.xml);
the exchanges that need byte-level control (the challenge's header, a replayed
Authorization, de-registration) are sent from Python, the digest computed
with host.sip.digest as a phone would. Whether a binding exists is checked by
the way the proxy routes a call to that user: to the sipp uas it registered
(the call completes), 480 (known user, not registered) or 404 (unknown user).
Every test leaves no binding behind.
"""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest

from host.sip import digest
from tests.e2e import routes_support as rs
from tests.e2e import sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp.sipp_binary() is None,
                       reason="sipp is not installed (Debian package sip-tester; `make test` installs it)"),
]

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "routes"
REALM = "babelsip"
PASSWORD = "secret"
SIPP_RUN_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("registrar")
    routes = workdir / "routes"
    shutil.copytree(QUICKSTART, routes)
    with rs.routes_server(routes, workdir) as srv:
        yield srv


# ------------------------------------------------------------------ raw UDP UA

class RawUA:
    """A UDP socket speaking just enough SIP to register: requests name its
    port in their Via, so the answers come back to it."""

    def __init__(self, server_port: int):
        self.server_port = server_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((sipp.LOCALHOST, 0))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def register(self, user: str, *, cseq: int, call_id: str, contact: str = "",
                 expires: int | None = None, authorization: str | None = None) -> bytes:
        lines = [
            f"REGISTER sip:{sipp.LOCALHOST}:{self.server_port} SIP/2.0",
            f"Via: SIP/2.0/UDP {sipp.LOCALHOST}:{self.port};branch=z9hG4bK{uuid.uuid4().hex}",
            "Max-Forwards: 70",
            f"From: <sip:{user}@{sipp.LOCALHOST}>;tag={secrets.token_hex(4)}",
            f"To: <sip:{user}@{sipp.LOCALHOST}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} REGISTER",
        ]
        if contact:
            lines.append(f"Contact: {contact}")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines += ["Content-Length: 0", "", ""]
        return self.final("\r\n".join(lines).encode())

    def final(self, data: bytes, wait: float = 3.0) -> bytes:
        """Send `data` and return the first final (>= 200) response to it."""
        cseq = sipp.header_value(data, "CSeq")
        self.sock.sendto(data, (sipp.LOCALHOST, self.server_port))
        end = time.monotonic() + wait
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                reply = self.sock.recv(65535)
            except socket.timeout:
                break
            code = sipp.status_code(reply)
            if code is not None and code >= 200 and sipp.header_value(reply, "CSeq") == cseq:
                return reply
        raise AssertionError(f"no final response to:\n{data.decode()}")

    def authorization(self, challenge: bytes, user: str, *, password: str = PASSWORD,
                      nc: int = 1) -> str:
        value = sipp.header_value(challenge, "WWW-Authenticate")
        assert value, challenge.decode()
        nonce = re.search(r'nonce="([^"]+)"', value).group(1)
        uri = f"sip:{sipp.LOCALHOST}:{self.server_port}"
        cnonce = secrets.token_hex(8)
        ha1 = digest.ha1("MD5", user, REALM, password)
        resp = digest.response("MD5", ha1, nonce=nonce, nc=f"{nc:08x}", cnonce=cnonce, qop="auth",
                               method="REGISTER", uri=uri)
        return (f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
                f'response="{resp}", algorithm=MD5, qop=auth, nc={nc:08x}, cnonce="{cnonce}"')

    def register_authenticated(self, user: str, **kw) -> bytes:
        call_id = kw.pop("call_id", uuid.uuid4().hex)
        challenge = self.register(user, cseq=1, call_id=call_id, **kw)
        assert sipp.status_code(challenge) == 401, challenge.decode()
        return self.register(user, cseq=2, call_id=call_id,
                             authorization=self.authorization(challenge, user), **kw)

    def unregister_all(self, user: str) -> None:
        reply = self.register_authenticated(user, contact="*", expires=0)
        assert sipp.status_code(reply) == 200, reply.decode()
        assert sipp.header_value(reply, "Contact") is None, reply.decode()


@pytest.fixture
def ua(server):
    raw = RawUA(server.port)
    yield raw
    raw.close()


def call_answered_with(server, workdir: Path, user: str, code: int) -> sipp.SippResult:
    """One sipp call to `user`@the proxy; it succeeds only if answered `code`."""
    scenario = rs.expect_final_scenario(workdir, code)
    return rs.run_uac(server, name=f"uac-{user}-{code}-{uuid.uuid4().hex[:6]}", scenario=str(scenario),
                      service=user, calls=1, rate=1, timeout=SIPP_RUN_TIMEOUT)


def sipp_register(server, workdir: Path, scenario: str, user: str, password: str,
                  contact_port: int) -> sipp.SippResult:
    return sipp.run_sipp(scenario, workdir, name=f"reg-{user}-{uuid.uuid4().hex[:6]}",
                         port=sipp.free_port(), remote=(sipp.LOCALHOST, server.port), calls=1,
                         timeout=SIPP_RUN_TIMEOUT,
                         extra=["-s", user, "-au", user, "-ap", password,
                                "-key", "contact_port", str(contact_port)] + rs.ABORT_UNEXPECTED)


# ------------------------------------------------------------------ tests

def test_unauthenticated_register_gets_an_md5_qop_auth_challenge(server, ua):
    reply = ua.register("alice", cseq=1, call_id=uuid.uuid4().hex,
                        contact=f"<sip:alice@{sipp.LOCALHOST}:{ua.port}>", expires=60)
    assert sipp.status_code(reply) == 401, reply.decode()
    value = sipp.header_value(reply, "WWW-Authenticate")
    assert value is not None, reply.decode()
    assert value.startswith(f'Digest realm="{REALM}", nonce="'), value
    assert "algorithm=MD5" in value and 'qop="auth"' in value and "stale" not in value, value
    # Nothing was registered: a call to alice (known, not registered) is 480.
    assert call_answered_with(server, server.workdir, "alice", 480).successful == 1, server.why()


def test_register_with_digest_then_call_reaches_the_registered_uas_then_deregister(server, ua):
    workdir = server.workdir
    with rs.uas(workdir, "uas-alice") as (uas_port, uas):
        reg = sipp_register(server, workdir, "services_register_auth", "alice", PASSWORD, uas_port)
        assert reg.successful == 1 and reg.failed == 0, server.why(reg)
        try:
            call = rs.run_uac(server, name="uac-to-alice", service="alice", calls=1, rate=1,
                              timeout=SIPP_RUN_TIMEOUT)
            (uas_result,) = rs.stop_all(uas)
            assert call.successful == 1 and call.failed == 0, server.why(call, uas_result)
            assert uas_result.successful == 1, server.why(call, uas_result)

            # De-registration of that Contact (Expires: 0), authenticated.
            reply = ua.register_authenticated("alice", contact=f"<sip:alice@{sipp.LOCALHOST}:{uas_port}>",
                                              expires=0)
            assert sipp.status_code(reply) == 200, reply.decode()
            assert sipp.header_value(reply, "Contact") is None, reply.decode()
            after = call_answered_with(server, workdir, "alice", 480)
            assert after.successful == 1, server.why(after)
        finally:
            ua.unregister_all("alice")


def test_wrong_password_is_challenged_again_and_registers_nothing(server):
    workdir = server.workdir
    reg = sipp_register(server, workdir, "services_register_wrong", "bob", "not-the-password",
                        sipp.free_port())
    assert reg.successful == 1 and reg.failed == 0, server.why(reg)
    # bob is a known user with no binding: 480, not a relay anywhere.
    result = call_answered_with(server, workdir, "bob", 480)
    assert result.successful == 1, server.why(result)


def test_replayed_authorization_is_challenged_again(server, ua):
    call_id = uuid.uuid4().hex
    contact = f"<sip:alice@{sipp.LOCALHOST}:{ua.port}>"
    try:
        challenge = ua.register("alice", cseq=1, call_id=call_id, contact=contact, expires=60)
        assert sipp.status_code(challenge) == 401, challenge.decode()
        authorization = ua.authorization(challenge, "alice", nc=1)
        ok = ua.register("alice", cseq=2, call_id=call_id, contact=contact, expires=60,
                         authorization=authorization)
        assert sipp.status_code(ok) == 200, ok.decode()
        assert re.search(r";expires=\d+", sipp.header_value(ok, "Contact") or ""), ok.decode()
        # The same nonce and nc again, in a new transaction (new branch, CSeq 3).
        replay = ua.register("alice", cseq=3, call_id=call_id, contact=contact, expires=0,
                             authorization=authorization)
        assert sipp.status_code(replay) == 401, replay.decode()
        fresh = sipp.header_value(replay, "WWW-Authenticate") or ""
        assert authorization.split('nonce="')[1].split('"')[0] not in fresh
        # The replay changed nothing: the binding is still there (query REGISTER).
        query = ua.register("alice", cseq=4, call_id=call_id,
                            authorization=ua.authorization(replay, "alice"))
        assert sipp.status_code(query) == 200, query.decode()
        assert f"<sip:alice@{sipp.LOCALHOST}:{ua.port}>;expires=" in query.decode(), query.decode()
    finally:
        ua.unregister_all("alice")


def test_call_to_unknown_local_user_is_404(server):
    result = call_answered_with(server, server.workdir, "carol", 404)
    assert result.successful == 1, server.why(result)
