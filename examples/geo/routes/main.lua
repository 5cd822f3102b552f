-- babelsip geo example: the quickstart route (examples/quickstart/routes/main.lua),
-- unchanged, served by both sites. A registrar with digest authentication for
-- two users, and a proxy that routes calls between registered users. Nothing
-- here knows about sites: the core reaches a phone whose flow lives at the
-- other site through that site's core (see ../README.md).
--
-- The SIP core does the protocol work (retransmissions, 100 Trying, Via,
-- Max-Forwards, CANCEL, every rule of registration, the digest challenge and
-- its nonces, NAT). A route only decides: `req` reads the request
-- (req.method, req.ruri_user, req.auth_user, req:header("From"), ...) and
-- decides with req:save, req:lookup, req:relay, req:reply, ...

-- Local-test default: two users with the password "secret". Replace them
-- (or name a credentials file beside this route: {credentials = "users.txt"}).
local USERS = { alice = "secret", bob = "secret" }
local REALM = "babelsip"

function on_request(req)
  if req.method == "REGISTER" then
    -- Without valid credentials for this user the core answers 401 with a
    -- challenge instead of saving; the password is looked up here, by the
    -- name the phone authenticates as (nil for an unknown user: challenged again).
    req:authenticate(REALM, { password = USERS[req.auth_user] })
    req:save()
    return
  end

  -- Stay in the signalling path for the whole dialog, so BYE and re-INVITE
  -- come back through this proxy (RFC 3261 §16.6 step 4).
  req:record_route()

  if req.ruri_local then
    -- A user of this server: ring wherever it registered, for at most 30 s.
    -- Known but not registered: 480; unknown: 404.
    local code = USERS[req.ruri_user] and 480 or 404
    req:lookup({ code = code, timeout = 30 })
  else
    -- Anywhere else: relay to the request URI.
    req:relay(req.ruri, { timeout = 30 })
  end
end
