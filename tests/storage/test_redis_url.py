"""--store URLs (host/storage/redis_url.py): every form, and a clear error for
each mistake. No Redis needed."""

from __future__ import annotations

import pytest

from host.storage import StoreError
from host.storage.redis import RedisStore
from host.storage.redis_url import RedisTarget, parse_store_url


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1", RedisTarget("single", False, (("127.0.0.1", 6379),))),
    ("redis://r.example:6380/2", RedisTarget("single", False, (("r.example", 6380),), db=2)),
    ("rediss://user:p%40ss@r.example/0",
     RedisTarget("single", True, (("r.example", 6379),), username="user", password="p@ss")),
    ("redis://:secret@[::1]:6390", RedisTarget("single", False, (("::1", 6390),), password="secret")),
    ("redis+sentinel://10.0.0.1,10.0.0.2:26380/mymaster",
     RedisTarget("sentinel", False, (("10.0.0.1", 26379), ("10.0.0.2", 26380)), service="mymaster")),
    ("rediss+sentinel://u:pw@s1:26379/svc/3",
     RedisTarget("sentinel", True, (("s1", 26379),), db=3, service="svc", username="u", password="pw")),
    ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
     RedisTarget("cluster", False, (("127.0.0.1", 7000), ("127.0.0.1", 7001)))),
    ("REDIS+CLUSTER://n1", RedisTarget("cluster", False, (("n1", 6379),))),
    ("redis://h:6379/1?ssl_cert_reqs=none", RedisTarget("single", False, (("h", 6379),), db=1)),
])
def test_forms(url, expected):
    assert parse_store_url(url) == expected


@pytest.mark.parametrize("url, message", [
    ("127.0.0.1:6379", "expected a URL"),
    ("memcached://h", "unknown scheme 'memcached'"),
    ("redis://a:1,b:2", "redis:// names one server"),
    ("redis://h/zero", "the database must be a number, got 'zero'"),
    ("redis://h/0/1", "at most /db"),
    ("redis://h:0", "bad port"),
    ("redis://h:65536", "bad port"),
    ("redis://h:port", "bad port"),
    ("redis://::1", "write an IPv6 address as [addr]:port"),
    ("redis://", "a host is missing"),
    ("redis+sentinel://s1:26379", "needs the service name"),
    ("redis+sentinel://s1/svc/x", "the database must be a number"),
    ("redis+sentinel://s1/svc/0/9", "expected /service[/db]"),
    ("redis+cluster://n1,n2/0", "a Redis Cluster has one database"),
    ("redis+cluster://n1,,n2", "a host is missing"),
])
def test_mistakes_are_store_errors_that_say_what(url, message):
    with pytest.raises(StoreError) as err:
        parse_store_url(url)
    assert message in str(err.value)
    assert repr(url) in str(err.value)      # names the URL given (--store ...)
    with pytest.raises(StoreError):         # what babelsip run --store reports
        RedisStore(url)


def test_display_hides_the_credentials():
    assert parse_store_url("rediss://u:hunter2@h:7/1").display() == "rediss://h:7/1"
    assert (parse_store_url("redis+sentinel://:pw@s1,[::1]:26380/svc").display()
            == "redis+sentinel://s1:26379,[::1]:26380/svc/0")
    assert parse_store_url("redis+cluster://a:1,b:2").display() == "redis+cluster://a:1,b:2"
