-- Conformance route "ratelimit": calls per caller counted in the host's store.
-- The same route exists for every SDK (routes/<sdk>/ratelimit.*);
-- tests/sdk/test_store_conformance.py drives each through its runtime.
local LIMIT = 3

function on_request(req)
  local ok, n = pcall(function()
    return req.store:incr("rate:" .. req.from_uri, 1, 60)
  end)
  if not ok then
    req:reply(503, "Store unavailable")
    return
  end
  if n > LIMIT then
    req:reply(403, "Over limit")
    return
  end
  req:reply(200, "n=" .. n)
end
