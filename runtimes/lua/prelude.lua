-- babelsip Lua prelude: runs first in every route's Lua state, before the script.
--
-- It (1) takes what the host needs from the standard library and removes the
-- unsafe parts, (2) installs the per-event budget (instruction count and
-- wall-clock deadline) as a count hook that also covers coroutines and cannot
-- be swallowed by pcall, and (3) builds the `req` / `reply` objects a script
-- sees, reading the host's event dict lazily and sending every verb straight
-- to the host's Recorder.
--
-- Everything the prelude relies on after this chunk returns is held in locals
-- captured here, so a script that overwrites globals (pcall, type, string...)
-- cannot change how the host side behaves.

local host = ...
local clock = host.clock          -- monotonic seconds (Python time.monotonic)
local call_verb = host.verb       -- (name, a, b, c) -> nil | error message
local find_header = host.header   -- (in_reply, name, all) -> value | values...
local vars_in = host.vars_in      -- () -> table built from event["vars"]
local vars_out = host.vars_out    -- (k1, v1, k2, v2, ...) -> nil
local log = host.log              -- (line) -> nil
local EVERY = host.hook_every     -- instructions between two budget checks
local jit_on = host.jit_on        -- LuaJIT only: leave the JIT on (trusted scripts)

local G = _G
local type, error, select, next, rawget, rawset, rawequal, tostring =
      type, error, select, next, rawget, rawset, rawequal, tostring
local setmetatable, getmetatable = setmetatable, getmetatable
local raw_pcall, raw_xpcall = pcall, xpcall
local concat = table.concat
local unpack = table.unpack or unpack
local load = load
local sethook, gethook, getinfo = debug.sethook, debug.gethook, debug.getinfo
local co_create, co_wrap, co_resume, co_close =
      coroutine.create, coroutine.wrap, coroutine.resume, coroutine.close

-- LuaJIT ignores debug hooks inside compiled traces, so a hot loop would never
-- meet the budget. With the JIT off, every instruction goes through the
-- interpreter, which honours the count hook.
if G.jit and not jit_on then G.jit.off() end

------------------------------------------------------------------------------
-- Sandbox: no file, process, module or bytecode access, no GC control, no
-- debug library, no way into Python.
for _, name in next, {"os", "io", "require", "load", "loadstring", "dofile",
                      "loadfile", "package", "debug", "collectgarbage", "python",
                      "jit", "ffi", "newproxy", "module", "setfenv", "getfenv",
                      "gcinfo", "warn"} do
  rawset(G, name, nil)
end
string.dump = nil

-- Finalizers run with hooks disabled (Lua 5.4 lgc.c GCTM, LuaJIT likewise), so
-- an endless __gc would escape the budget: refuse to arm one.
G.setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not available to routes", 2)
  end
  return setmetatable(t, mt)
end

-- Lua's pattern matcher is C code the count hook never interrupts, and it
-- backtracks: `("a"):rep(20000):find(".-b")` runs for seconds, and every extra
-- quantifier multiplies the cost by the subject length. Subjects (headers,
-- bodies) come from the network, so a pattern's worst case is bounded before it
-- runs: about len^(q+1) steps for q quantifiers (len^q when anchored with ^;
-- a quantifier that ends the pattern does not count).
local byte = string.byte
local s_find, s_match, s_gmatch, s_gsub = string.find, string.match, string.gmatch, string.gsub

local function set_end(p, i, n)      -- i at "["; index just after the matching "]"
  i = i + 1
  if byte(p, i) == 94 then i = i + 1 end            -- ^
  repeat                                            -- the first "]" is literal
    if i > n then return i end
    if byte(p, i) == 37 then i = i + 1 end          -- %x inside a set
    i = i + 1
  until byte(p, i) == 93
  return i + 1
end

local function quantifiers(p)
  local n, q, i = #p, 0, 1
  local anchored = byte(p, 1) == 94
  if anchored then i = 2 end
  while i <= n do
    local c, class = byte(p, i), true
    if c == 40 or c == 41 then i, class = i + 1, false              -- ( )
    elseif c == 37 then                                             -- %
      local d = byte(p, i + 1)
      if d == 98 then i, class = i + 4, false                       -- %bxy
      elseif d == 102 then i, class = set_end(p, i + 2, n), false   -- %f[set]
      else i = i + 2 end
    elseif c == 91 then i = set_end(p, i, n)                        -- [set]
    else i = i + 1 end
    if class then
      local nx = byte(p, i)
      if nx == 42 or nx == 43 or nx == 45 then                      -- * + -
        i = i + 1
        -- A quantifier with nothing but ")" after it never backtracks.
        if not s_find(p, "^%)*$", i) then q = q + 1 end
      elseif nx == 63 then i = i + 1 end                            -- ?
    end
  end
  return anchored and q or q + 1
end

local PATTERN_STEPS = host.pattern_steps
local exponents, cached = {}, 0

local function check_pattern(fname, s, p)
  if PATTERN_STEPS <= 0 or type(s) ~= "string" or type(p) ~= "string" then return end
  local k = exponents[p]
  if not k then
    k = quantifiers(p)
    if cached >= 512 then exponents, cached = {}, 0 end
    exponents[p], cached = k, cached + 1
  end
  if k > 1 and (#s + 1) ^ k > PATTERN_STEPS then
    error(fname .. "(): pattern too costly for a " .. #s .. "-byte subject (worst case ~"
          .. #s .. "^" .. k .. " steps): anchor it with ^, use fewer * + - "
          .. "quantifiers, or shorten the subject", 3)
  end
end

string.find = function(s, p, init, plain)
  if not plain then check_pattern("string.find", s, p) end
  return s_find(s, p, init, plain)
end
string.match = function(s, p, init)
  check_pattern("string.match", s, p)
  return s_match(s, p, init)
end
string.gmatch = function(s, p, ...)
  check_pattern("string.gmatch", s, p)
  return s_gmatch(s, p, ...)
end
string.gsub = function(s, p, r, n)
  check_pattern("string.gsub", s, p)
  return s_gsub(s, p, r, n)
end

G.print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  log(concat(parts, "\t"))
end

------------------------------------------------------------------------------
-- Budget. `spent` is sticky for the rest of the event: once the hook has fired
-- its error, every later hook call fires again and every protected call
-- re-raises, so pcall, xpcall, coroutine.resume or coroutine.close cannot turn
-- a runaway script into one that runs forever.

local BUDGET = setmetatable({}, {__metatable = false,
                                 __tostring = function() return "budget exhausted" end})
local MEMERR = "not enough memory"   -- the message Lua uses for LUA_ERRMEM
local ticks_left, deadline = 0, 0
local spent = false                  -- false | "instructions" | "deadline"
local oom = false
local guard = true                   -- host code running: the hook stands aside

local function on_count()
  if guard then return end
  if spent then error(BUDGET, 0) end
  ticks_left = ticks_left - 1
  if ticks_left <= 0 then spent = "instructions"; error(BUDGET, 0) end
  if clock() > deadline then spent = "deadline"; error(BUDGET, 0) end
end
sethook(on_count, "", EVERY)

local function after_protected(ok, ...)
  if spent then error(BUDGET, 0) end
  if not ok and (...) == MEMERR then oom = true; error(MEMERR, 0) end
  return ok, ...
end

G.pcall = function(f, ...) return after_protected(raw_pcall(f, ...)) end
-- A message handler called for an error the hook raised runs with hooks
-- disabled (Lua 5.4 ldo.c: the hook's allowhook=0 is still in force), so the
-- script's handler is skipped once the budget is spent.
G.xpcall = function(f, h, ...)
  local function handler(e)
    if spent then return e end
    return h(e)
  end
  return after_protected(raw_xpcall(f, handler, ...))
end

-- Lua 5.2+ keeps a debug hook per coroutine and a new coroutine starts without
-- one, so each coroutine body installs the hook on itself before running.
-- LuaJIT's hook is global: there, setting it again would only reset the
-- instruction count, and a loop creating coroutines would never be stopped.
local _, per_thread_hooks = co_resume(co_create(function() return gethook() ~= on_count end))
local function hooked(f, who)
  if type(f) ~= "function" then
    error("bad argument #1 to '" .. who .. "' (function expected)", 3)
  end
  return function(...)
    sethook(on_count, "", EVERY)
    return f(...)
  end
end
if per_thread_hooks then
  coroutine.create = function(f) return co_create(hooked(f, "create")) end
  coroutine.wrap = function(f) return co_wrap(hooked(f, "wrap")) end
end
coroutine.resume = function(co, ...) return after_protected(co_resume(co, ...)) end
if co_close then
  coroutine.close = function(co) return after_protected(co_close(co)) end
end

------------------------------------------------------------------------------
-- Events.

local cur_ev, cur_reply, cur_req, cur_rep = nil, nil, nil, nil
local vars_touched = false           -- req.vars was read or assigned this event
local script_source = nil            -- "@name.lua" of the loaded script
local err_line = nil

local FIELDS = {}
for _, k in next, {"method", "ruri", "ruri_user", "ruri_host", "from_uri", "from_tag",
                   "to_uri", "to_tag", "call_id", "cseq", "source_ip", "source_port",
                   "transport", "in_dialog", "body"} do
  FIELDS[k] = true
end

local function getitem(d, k) return d[k] end

local function read(d, k)
  -- A missing key raises KeyError on the Python side; a route sees nil.
  local ok, v = raw_pcall(getitem, d, k)
  if ok then return v end
  return nil
end

local REQ = {}       -- methods of req
local REPLY = {}     -- methods of reply

local function verb_method(name)
  return function(self, a, b, c)
    if not rawequal(self, cur_req) then
      error("req:" .. name .. "() called outside the event it belongs to (use req:, not req.)", 2)
    end
    local err = call_verb(name, a, b, c)
    if err then error(err, 2) end
  end
end
for _, name in next, {"reply", "relay", "redirect", "drop", "set_ruri", "set_header",
                      "add_header", "remove_header", "record_route"} do
  REQ[name] = verb_method(name)
end

local function header_method(in_reply, all, what)
  return function(self, name)
    if type(name) ~= "string" then
      error(what .. "(): header name must be a string", 2)
    end
    if all then return {find_header(in_reply, name, true)} end
    return find_header(in_reply, name, false)
  end
end
REQ.header = header_method(false, false, "req:header")
REQ.headers = header_method(false, true, "req:headers")
REPLY.header = header_method(true, false, "reply:header")

local REQ_MT = {
  __metatable = false,
  __index = function(t, k)
    local m = REQ[k]
    if m then return m end
    if not rawequal(t, cur_req) then
      error("req." .. tostring(k) .. " read outside the event it belongs to", 2)
    end
    if k == "vars" then
      local vars = vars_in()
      rawset(t, "vars", vars)
      vars_touched = true
      return vars
    end
    if FIELDS[k] then
      local v = read(cur_ev, k)
      rawset(t, k, v)
      return v
    end
    return nil
  end,
  __newindex = function(t, k, v)
    if k == "vars" and (v == nil or type(v) == "table") and rawequal(t, cur_req) then
      rawset(t, k, v)
      vars_touched = true
      return
    end
    error("req." .. tostring(k) .. " is read-only: use req:set_ruri(), req:set_header() "
          .. "or req.vars", 2)
  end,
}

local REPLY_MT = {
  __metatable = false,
  __index = function(t, k)
    local m = REPLY[k]
    if m then return m end
    if not rawequal(t, cur_rep) then
      error("reply." .. tostring(k) .. " read outside the event it belongs to", 2)
    end
    if k == "code" or k == "reason" then
      local v = read(cur_reply, k)
      rawset(t, k, v)
      return v
    end
    return nil
  end,
  __newindex = function(_, k)
    error("reply." .. tostring(k) .. " is read-only", 2)
  end,
}

-- Message handler of the host's xpcall: remember the innermost line of the
-- script on the stack (the error's own "file:line:" prefix, parsed by the
-- host, takes precedence when it names the script).
local function on_error(e)
  guard = true
  err_line = nil
  for level = 2, 60 do
    local info = getinfo(level, "Sl")
    if not info then break end
    if info.source == script_source then err_line = info.currentline; break end
  end
  -- The hook stays armed: to-be-closed variables (__close) still run while
  -- the error unwinds, and they are script code.
  guard = false
  return e
end

local function classify(e)
  if spent then return "budget", spent, err_line end
  if oom or e == MEMERR then return "memory", MEMERR, err_line end
  local te = type(e)
  local msg
  if te == "string" then msg = e
  elseif te == "number" then msg = tostring(e)
  else msg = "error object is a " .. te .. " value" end   -- no __tostring: no script code here
  return "error", msg, err_line
end

-- Run f(...) as script code under a fresh budget. The hook may still fire on
-- the instruction between the xpcall returning and `guard = true`; the outer
-- pcall catches that error (the hook cannot fire again within EVERY
-- instructions), so nothing escapes to Python.
local function protected(f, ...)
  guard = false
  local ok, e = raw_xpcall(f, on_error, ...)
  guard = true
  return ok, e
end

local function run_budgeted(ticks, dl, f, ...)
  ticks_left, deadline, spent, oom, err_line = ticks, dl, false, false, nil
  local fine, ok, e = raw_pcall(protected, f, ...)
  guard = true
  if not fine then return false, ok end
  return ok, e
end

-- Send the simple contents of req.vars back to the host, flat.
local MAX_VARS = 256
local function collect_vars(req)
  local vars = rawget(req, "vars")
  if vars == nil then vars = {} end                 -- req.vars = nil clears them
  if type(vars) ~= "table" then error("req.vars must be a table, got a " .. type(vars), 0) end
  local flat, n = {}, 0
  for k, v in next, vars do
    if type(k) ~= "string" then
      error("req.vars: keys must be strings, got a " .. type(k), 0)
    end
    local tv = type(v)
    if tv ~= "string" and tv ~= "number" and tv ~= "boolean" then
      error("req.vars." .. k .. ": only strings, numbers and booleans are kept, got a " .. tv, 0)
    end
    n = n + 2
    if n > 2 * MAX_VARS then error("req.vars: more than " .. MAX_VARS .. " variables", 0) end
    flat[n - 1], flat[n] = k, v
  end
  vars_out(unpack(flat, 1, n))
end

local function run_hook(fn, req, rep)
  fn(req, rep)
  if vars_touched then collect_vars(req) end
end

local api = {per_thread_hooks = per_thread_hooks}

-- Compile and run the script's chunk under the budget.
-- Returns "ok", hooks... | "syntax", message | kind, message, line.
function api.load_script(src, chunkname, ticks, dl)
  script_source = chunkname
  local fn, err = load(src, chunkname, "t", G)   -- "t": never accept bytecode
  if not fn then return "syntax", err end
  local ok, e = run_budgeted(ticks, dl, fn)
  if not ok then return classify(e) end
  local found = {}
  for _, h in next, {"on_request", "on_failure", "on_reply"} do
    if type(rawget(G, h)) == "function" then found[#found + 1] = h end
  end
  return "ok", unpack(found)
end

-- Run one hook. Returns nothing on success, or kind, message, line.
function api.dispatch(hook, ev, reply, ticks, dl)
  local fn = rawget(G, hook)
  if type(fn) ~= "function" then return end
  cur_ev, cur_reply, vars_touched = ev, reply, false
  local req = setmetatable({}, REQ_MT)
  local rep = reply and setmetatable({}, REPLY_MT) or nil
  cur_req, cur_rep = req, rep
  local ok, e = run_budgeted(ticks, dl, run_hook, fn, req, rep)
  cur_ev, cur_reply, cur_req, cur_rep = nil, nil, nil, nil
  if ok then return end
  return classify(e)
end

return api
