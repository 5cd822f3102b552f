# Conformance route "counter": host key/value calls inside an event.


def on_request(req):
    if req.ruri_user == "err":
        req.store.get("forbidden")  # the transcript answers with an error
        req.reply(500, "unreachable")
        return
    n = req.store.incr("calls", 1)
    last = req.store.get("last")
    req.store.set("last", req.ruri_user, 60)
    req.reply(200, "n=%d last=%s" % (n, last or ""))
