# Conformance route "allhooks": on_request, on_failure and on_reply.


def on_request(req):
    req.relay("sip:first@b.example")


def on_failure(req, reply):
    if reply.code == 486:
        req.relay("sip:voicemail@b.example")
    else:
        req.reply(reply.code, "Failed: " + reply.reason)


def on_reply(req, reply):
    req.set_header("X-Seen", str(reply.code))
    if reply.header("X-Drop") == "yes":
        req.drop()
