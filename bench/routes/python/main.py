"""Benchmark route: the same logic as bench/kamailio/proxy.cfg, in Python.

bench/run.py copies this folder to a temporary directory and replaces
@UAS_URI@ with the address of the sipp uas of the run.
"""

UAS_URI = "@UAS_URI@"


def on_request(req):
    if req.method == "INVITE":
        req.record_route()
    req.relay(UAS_URI)
