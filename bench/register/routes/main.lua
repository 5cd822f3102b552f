-- Benchmark route for bench/register.py and bench/registered_calls.py: the
-- same logic as bench/register/kamailio-register.cfg, in Lua.
--   REGISTER: digest authentication (every user, password "secret", realm =
--             the request URI's host, i.e. the server's address 127.0.0.1),
--             then save the bindings.
--   INVITE:   record-route, relay to the request URI's registered bindings
--             (404 when none). INVITEs are not authenticated (nor in Kamailio's).
--   in-dialog requests (ACK, BYE with our Route): no decision, the core
--             follows the route set.

function on_request(req)
  if req.method == "REGISTER" then
    req:authenticate(req.ruri_host, {password = "secret"})
    req:save()
    return
  end
  if req.in_dialog then
    return
  end
  if req.method == "INVITE" then
    req:record_route()
  end
  req:lookup()
end
