"""The geo example's routing logic, served to BOTH sites by a pool of logic
servers (examples/geo/README.md). Run each logic server with

    LOGIC_NAME=primary python -m babelsip_sdk serve --listen 127.0.0.1:7161 examples/geo/logic/main.py

It is the quickstart route (examples/quickstart/routes/main.lua) in Python:
digest REGISTER for alice and bob (password "secret", realm "babelsip"),
calls to local users by lookup. Two additions show where decisions come
from: every call it routes carries `X-Logic-Server: <LOGIC_NAME>` (which
logic server decided) and `X-Geo-Call: <n>`, a counter in the host's store
that both sites share (the same route name, `main`, so the same keys,
route:main:..., in the one Redis).

Nothing here knows about sites, and nothing is kept in this process: the
registrations and the counter are in the sites' store, so any logic server
of the pool can decide any event. Handlers run on threads (one per site
connection, CONCURRENCY each): keep them free of shared mutable state.
"""

import os
import socket

from babelsip_sdk import StoreError

CONCURRENCY = 8
SERVER = os.environ.get("LOGIC_NAME") or socket.gethostname()

# Local-test default: two users with the password "secret".
USERS = {"alice": "secret", "bob": "secret"}
REALM = "babelsip"


def on_request(req):
    if req.method == "REGISTER":
        # Without valid credentials the core answers 401 with a challenge.
        req.authenticate(REALM, password=USERS.get(req.auth_user))
        req.save()
        return

    # Stay in the path of the whole dialog (RFC 3261 §16.6 step 4).
    req.record_route()
    if req.method == "INVITE" and not req.in_dialog:
        req.add_header("X-Logic-Server", SERVER)
        try:
            req.add_header("X-Geo-Call", str(req.store.incr("calls", 1)))
        except StoreError:
            pass   # the store is down: the call goes on without its number

    if req.ruri_local:
        # Known but not registered: 480; unknown: 404.
        req.lookup(code=480 if req.ruri_user in USERS else 404, timeout=30)
    else:
        req.relay(req.ruri, timeout=30)
