# Conformance route "broken": fails to load (a syntax error on line 4).

def on_request(req)
    req.reply(200)
