# Conformance route "ratelimit": calls per caller counted in the host's store.
# The same route exists for every SDK (routes/<sdk>/ratelimit.*);
# tests/sdk/test_store_conformance.py drives each through its runtime.
from babelsip_sdk import StoreError

LIMIT = 3


def on_request(req):
    try:
        n = req.store.incr("rate:" + req.from_uri, 1, ttl=60)
    except StoreError:
        req.reply(503, "Store unavailable")
        return
    if n > LIMIT:
        req.reply(403, "Over limit")
        return
    req.reply(200, "n=%d" % n)
