# Conformance route "basic": behaviour chosen by the request-URI user part.
# Every SDK's version of this route must behave identically (see ../README.md).


def on_request(req):
    user = req.ruri_user
    if user == "reply":
        req.reply(486, "Busy Here")
    elif user == "relay":
        req.record_route()
        req.relay(["sip:a@b.example", "sip:c@d.example"], mode="serial", timeout=5)
    elif user == "relay1":
        req.relay("sip:one@b.example")
    elif user == "redirect":
        req.redirect(["sip:x@y.example"])
    elif user == "drop":
        req.drop()
    elif user == "edit":
        req.set_ruri("sip:new@host.example")
        req.set_header("X-A", "1")
        req.add_header("X-B", "2")
        req.remove_header("X-C")
    elif user == "hdr":
        req.reply(200, "OK", [["X-Echo", req.header("X-In") or "none"],
                              ["X-Count", str(len(req.headers("x-multi")))]])
    elif user == "info":
        fields = [req.method, req.ruri, req.ruri_host, req.from_uri, req.from_tag, req.to_uri,
                  req.call_id, str(req.cseq), req.source_ip, str(req.source_port), req.transport,
                  "yes" if req.in_dialog else "no", req.body]
        req.reply(200, "|".join(fields))
    elif user == "vars":
        req.vars["count"] = (req.vars.get("count") or 0) + 1
        req.relay()
    elif user == "boom":
        raise RuntimeError("boom")
    # any other user: no verbs at all (the route "just returns")
