-- REGISTER for every domain: a PLACEHOLDER registrar.
--
-- This route accepts every registration with 200 OK and echoes the Contact
-- bindings back with their expiry, which is what a phone needs to stay
-- "registered" (RFC 3261 §10.3 step 8) - but nothing is saved, so calls to a
-- registered user are not routed to it. The core's registrar does store
-- them: replace the body of on_request with
--   req:authenticate(REALM, {password = ...}); req:save()
-- as examples/quickstart/routes/main.lua does.
--
-- It runs in Lua, in-process: REGISTER refreshes are the most frequent
-- requests a proxy sees, and Lua has no process hop and no JSON per request.

local DEFAULT_EXPIRES = 3600   -- RFC 3261 §10.2.1.1: the registrar picks one when none is given
local MAX_EXPIRES = 7200

local function expires_of(req)
  local e = tonumber(req:header("Expires") or "")
  if not e then return DEFAULT_EXPIRES end
  if e > MAX_EXPIRES then return MAX_EXPIRES end
  return e
end

function on_request(req)
  if req.method ~= "REGISTER" then
    return                       -- routes.toml only sends REGISTER here; proxy anything else
  end
  local contact = req:header("Contact")
  if not contact then
    -- A REGISTER without Contact is a query for the current bindings; we keep none.
    req:reply(200, "OK")
    return
  end
  local expires = expires_of(req)
  if contact ~= "*" and not contact:find(";%s*expires=") then
    contact = contact .. ";expires=" .. expires
  end
  req:reply(200, "OK", {{"Contact", contact}, {"Expires", tostring(expires)}})
end
