-- babelsip "intensive traffic" example: least-cost routing by number prefix,
-- with serial failover between gateways.
--
-- The logic is deliberately small and allocation-light: one table lookup per
-- call on the hot path, everything else computed once when the file loads.

-- Gateways: PLACEHOLDERS on loopback. Replace them with your carriers.
local GATEWAYS = {
  alpha = "127.0.0.1:5091",
  beta  = "127.0.0.1:5092",
  gamma = "127.0.0.1:5093",
}

-- Number prefix -> gateways in order of preference. The longest matching
-- prefix wins; "" matches every number.
local ROUTES = {
  ["0033"] = {"alpha", "beta"},           -- France
  ["0044"] = {"beta", "gamma"},           -- United Kingdom
  ["00"]   = {"gamma", "alpha"},          -- other international
  [""]     = {"alpha", "beta", "gamma"},  -- national
}

local BRANCH_TIMEOUT = 5  -- seconds before a silent gateway counts as failed

-- Prefixes, longest first, so the first match is the longest one.
local PREFIXES = {}
for prefix in pairs(ROUTES) do PREFIXES[#PREFIXES + 1] = prefix end
table.sort(PREFIXES, function(a, b) return #a > #b end)

local function longest_prefix(number)
  for _, prefix in ipairs(PREFIXES) do
    if number:sub(1, #prefix) == prefix then return prefix end
  end
end

-- "+33 1 23" style users are normalised to "0033123"; anything else is not a number.
local function normalise(user)
  if not user then return nil end
  user = user:gsub("[%s%-%.]", ""):gsub("^%+", "00")
  if user:match("^%d+$") then return user end
end

local function target(number, gateway)
  return "sip:" .. number .. "@" .. GATEWAYS[gateway]
end

function on_request(req)
  if req.method ~= "INVITE" then
    -- Only calls are routed here; let the core proxy the rest unchanged.
    return
  end
  local number = normalise(req.ruri_user)
  if not number then
    req:reply(404, "Not a Phone Number")
    return
  end
  local prefix = longest_prefix(number)
  -- Remember the route and the gateway tried for on_failure (req.vars is per call).
  req.vars.number, req.vars.prefix, req.vars.attempt = number, prefix, 1
  req:record_route()
  req:relay(target(number, ROUTES[prefix][1]), {timeout = BRANCH_TIMEOUT})
end

function on_failure(req, reply)
  local code = reply.code
  -- Busy, not found, declined...: the callee answered, another gateway would
  -- say the same. Fail over only on timeouts and server errors (408, 5xx).
  if code ~= 408 and (code < 500 or code >= 600) then return end
  local gateways = ROUTES[req.vars.prefix]
  local attempt = (req.vars.attempt or 1) + 1
  if not gateways or not gateways[attempt] then return end  -- all tried: pass the failure on
  req.vars.attempt = attempt
  req:relay(target(req.vars.number, gateways[attempt]), {timeout = BRANCH_TIMEOUT})
end
