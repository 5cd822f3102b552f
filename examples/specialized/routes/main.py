# Every other request: a plain record-routing proxy, in Python.
#
# Requests for the tenants' domains never get here (routes.toml sends them to
# acme.pl and Globex.java); this route serves the rest, and refuses domains
# this proxy does not serve instead of relaying the whole internet.
#
# Each caller (its From URI, which nothing here authenticates) may have at
# most MAX_CALLS calls in progress, and no call lasts longer than
# MAX_SECONDS: the core tracks the dialog, counts it in the "caller" profile
# while it lasts, and ends it with a BYE to each side when the time runs out.

SERVED = {"example.com", "localhost", "127.0.0.1"}   # placeholders: your domains
MAX_CALLS = 10            # concurrent calls per caller
MAX_SECONDS = 4 * 3600    # longest call


def on_request(req):
    if req.ruri_host not in SERVED:
        req.reply(404, "Domain Not Served Here")
        return
    if req.method == "INVITE" and not req.in_dialog:
        # A host call: the calls of this caller active now, from the store.
        if req.dialog.count("caller", req.from_uri) >= MAX_CALLS:
            req.reply(403, "Too Many Calls")
            return
        req.add_profile("caller", req.from_uri)
        req.limit_duration(MAX_SECONDS)
    req.record_route()
    req.relay()   # to the request URI
