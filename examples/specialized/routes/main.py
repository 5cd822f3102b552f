# Every other request: a plain record-routing proxy, in Python.
#
# Requests for the tenants' domains never get here (routes.toml sends them to
# acme.pl and Globex.java); this route serves the rest, and refuses domains
# this proxy does not serve instead of relaying the whole internet.

SERVED = {"example.com", "localhost", "127.0.0.1"}   # placeholders: your domains


def on_request(req):
    if req.ruri_host not in SERVED:
        req.reply(404, "Domain Not Served Here")
        return
    req.record_route()
    req.relay()   # to the request URI
