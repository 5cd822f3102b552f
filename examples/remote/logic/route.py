"""The route logic, served over TCP: run it on the logic host (after `pip install
./sdk/python` there, or in the venv `make` sets up) with

    python -m babelsip_sdk serve --listen 127.0.0.1:7001 examples/remote/logic/route.py

Several hosts (and several connections) share this one process; handlers run
on threads, so anything they share must be thread-safe.
"""

import os
import socket

CONCURRENCY = 8
SERVER = os.environ.get("LOGIC_NAME") or socket.gethostname()

# PLACEHOLDERS on loopback, so the example runs on one machine with sipp as
# the phones (`sipp -sn uas -i 127.0.0.1 -p 5091`): put your users' addresses here.
DIRECTORY = {
    "alice": "sip:alice@127.0.0.1:5091",
    "bob": "sip:bob@127.0.0.1:5092",
}


def on_request(req):
    if req.method == "OPTIONS" and req.ruri_user == "":
        req.reply(200, "OK", [["X-Logic-Server", SERVER]])
        return
    target = DIRECTORY.get(req.ruri_user)
    if target is None:
        req.reply(404, "Not Found")
        return
    req.record_route()
    req.add_header("X-Logic-Server", SERVER)
    req.relay(target)
