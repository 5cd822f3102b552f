"""The `authenticate` service (host/services/auth.py) against a MemoryStore:
the digest check, the stateless nonces as they age, the nonce counts kept in
the store, the identity check, the credentials files beside the routes, and
what Services.resolve never challenges. Requests are parsed from SIP text;
the UA side of the digest is computed with host.sip.digest, as a phone would."""

from __future__ import annotations

import logging
import os
import re
import secrets
import time

import pytest

from host.services.auth import Authenticator
from host.services.desk import Services
from host.sip import digest
from host.sip.decision import Decision
from host.sip.message import Request
from host.sip.parser import parse_message
from host.storage.memory import MemoryStore

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "babelsip"
REGISTER_URI = "sip:example.com"
INVITE_URI = "sip:bob@example.com"
SOURCE = ("udp", "192.0.2.10", 5060)


def request(method: str = "REGISTER", *, uri: str | None = None, user: str = "alice",
            authorization: list[str] = (), cseq: int = 1) -> Request:
    uri = uri or (REGISTER_URI if method == "REGISTER" else INVITE_URI)
    header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
    to = f"<sip:{user}@example.com>" if method == "REGISTER" else "<sip:bob@example.com>"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{secrets.token_hex(6)}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@example.com>;tag=a1",
        f"To: {to}",
        "Call-ID: auth-test@192.0.2.10",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@192.0.2.10:5060>",
        *[f"{header}: {value}" for value in authorization],
        "Content-Length: 0", "", "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def challenges(d: Decision) -> list[str]:
    return [v for name, v in d.headers if name.lower() in ("www-authenticate", "proxy-authenticate")]


def nonce_of(d: Decision) -> str:
    values = challenges(d)
    assert values, f"no challenge in {d!r}"
    return re.search(r'nonce="([^"]+)"', values[0]).group(1)


def credentials(nonce: str, *, user: str = "alice", password: str = "secret", realm: str = REALM,
                method: str = "REGISTER", uri: str = REGISTER_URI, nc: int = 1,
                algorithm: str = "MD5", cnonce: str = "0a4f113b", qop: str | None = "auth") -> str:
    """An Authorization value as a UA computes it from the challenge."""
    ha1 = digest.ha1(algorithm, user, realm, password)
    nc_text = f"{nc:08x}"
    resp = digest.response(algorithm, ha1, nonce=nonce, nc=nc_text if qop else None,
                           cnonce=cnonce if qop else None, qop=qop, method=method, uri=uri)
    value = (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
             f'response="{resp}", algorithm={algorithm}')
    if qop:
        value += f', qop={qop}, nc={nc_text}, cnonce="{cnonce}"'
    return value


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def auth(store, tmp_path):
    return Authenticator(store, SECRET, routes_dir=str(tmp_path))


OPTS = {"realm": REALM, "password": "secret"}


async def fresh_nonce(auth: Authenticator, method: str = "REGISTER", opts=OPTS) -> str:
    first = await auth.check(request(method), dict(opts))
    assert first is not None and first.verb == "reply"
    return nonce_of(first)


# ------------------------------------------------------------------ the check

async def test_no_credentials_get_a_md5_qop_auth_challenge(auth):
    d = await auth.check(request(), dict(OPTS))
    assert (d.verb, d.code) == ("reply", 401)
    (value,) = challenges(d)
    assert [name for name, _ in d.headers] == ["WWW-Authenticate"]
    assert value.startswith(f'Digest realm="{REALM}", nonce="')
    assert "algorithm=MD5" in value and 'qop="auth"' in value and "stale" not in value
    assert auth.mint.check(nonce_of(d)) == digest.VALID
    assert auth.stats.challenges == 1 and auth.stats.accepted == 0


async def test_invite_is_challenged_with_407_proxy_authenticate(auth):
    d = await auth.check(request("INVITE"), dict(OPTS))
    assert d.code == 407
    assert [name for name, _ in d.headers] == ["Proxy-Authenticate"]
    nonce = nonce_of(d)
    ok = request("INVITE", authorization=[credentials(nonce, method="INVITE", uri=INVITE_URI)])
    assert await auth.check(ok, dict(OPTS)) is None


async def test_good_credentials_pass(auth):
    nonce = await fresh_nonce(auth)
    assert await auth.check(request(authorization=[credentials(nonce)]), dict(OPTS)) is None
    assert auth.stats.accepted == 1 and auth.stats.wrong == 0


async def test_wrong_password_is_challenged_again_and_counted(auth):
    nonce = await fresh_nonce(auth)
    d = await auth.check(request(authorization=[credentials(nonce, password="guess")]), dict(OPTS))
    assert d is not None and d.code == 401
    assert nonce_of(d) != nonce and "stale" not in challenges(d)[0]
    assert auth.stats.wrong == 1 and auth.stats.accepted == 0
    # The nonce-count of a wrong guess is not spent: the right password still
    # passes with nc=1 on that nonce.
    assert await auth.check(request(authorization=[credentials(nonce)]), dict(OPTS)) is None


async def test_unknown_user_is_challenged_like_a_wrong_password(auth):
    nonce = await fresh_nonce(auth)
    d = await auth.check(request(user="mallory", authorization=[credentials(nonce, user="mallory")]),
                         {"realm": REALM, "password": None})
    assert d.code == 401 and auth.stats.wrong == 1


async def test_credentials_for_another_realm_are_not_used(auth):
    nonce = await fresh_nonce(auth)
    d = await auth.check(request(authorization=[credentials(nonce, realm="elsewhere")]), dict(OPTS))
    assert d.code == 401 and auth.stats.accepted == 0


async def test_digest_for_another_request_uri_is_refused(auth):
    nonce = await fresh_nonce(auth)
    value = credentials(nonce, uri="sip:other.example.com")
    d = await auth.check(request(authorization=[value]), dict(OPTS))
    assert d.code == 401 and auth.stats.wrong == 1


async def test_nonce_of_another_secret_is_not_accepted(auth, store):
    other = Authenticator(store, b"another secret, sixteen+ bytes!!")
    nonce = nonce_of(await other.check(request(), dict(OPTS)))
    d = await auth.check(request(authorization=[credentials(nonce)]), dict(OPTS))
    assert d.code == 401 and auth.stats.accepted == 0


async def test_stale_nonce_with_right_password_gets_stale_true(auth):
    # A nonce this server minted (same secret) 1000 s ago: past the lifetime.
    old = digest.NonceMint(SECRET, clock=lambda: time.time() - 1000, random_bytes=secrets.token_bytes)
    nonce = old.mint()
    assert auth.mint.check(nonce) == digest.STALE
    d = await auth.check(request(authorization=[credentials(nonce)]), dict(OPTS))
    assert d.code == 401
    (value,) = challenges(d)
    assert "stale=true" in value and nonce_of(d) != nonce
    assert auth.mint.check(nonce_of(d)) == digest.VALID
    assert auth.stats.stale == 1 and auth.stats.wrong == 0


async def test_stale_nonce_with_wrong_password_is_not_stale(auth):
    old = digest.NonceMint(SECRET, clock=lambda: time.time() - 1000, random_bytes=secrets.token_bytes)
    d = await auth.check(request(authorization=[credentials(old.mint(), password="guess")]), dict(OPTS))
    assert d.code == 401 and "stale" not in challenges(d)[0]
    assert auth.stats.stale == 0 and auth.stats.wrong == 1


async def test_replayed_nonce_count_is_refused(auth):
    nonce = await fresh_nonce(auth)
    value = credentials(nonce, nc=1)
    assert await auth.check(request(authorization=[value]), dict(OPTS)) is None
    again = await auth.check(request(authorization=[value]), dict(OPTS))
    assert again is not None and again.code == 401
    assert auth.stats.replayed == 1 and auth.stats.accepted == 1


async def test_increasing_nonce_counts_are_accepted_lower_ones_refused(auth):
    nonce = await fresh_nonce(auth)
    for nc in (1, 2, 5):
        assert await auth.check(request(authorization=[credentials(nonce, nc=nc)]), dict(OPTS)) is None
    for nc in (4, 5):
        d = await auth.check(request(authorization=[credentials(nonce, nc=nc)]), dict(OPTS))
        assert d.code == 401
    assert auth.stats.accepted == 3 and auth.stats.replayed == 2


async def test_replay_is_refused_by_another_core_sharing_the_store_and_secret(auth, store):
    other_core = Authenticator(store, SECRET)
    nonce = await fresh_nonce(auth)
    value = credentials(nonce)
    assert await auth.check(request(authorization=[value]), dict(OPTS)) is None
    d = await other_core.check(request(authorization=[value]), dict(OPTS))
    assert d.code == 401 and other_core.stats.replayed == 1


async def test_credentials_without_qop_are_challenged(auth):
    nonce = await fresh_nonce(auth)
    d = await auth.check(request(authorization=[credentials(nonce, qop=None)]), dict(OPTS))
    assert d.code == 401 and auth.stats.accepted == 0


async def test_identity_mismatch_is_403(auth):
    # Bob's good credentials registering alice's AoR.
    nonce = await fresh_nonce(auth)
    req = request(user="alice", authorization=[credentials(nonce, user="bob")])
    d = await auth.check(req, {"realm": REALM, "password": "secret"})
    assert (d.verb, d.code) == ("reply", 403)
    assert auth.stats.forbidden == 1 and auth.stats.accepted == 0


async def test_identity_false_accepts_another_users_credentials(auth):
    nonce = await fresh_nonce(auth)
    req = request(user="alice", authorization=[credentials(nonce, user="bob")])
    assert await auth.check(req, {"realm": REALM, "password": "secret", "identity": False}) is None


async def test_identity_of_an_invite_is_the_from_user(auth):
    nonce = await fresh_nonce(auth, "INVITE")
    req = request("INVITE", user="alice",
                  authorization=[credentials(nonce, user="carol", method="INVITE", uri=INVITE_URI)])
    d = await auth.check(req, dict(OPTS))
    assert d.code == 403


# ------------------------------------------------------------------ algorithms

async def test_algorithms_are_offered_strongest_first_whatever_the_order_asked(auth):
    d = await auth.check(request(), {**OPTS, "algorithms": ["MD5", "SHA-512-256", "SHA-256"]})
    algos = [re.search(r"algorithm=([^,\s]+)", v).group(1) for v in challenges(d)]
    assert algos == ["SHA-512-256", "SHA-256", "MD5"]
    # One nonce for all of them (RFC 8760 §2.3: the UA picks one).
    assert len({re.search(r'nonce="([^"]+)"', v).group(1) for v in challenges(d)}) == 1


async def test_sha256_credentials_pass_when_offered_and_not_otherwise(auth):
    opts = {**OPTS, "algorithms": ["SHA-256", "MD5"]}
    nonce = await fresh_nonce(auth, opts=opts)
    value = credentials(nonce, algorithm="SHA-256")
    assert await auth.check(request(authorization=[value]), dict(opts)) is None
    # MD5 only (the default): the same kind of credentials is answered by a challenge.
    nonce = await fresh_nonce(auth)
    d = await auth.check(request(authorization=[credentials(nonce, algorithm="SHA-256")]), dict(OPTS))
    assert d.code == 401 and all("algorithm=MD5" in v for v in challenges(d))


async def test_ha1_given_as_string(auth):
    ha1 = digest.ha1("MD5", "alice", REALM, "secret").upper()   # hex case does not matter
    opts = {"realm": REALM, "ha1": ha1}
    nonce = await fresh_nonce(auth, opts=opts)
    assert await auth.check(request(authorization=[credentials(nonce)]), dict(opts)) is None
    nonce = await fresh_nonce(auth, opts=opts)
    d = await auth.check(request(authorization=[credentials(nonce, password="other")]), dict(opts))
    assert d.code == 401 and auth.stats.wrong == 1


async def test_ha1_given_as_dict_per_algorithm(auth):
    opts = {"realm": REALM, "algorithms": ["SHA-256", "MD5"],
            "ha1": {"SHA-256": digest.ha1("SHA-256", "alice", REALM, "secret"),
                    "MD5": digest.ha1("MD5", "alice", REALM, "secret")}}
    for algorithm in ("SHA-256", "MD5"):
        nonce = await fresh_nonce(auth, opts=opts)
        value = credentials(nonce, algorithm=algorithm)
        assert await auth.check(request(authorization=[value]), dict(opts)) is None, algorithm
    # A dict without the algorithm the UA used: no H(A1), challenged.
    only_md5 = {**opts, "ha1": {"MD5": opts["ha1"]["MD5"]}}
    nonce = await fresh_nonce(auth, opts=only_md5)
    d = await auth.check(request(authorization=[credentials(nonce, algorithm="SHA-256")]), dict(only_md5))
    assert d.code == 401


async def test_md5_string_ha1_does_not_serve_sha256(auth):
    opts = {"realm": REALM, "algorithms": ["SHA-256"], "ha1": digest.ha1("MD5", "alice", REALM, "secret")}
    nonce = await fresh_nonce(auth, opts=opts)
    d = await auth.check(request(authorization=[credentials(nonce, algorithm="SHA-256")]), dict(opts))
    assert d.code == 401 and auth.stats.wrong == 1


# ------------------------------------------------------------ credentials files

def md5_ha1(user: str, realm: str, password: str) -> str:
    return digest.ha1("MD5", user, realm, password)


async def test_credentials_file_both_formats_and_a_bad_line(auth, tmp_path, caplog):
    path = tmp_path / "users.txt"
    path.write_text("# users\n"
                    "alice:secret\n"
                    "\n"
                    "nocolon\n"
                    f"bob:{REALM}:{md5_ha1('bob', REALM, 'hunter2')}\n"
                    "carol:pa:ss:word\n")
    opts = {"realm": REALM, "credentials": "users.txt"}
    with caplog.at_level(logging.WARNING, logger="babelsip.auth"):
        for user, password in (("alice", "secret"), ("bob", "hunter2"), ("carol", "pa:ss:word")):
            nonce = await fresh_nonce(auth, opts=opts)
            value = credentials(nonce, user=user, password=password)
            assert await auth.check(request(user=user, authorization=[value]), dict(opts)) is None, user
    bad = [r.getMessage() for r in caplog.records if "line skipped" in r.getMessage()]
    assert bad == [f"{path}:4: not 'user:password' or 'user:realm:md5-ha1'; line skipped"]
    # "nocolon" authenticates nobody.
    nonce = await fresh_nonce(auth, opts=opts)
    d = await auth.check(request(user="nocolon", authorization=[credentials(nonce, user="nocolon")]),
                         dict(opts))
    assert d.code == 401


async def test_ha1_line_of_another_realm_does_not_serve_this_realm(auth, tmp_path):
    (tmp_path / "users.txt").write_text(f"bob:other:{md5_ha1('bob', 'other', 'x')}\n")
    opts = {"realm": REALM, "credentials": "users.txt"}
    nonce = await fresh_nonce(auth, opts=opts)
    d = await auth.check(request(user="bob", authorization=[credentials(nonce, user="bob", password="x")]),
                         dict(opts))
    assert d.code == 401


async def test_credentials_file_is_reloaded_when_it_changes(auth, tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("alice:first\n")
    opts = {"realm": REALM, "credentials": "users.txt"}
    nonce = await fresh_nonce(auth, opts=opts)
    assert await auth.check(request(authorization=[credentials(nonce, password="first", nc=1)]),
                            dict(opts)) is None
    before = os.stat(path).st_mtime_ns
    path.write_text("alice:second\n")
    # Make sure the change is visible as a new mtime even on a coarse clock.
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))
    d = await auth.check(request(authorization=[credentials(nonce, password="first", nc=2)]), dict(opts))
    assert d is not None and d.code == 401
    assert await auth.check(request(authorization=[credentials(nonce, password="second", nc=3)]),
                            dict(opts)) is None


async def test_missing_credentials_file_authenticates_nobody_and_logs(auth, caplog):
    opts = {"realm": REALM, "credentials": "absent.txt"}
    nonce = await fresh_nonce(auth, opts=opts)
    with caplog.at_level(logging.WARNING, logger="babelsip.auth"):
        d = await auth.check(request(authorization=[credentials(nonce)]), dict(opts))
    assert d.code == 401
    assert any("absent.txt" in r.getMessage() and "cannot be read" in r.getMessage()
               for r in caplog.records)


# ------------------------------------------------------------ Services.resolve

@pytest.fixture
def services(store, tmp_path):
    return Services(store, core="core-test", routes_dir=str(tmp_path), secret=SECRET)


@pytest.mark.parametrize("method", ["ACK", "CANCEL"])
async def test_ack_and_cancel_are_never_challenged(services, method):
    d = Decision(verb="relay", targets=["sip:bob@192.0.2.20"], auth={"realm": REALM, "password": "x"},
                 vars={"k": 1})
    out = await services.resolve(request(method), SOURCE, d)
    assert out.verb == "relay" and out.targets == ["sip:bob@192.0.2.20"]
    assert out.auth is None and services.auth.stats.challenges == 0


async def test_resolve_challenges_an_invite_and_keeps_vars(services):
    d = Decision(verb="relay", targets=["sip:bob@192.0.2.20"], auth={"realm": REALM, "password": "x"},
                 vars={"k": 1})
    out = await services.resolve(request("INVITE"), SOURCE, d)
    assert (out.verb, out.code, out.vars) == ("reply", 407, {"k": 1})


async def test_resolve_authenticates_then_saves(services, store):
    first = await services.resolve(request(), SOURCE, Decision(verb="save", auth=dict(OPTS)))
    assert first.code == 401 and await store.aors() == []
    nonce = nonce_of(first)
    out = await services.resolve(request(authorization=[credentials(nonce)], cseq=2), SOURCE,
                                 Decision(verb="save", auth=dict(OPTS)))
    assert out.code == 200
    assert [b.contact for b in await store.bindings("sip:alice@example.com")] == ["sip:alice@192.0.2.10:5060"]
    assert services.statistics()["registrations"] == 1
