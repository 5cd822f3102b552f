# Conformance route "services": the service verbs and host calls (see ../README.md).


def on_request(req):
    user = req.ruri_user
    if req.method == "REGISTER":
        req.authenticate("example.com", password="secret")
        req.save(max_expires=3600)
    elif user == "local":
        req.lookup()
    elif user == "away":
        req.lookup(code=480, reason="Temporarily Unavailable", timeout=20)
    elif user == "nat":
        req.fix_contact()
        req.relay()
    elif user == "cap":
        n = req.dialog.count("caller", req.from_uri)
        if n >= 2:
            return req.reply(486, "Too many calls")
        req.add_profile("caller", req.from_uri)
        req.limit_duration(3600)
        req.relay()
    elif user == "where":
        found = req.registrar.lookup("sip:bob@example.com")
        req.reply(200, "n=%d first=%s" % (len(found), found[0]["contact"] if found else ""))
    elif user == "who":
        req.reply(200, "user=" + req.auth_user)
    elif user == "strict":
        req.authenticate("example.com", ha1="5f4dcc3b5aa765d61d8327deb882cf99",
                         algorithms=["SHA-256", "MD5"], identity=False)
        req.add_profile("all")
        req.relay()


def on_reply(req, reply):
    req.fix_contact()
