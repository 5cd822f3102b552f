"""Digest authentication (RFC 7616, RFC 8760, RFC 2617 MD5)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from host.sip.digest import (
    ALGORITHMS, INVALID, STALE, VALID, Credentials, DigestError, NonceMint, canonical_algorithm,
    challenge, find_credentials, ha1, parse_credentials, response, userhash, verify,
)

# RFC 7616 §3.9.1
MUFASA = dict(username="Mufasa", realm="http-auth@example.org", password="Circle of Life")
MUFASA_REQUEST = dict(nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
                      cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
                      nc="00000001", qop="auth", method="GET", uri="/dir/index.html")

# RFC 7616 §3.9.2. The RFC's published userhash (488869...) and response
# (ae66e6...) are what SHA-512 truncated to 256 bits gives, not FIPS 180-4
# SHA-512/256 (erratum 4897 reports the example as wrong). The expected
# values here were computed with hashlib's sha512_256 by the test below.
JASON = dict(username="J\u00e4s\u00f8n Doe", realm="api@example.org", password="Secret, or not?")
JASON_REQUEST = dict(nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK",
                     cnonce="NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v",
                     nc="00000001", qop="auth", method="GET", uri="/doe.json")
JASON_USERHASH = "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"
JASON_RESPONSE = "3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5"

# RFC 2617 §3.5
RFC2617 = dict(username="Mufasa", realm="testrealm@host.com", password="Circle Of Life")
RFC2617_REQUEST = dict(nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", cnonce="0a4f113b",
                       nc="00000001", qop="auth", method="GET", uri="/dir/index.html")


def _sha512_256(text: str) -> str:
    return hashlib.new("sha512_256", text.encode()).hexdigest()


# ------------------------------------------------------------- test vectors

@pytest.mark.parametrize("algorithm, user, request_, expected", [
    pytest.param("MD5", MUFASA, MUFASA_REQUEST, "8ca523f5e9506fed4657c9700eebdbec",
                 id="RFC7616-3.9.1-MD5"),
    pytest.param("SHA-256", MUFASA, MUFASA_REQUEST,
                 "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
                 id="RFC7616-3.9.1-SHA-256"),
    pytest.param("SHA-512-256", JASON, JASON_REQUEST, JASON_RESPONSE,
                 id="RFC7616-3.9.2-SHA-512-256-errata-4897"),
    pytest.param("MD5", RFC2617, RFC2617_REQUEST, "6629fae49393a05397450978507c4ef1",
                 id="RFC2617-3.5-MD5"),
])
def test_published_responses(algorithm, user, request_, expected):
    key = ha1(algorithm, user["username"], user["realm"], user["password"])
    assert response(algorithm, key, **request_) == expected


def test_sha512_256_is_fips_not_truncated_sha512_rfc7616_3_2():
    # FIPS 180-4 / NIST example: SHA-512/256("abc").
    assert _sha512_256("abc") == "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
    u, r, p = JASON["username"], JASON["realm"], JASON["password"]
    key = _sha512_256(f"{u}:{r}:{p}")
    assert ha1("SHA-512-256", u, r, p) == key
    ha2 = _sha512_256("GET:/doe.json")
    n, c = JASON_REQUEST["nonce"], JASON_REQUEST["cnonce"]
    assert _sha512_256(f"{key}:{n}:00000001:{c}:auth:{ha2}") == JASON_RESPONSE
    assert userhash("SHA-512-256", u, r) == JASON_USERHASH == _sha512_256(f"{u}:{r}")
    # What the RFC printed comes from the other, wrong, construction.
    truncated = hashlib.sha512(f"{u}:{r}".encode()).hexdigest()[:64]
    assert truncated == "488869477bf257147b804c45308cd62ac4e25eb717b12b298c79e62dcea254ec"
    assert userhash("SHA-512-256", u, r) != truncated


def test_ha1_is_independent_hash_rfc7616_3_4_2():
    assert ha1("MD5", "a", "r", "p") == hashlib.md5(b"a:r:p").hexdigest()
    assert ha1("SHA-256", "a", "r", "p") == hashlib.sha256(b"a:r:p").hexdigest()
    # -sess shares the stored base H(A1)
    assert ha1("SHA-256-sess", "a", "r", "p") == ha1("SHA-256", "a", "r", "p")


def test_sess_and_legacy_forms():
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    key = ha1("MD5", "a", "r", "p")
    ha2 = md5("REGISTER:sip:r")
    # RFC 2617 §3.2.2.1, no qop: H(HA1:nonce:HA2)
    assert response("MD5", key, nonce="n", nc=None, cnonce=None, qop=None,
                    method="REGISTER", uri="sip:r") == md5(f"{key}:n:{ha2}")
    # RFC 7616 §3.4.2 -sess: HA1' = H(HA1:nonce:cnonce)
    sess = md5(f"{key}:n:c")
    assert response("MD5-sess", key, nonce="n", nc="00000001", cnonce="c", qop="auth",
                    method="REGISTER", uri="sip:r") == md5(f"{sess}:n:00000001:c:auth:{ha2}")


@pytest.mark.parametrize("name, canonical", [
    ("md5", "MD5"), ("sha-256", "SHA-256"), ("SHA-512-256", "SHA-512-256"),
    ("md5-SESS", "MD5-sess"), ("Sha-256-Sess", "SHA-256-sess"),
])
def test_canonical_algorithm_rfc7616_6_1(name, canonical):
    assert canonical_algorithm(name) == canonical


@pytest.mark.parametrize("name", ["SHA-1", "SHA-512", "", "MD5-sess-sess", "-sess"])
def test_unknown_algorithm(name):
    with pytest.raises(DigestError):
        canonical_algorithm(name)


# ------------------------------------------------------------------ parsing

GOOD_MD5 = "8ca523f5e9506fed4657c9700eebdbec"
GOOD_SHA = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


@pytest.mark.parametrize("value, expected", [
    pytest.param(
        'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
        'algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
        'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
        f'response="{GOOD_SHA}", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
        dict(username="Mufasa", realm="http-auth@example.org", algorithm="SHA-256", qop="auth",
             nc="00000001", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
             opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", response=GOOD_SHA),
        id="RFC7616-3.9.1-authorization"),
    pytest.param(
        f'digest RESPONSE="{GOOD_MD5.upper()}",NONCE=abc,URI="sip:bob@b.example",'
        'Realm="b.example",UserName="bob"',
        dict(username="bob", nonce="abc", uri="sip:bob@b.example", algorithm="MD5", qop=None,
             response=GOOD_MD5),
        id="RFC7235-2.1-case-insensitive-names-reordered-no-qop"),
    pytest.param(
        'Digest username="a\\"b\\\\c", realm="x, y", nonce="n,=", uri=sip:x@y, '
        f'response={GOOD_MD5}, foo=bar, baz="q, u"',
        dict(username='a"b\\c', realm="x, y", nonce="n,=", uri="sip:x@y"),
        id="RFC7230-3.2.6-escapes-commas-in-quotes-extra-params-unquoted-uri"),
    pytest.param(
        '  Digest   username = "carol" ,, realm="r" , nonce="n", uri="sip:r", '
        f'response="{GOOD_MD5}", qop="auth", nc=0000000A, cnonce="c", algorithm="md5-sess",'
        ' userhash=TRUE ,',
        dict(username="carol", qop="auth", nc="0000000A", algorithm="MD5-sess", userhash=True),
        id="RFC7235-2.1-whitespace-empty-elements-quoted-qop-sess-userhash"),
    pytest.param(
        "Digest username*=UTF-8''J%C3%A4s%C3%B8n%20Doe, realm=\"api@example.org\", nonce=\"n\", "
        f'uri="/doe.json", response="{JASON_RESPONSE}", algorithm=SHA-512-256, qop=auth, '
        'nc=00000001, cnonce="c"',
        dict(username="J\u00e4s\u00f8n Doe", algorithm="SHA-512-256"),
        id="RFC7616-3.4.4-username-star-RFC5987"),
])
def test_parse_good(value, expected):
    creds = parse_credentials(value)
    for name, want in expected.items():
        assert getattr(creds, name) == want, name


def _creds_value(**change) -> str:
    params = {"username": '"alice"', "realm": '"r"', "nonce": '"n"', "uri": '"sip:r"',
              "response": f'"{GOOD_SHA}"', "algorithm": "SHA-256", "qop": "auth",
              "nc": "00000001", "cnonce": '"c"'}
    params.update(change)
    return "Digest " + ", ".join(f"{k}={v}" for k, v in params.items() if v is not None)


def test_the_good_baseline_parses():
    assert parse_credentials(_creds_value()).username == "alice"


@pytest.mark.parametrize("value", [
    pytest.param(_creds_value(username=None), id="RFC7616-3.4-missing-username"),
    pytest.param(_creds_value(realm=None), id="RFC7616-3.4-missing-realm"),
    pytest.param(_creds_value(nonce=None), id="RFC7616-3.4-missing-nonce"),
    pytest.param(_creds_value(uri=None), id="RFC7616-3.4-missing-uri"),
    pytest.param(_creds_value(response=None), id="RFC7616-3.4-missing-response"),
    pytest.param(_creds_value().replace("Digest", "Basic", 1), id="RFC7235-2.1-other-scheme"),
    pytest.param("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", id="RFC7617-basic"),
    pytest.param("", id="RFC7235-2.1-empty"),
    pytest.param("Digest", id="RFC7235-2.1-scheme-only"),
    pytest.param(_creds_value().replace("Digest ", "Digest", 1), id="RFC7235-2.1-no-space-after-scheme"),
    pytest.param(_creds_value(qop="auth-int"), id="RFC7616-3.4-auth-int-unsupported"),
    pytest.param(_creds_value(qop="bogus"), id="RFC7616-3.4-unknown-qop"),
    pytest.param(_creds_value(cnonce=None), id="RFC7616-3.4-qop-without-cnonce"),
    pytest.param(_creds_value(nc=None), id="RFC7616-3.4-qop-without-nc"),
    pytest.param(_creds_value(nc="0001"), id="RFC7616-3.4-nc-short"),
    pytest.param(_creds_value(nc="0000000g"), id="RFC7616-3.4-nc-not-hex"),
    pytest.param(_creds_value(nc="000000001"), id="RFC7616-3.4-nc-long"),
    pytest.param(_creds_value(qop=None, nc=None, cnonce=None), id="RFC7616-3.4-sha256-without-qop"),
    pytest.param(_creds_value(algorithm="MD5", response=f'"{GOOD_MD5}"', qop=None),
                 id="RFC2617-3.2.2-nc-without-qop"),
    pytest.param(_creds_value(algorithm="MD5-sess", response=f'"{GOOD_MD5}"', qop=None, nc=None,
                              cnonce=None), id="RFC2617-3.2.2.2-sess-without-cnonce"),
    pytest.param(_creds_value(algorithm="SHA-1"), id="RFC7616-6.1-unknown-algorithm"),
    pytest.param(_creds_value(response=f'"{GOOD_MD5}"'), id="RFC7616-3.4.1-response-wrong-length"),
    pytest.param(_creds_value(response='"' + "z" * 64 + '"'), id="RFC7616-3.4.1-response-not-hex"),
    pytest.param(_creds_value(userhash="maybe"), id="RFC7616-3.4-userhash-not-boolean"),
    pytest.param(_creds_value() + ', realm="other"', id="RFC7235-2.1-duplicate-parameter"),
    pytest.param(_creds_value(username='"alice'), id="RFC7230-3.2.6-unterminated-quote"),
    pytest.param(_creds_value(username='"al"ice'), id="RFC7230-3.2.6-junk-after-quote"),
    pytest.param(_creds_value().replace(", realm", " realm", 1), id="RFC7235-2.1-missing-comma"),
    pytest.param(_creds_value(username=""), id="RFC7235-2.1-empty-value"),
    pytest.param(_creds_value() + ", =x", id="RFC7235-2.1-no-parameter-name"),
    pytest.param(_creds_value() + ", lonely", id="RFC7235-2.1-parameter-without-value"),
    pytest.param(_creds_value(username=None, **{"username*": "UTF-8''%ZZ"}),
                 id="RFC5987-3.2.1-bad-percent"),
    pytest.param(_creds_value(username=None, **{"username*": "KOI8-R''abc"}),
                 id="RFC5987-3.2.1-unsupported-charset"),
    pytest.param(_creds_value(username=None, **{"username*": "UTF-8''%C3"}),
                 id="RFC5987-3.2.1-invalid-utf8"),
    pytest.param(_creds_value(username=None, **{"username*": "abc"}), id="RFC5987-3.2.1-no-charset"),
    pytest.param(_creds_value(**{"username*": "UTF-8''bob"}), id="RFC7616-3.4.4-username-and-username-star"),
])
def test_parse_malformed(value):
    with pytest.raises(DigestError) as info:
        parse_credentials(value)
    assert str(info.value)


def test_digest_error_is_a_value_error():
    assert issubclass(DigestError, ValueError)


def test_find_credentials_rfc3261_22_3():
    # RFC 3261 §22.3: a UA may carry credentials for several realms (and
    # other schemes); the one for our realm counts, broken ones are skipped.
    other = _creds_value(realm='"other.example"')
    broken = _creds_value(realm='"r"', nc="xyz")
    ours = _creds_value(username='"bob"')
    values = ["Basic Ym9iOnNlY3JldA==", other, broken, ours, _creds_value(username='"carol"')]
    assert find_credentials(values, "r").username == "bob"
    assert find_credentials([other, broken], "r") is None
    assert find_credentials([], "r") is None


# ------------------------------------------------------------------- verify

def _signed(algorithm="SHA-256", **change) -> tuple[Credentials, str]:
    key = ha1(algorithm, "alice", "r", "secret")
    fields = dict(nonce="n1", nc="00000001", cnonce="c1", qop="auth", method="INVITE",
                  uri="sip:bob@r")
    digest = response(algorithm, key, **fields)
    fields.update(change)
    method = fields.pop("method")
    creds = Credentials(username="alice", realm="r", response=digest, algorithm=algorithm, **fields)
    return creds, method


@pytest.mark.parametrize("algorithm", list(ALGORITHMS) + ["MD5-sess", "SHA-256-sess"])
def test_verify_true_rfc7616_3_4_1(algorithm):
    creds, method = _signed(algorithm)
    key = ha1(algorithm, "alice", "r", "secret")
    assert verify(creds, method, key)
    assert verify(creds, method, key.upper())


@pytest.mark.parametrize("change", [
    pytest.param(dict(nc="00000002"), id="RFC7616-3.4.1-wrong-nc"),
    pytest.param(dict(cnonce="c2"), id="RFC7616-3.4.1-wrong-cnonce"),
    pytest.param(dict(method="BYE"), id="RFC7616-3.4.3-wrong-method"),
    pytest.param(dict(uri="sip:eve@r"), id="RFC7616-3.4.3-wrong-uri"),
    pytest.param(dict(nonce="n2"), id="RFC7616-3.4.1-wrong-nonce"),
])
def test_verify_false(change):
    creds, method = _signed(**change)
    assert not verify(creds, method, ha1("SHA-256", "alice", "r", "secret"))


def test_verify_wrong_password_and_parsed_roundtrip_rfc2617_3_5():
    value = ('Digest username="Mufasa", realm="testrealm@host.com", '
             'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
             'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
             'opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    creds = parse_credentials(value)
    assert verify(creds, "GET", ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life"))
    assert not verify(creds, "GET", ha1("MD5", "Mufasa", "testrealm@host.com", "Circle of Life"))


# ---------------------------------------------------------------- challenge

def test_challenge_shape_and_order_rfc8760_2_3():
    values = challenge("example.com", "abc", ["SHA-256", "md5"], opaque="op")
    assert values == [
        'Digest realm="example.com", nonce="abc", opaque="op", algorithm=SHA-256, qop="auth"',
        'Digest realm="example.com", nonce="abc", opaque="op", algorithm=MD5, qop="auth"',
    ]


def test_challenge_stale_and_quoting_rfc7616_3_3():
    (value,) = challenge('a "b"\\c', "n", ["MD5"], stale=True)
    assert value == 'Digest realm="a \\"b\\"\\\\c", nonce="n", algorithm=MD5, qop="auth", stale=true'
    assert "stale" not in challenge("r", "n", ["MD5"])[0]


def test_challenge_rejects_bad_configuration():
    with pytest.raises(ValueError):
        challenge("r", "n", [])
    with pytest.raises(ValueError):
        challenge("r", "n", ["SHA-1"])


# ------------------------------------------------------------------- nonces

class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _counter_bytes():
    count = 0

    def random_bytes(n: int) -> bytes:
        nonlocal count
        count += 1
        return count.to_bytes(n, "big")
    return random_bytes


def _mint(secret=b"s" * 32, clock=None, lifetime=300.0):
    return NonceMint(secret, lifetime, clock=clock or Clock(), random_bytes=_counter_bytes())


def test_nonce_valid_and_unique():
    mint = _mint()
    a, b = mint.mint(), mint.mint()
    assert a != b
    assert mint.check(a) == VALID and mint.check(b) == VALID


def test_nonce_is_quoted_string_safe_and_hides_the_secret_rfc7616_3_3():
    secret = b"0123456789abcdef-secret"
    nonce = _mint(secret).mint()
    assert all(ch.isalnum() or ch in "-_" for ch in nonce)
    raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    assert secret not in raw and secret[:8] not in raw


def test_nonce_stale_after_lifetime():
    clock = Clock()
    mint = _mint(clock=clock, lifetime=300.0)
    nonce = mint.mint()
    clock.now += 299.0
    assert mint.check(nonce) == VALID
    clock.now += 2.0
    assert mint.check(nonce) == STALE


def test_nonce_shared_secret_validates_on_another_core():
    clock = Clock()
    nonce = _mint(clock=clock).mint()
    assert _mint(clock=clock).check(nonce) == VALID


def test_nonce_tampered_invalid():
    mint = _mint()
    nonce = mint.mint()
    for i in range(len(nonce)):
        swapped = "A" if nonce[i] != "A" else "B"
        assert mint.check(nonce[:i] + swapped + nonce[i + 1:]) == INVALID, i


def test_nonce_other_secret_invalid():
    clock = Clock()
    nonce = _mint(b"a" * 32, clock).mint()
    assert _mint(b"b" * 32, clock).check(nonce) == INVALID


@pytest.mark.parametrize("garbage", [
    "", "abc", "x" * 43, "!" * 43, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "é" * 43, "=" * 44,
])
def test_nonce_garbage_invalid(garbage):
    assert _mint().check(garbage) == INVALID


def test_nonce_with_extra_characters_invalid():
    mint = _mint()
    nonce = mint.mint()
    assert mint.check(nonce + "A") == INVALID
    assert mint.check(nonce[:-1]) == INVALID
    assert mint.check(nonce + "=") == INVALID


def test_nonce_from_the_future_invalid():
    clock = Clock()
    future = _mint(clock=Clock(clock.now + 60)).mint()
    slightly = _mint(clock=Clock(clock.now + 2)).mint()
    mint = _mint(clock=clock)
    assert mint.check(future) == INVALID
    assert mint.check(slightly) == VALID  # within the skew between cores' clocks


def test_nonce_mint_refuses_a_short_secret():
    with pytest.raises(ValueError):
        NonceMint(b"short", clock=Clock(), random_bytes=_counter_bytes())


def test_a_minted_nonce_works_in_a_full_exchange_rfc8760_2_4():
    clock = Clock()
    mint = _mint(clock=clock)
    (value,) = challenge("r", mint.mint(), ["SHA-256"])
    nonce = value.split('nonce="')[1].split('"')[0]
    key = ha1("SHA-256", "alice", "r", "pw")
    digest = response("SHA-256", key, nonce=nonce, nc="00000001", cnonce="xyz", qop="auth",
                      method="REGISTER", uri="sip:r")
    header = (f'Digest username="alice", realm="r", nonce="{nonce}", uri="sip:r", '
              f'response="{digest}", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="xyz"')
    creds = find_credentials([header], "r")
    assert mint.check(creds.nonce) == VALID and verify(creds, "REGISTER", key)
