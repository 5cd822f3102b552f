-- babelsip quickstart route: a plain proxy with one rule and a voicemail fallback.
--
-- The SIP core already does the protocol work (retransmissions, 100 Trying,
-- Via, Max-Forwards, CANCEL, OPTIONS to the proxy itself). A route only decides
-- where a request goes. `req` reads the request (req.method, req.ruri_user,
-- req:header("From"), ...) and decides with one of req:reply, req:relay,
-- req:redirect or req:drop. Returning without a decision relays to the
-- request URI.

-- Placeholder: where unanswered calls go. Replace with your voicemail server.
local VOICEMAIL_HOST = "voicemail.example.com"

function on_request(req)
  -- Stay in the signalling path for the whole dialog, so BYE and re-INVITE
  -- come back through this proxy (RFC 3261 §16.6 step 4).
  req:record_route()

  if req.ruri_user == "blocked" then
    req:reply(403, "Forbidden")
    return
  end

  -- Ring the callee for at most 30 seconds. The request URI is used as is.
  req:relay(req.ruri, {timeout = 30})
end

-- Called when every branch failed: busy, no answer, unreachable, ...
-- `reply` is the best final response the core has collected.
function on_failure(req, reply)
  local busy_or_unanswered = reply.code == 486 or reply.code == 408 or reply.code == 480
  -- req.vars lives as long as the call: use it so voicemail is tried only once.
  if busy_or_unanswered and req.ruri_user and not req.vars.tried_voicemail then
    req.vars.tried_voicemail = true
    req:relay("sip:" .. req.ruri_user .. "@" .. VOICEMAIL_HOST)
    return
  end
  -- No decision: the core sends the best final response upstream.
end
