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
local CLOCK_EVERY = host.clock_every  -- budget checks between two clock reads
local jit_on = host.jit_on        -- LuaJIT only: leave the JIT on (trusted scripts)
local MAX_BYTES = host.max_bytes  -- the state's memory cap, in bytes
local VARS_MAX_BYTES = host.vars_max_bytes  -- serialized size allowed to req.vars
local LOG_LINE_MAX = host.log_line_max      -- bytes of one print() line kept

local G = _G
local type, error, select, next, rawget, rawset, rawequal, tostring =
      type, error, select, next, rawget, rawset, rawequal, tostring
local setmetatable, getmetatable = setmetatable, getmetatable
local raw_pcall, raw_xpcall = pcall, xpcall
local concat = table.concat
local unpack = table.unpack or unpack
local load = load
local sethook, gethook, getinfo = debug.sethook, debug.gethook, debug.getinfo
local raw_getmetatable = debug.getmetatable   -- sees through __metatable
local tonumber, floor = tonumber, math.floor
local format, s_sub = string.format, string.sub
local co_create, co_wrap, co_resume, co_close =
      coroutine.create, coroutine.wrap, coroutine.resume, coroutine.close
local co_yield, co_running, co_isyieldable = coroutine.yield, coroutine.running, coroutine.isyieldable

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

-- The standard library is C code the count hook never interrupts, and the
-- route's event runs in a worker thread that keeps running, GIL released, after
-- the host abandons it at its deadline. Every C function whose running time is
-- not bounded by its arguments' sizes (themselves bounded by the memory cap) is
-- wrapped here so that its work is bounded before it starts.
--
-- Pattern matching backtracks: `("a"):rep(20000):find(".-b")` runs for
-- seconds, and subjects (headers, bodies) come from the network. A pattern's
-- worst case is estimated before it runs, for a subject of n bytes, as
--   starts * (n+1)^w * 2^o * items
-- starts: n+1 positions tried (1 when anchored with ^);
-- w: quantifiers * + - that can backtrack (each retries up to n+1 lengths; one
--    with nothing but ")" after it never backtracks), plus %b and back-
--    references %1-%9, which each scan up to n bytes per attempt;
-- o: ? quantifiers, each tried with and without its item;
-- items: pattern length, the cost of one attempt without backtracking (also the
--    worst case of a plain find: compare up to #p bytes at each start).
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

-- (w, o) of pattern p, scanned from index i (see above).
local function complexity(p, i)
  local n, w, o = #p, 0, 0
  while i <= n do
    local c, class = byte(p, i), true
    if c == 40 or c == 41 then i, class = i + 1, false              -- ( )
    elseif c == 37 then                                             -- %
      local d = byte(p, i + 1)
      if d == 98 then i, class, w = i + 4, false, w + 1             -- %bxy: a scan
      elseif d == 102 then i, class = set_end(p, i + 2, n), false   -- %f[set]
      elseif d and d >= 49 and d <= 57 then                         -- %1-%9: a scan
        i, class, w = i + 2, false, w + 1
      else i = i + 2 end
    elseif c == 91 then i = set_end(p, i, n)                        -- [set]
    else i = i + 1 end
    if class then
      local nx = byte(p, i)
      if nx == 42 or nx == 43 or nx == 45 or nx == 63 then          -- * + - ?
        i = i + 1
        -- A quantifier with nothing but ")" after it never backtracks.
        if not s_find(p, "^%)*$", i) then
          if nx == 63 then o = o + 1 else w = w + 1 end
        end
      end
    end
  end
  return w, o
end

local PATTERN_STEPS = host.pattern_steps
local INLINE_PATTERN_STEPS = host.inline_pattern_steps
-- Set while an event runs on the host's event loop rather than in the state's
-- thread (runtime.py: inline): its budget is then the inline one, and
-- outgrowing it stops the event with spent = "inline" so that the host runs
-- it again, from the start, in the thread with the event's full budget.
local inline = false
local spent_inline                   -- defined with the budget, below
local shapes, cached = {}, 0         -- pattern -> {anchored, w, o}, at most 512
local PLAIN = {false, 0, 0}

local function pattern_shape(p, anchoring)
  local key = anchoring and p or "\0" .. p
  local shape = shapes[key]
  if not shape then
    local anchored = anchoring and byte(p, 1) == 94
    local w, o = complexity(p, anchored and 2 or 1)
    shape = {anchored, w, o}
    if cached >= 512 then shapes, cached = {}, 0 end
    shapes[key], cached = shape, cached + 1
  end
  return shape
end

-- anchoring: false for gmatch, where a leading ^ is an ordinary character.
local function check_pattern(fname, s, p, plain, anchoring)
  if PATTERN_STEPS <= 0 then return end
  -- The C function converts numbers to strings, and rejects anything else itself.
  if type(s) == "number" then s = tostring(s) end
  if type(p) == "number" then p = tostring(p) end
  if type(s) ~= "string" or type(p) ~= "string" then return end
  local shape = plain and PLAIN or pattern_shape(p, anchoring)
  local n = #s + 1
  local steps = (shape[1] and 1 or n) * n ^ shape[2] * 2 ^ shape[3] * (#p + 1)
  if inline and steps > INLINE_PATTERN_STEPS and steps <= PATTERN_STEPS then
    spent_inline()                   -- too long a C call for the event loop: rerun in the thread
  end
  if steps > PATTERN_STEPS then
    error(fname .. "(): pattern too costly for a " .. #s .. "-byte subject (worst case ~"
          .. format("%.3g", steps) .. " steps, the limit is " .. PATTERN_STEPS
          .. "): anchor it with ^, use fewer * + - ? quantifiers, %b or back-references, "
          .. "or shorten the subject", 3)
  end
end

string.find = function(s, p, init, plain)
  check_pattern("string.find", s, p, plain, true)
  return s_find(s, p, init, plain)
end
string.match = function(s, p, init)
  check_pattern("string.match", s, p, false, true)
  return s_match(s, p, init)
end
string.gmatch = function(s, p, ...)
  check_pattern("string.gmatch", s, p, false, false)
  return s_gmatch(s, p, ...)
end
string.gsub = function(s, p, r, n)
  check_pattern("string.gsub", s, p, false, true)
  return s_gsub(s, p, r, n)
end

-- string.rep builds count * (#s + #sep) bytes, one copy per repetition, so
-- string.rep("", 2^50) loops 2^50 times without allocating anything. A result
-- larger than the memory cap could never be kept: refuse the count up front.
local s_rep = string.rep
string.rep = function(s, count, sep)
  local c = tonumber(count)
  if c and c > 0 then
    local unit = (type(s) == "string" and #s or 0) + (type(sep) == "string" and #sep or 0)
    if c * (unit > 0 and unit or 1) > MAX_BYTES then
      error("bad argument #2 to 'rep' (" .. format("%.0f", c)
            .. " repetitions exceed the route's memory limit of " .. MAX_BYTES .. " bytes)", 2)
    end
  end
  return s_rep(s, count, sep)
end

-- table.move/concat walk an index range given as numbers, and insert/remove/
-- sort one given by __len: table.move({}, 1, 2^40, 1) copies nil to nil 2^40
-- times. No table in this state can hold more than MAX_BYTES / 16 elements
-- (16 bytes per array slot in Lua 5.4, 8 in LuaJIT), so a longer range is a
-- mistake or an attack.
local MAX_ELEMENTS = floor(MAX_BYTES / 16)
local T = G.table

local function check_range(fname, first, last)
  if first == nil or last == nil then return end
  first, last = tonumber(first), tonumber(last)
  if first and last and last - first >= MAX_ELEMENTS then
    error("bad argument to '" .. fname .. "' (a range of " .. format("%.0f", last - first + 1)
          .. " elements; at most " .. MAX_ELEMENTS .. " fit in the route's memory)", 3)
  end
end

-- #t of a table whose __len says so; nil for a plain table (its length is
-- bounded by what it holds).
local function declared_length(t)
  if type(t) ~= "table" then return nil end
  local mt = raw_getmetatable(t)
  if mt == nil or rawget(mt, "__len") == nil then return nil end
  return #t
end

local t_move, t_concat, t_insert, t_remove, t_sort = T.move, T.concat, T.insert, T.remove, T.sort
if t_move then
  T.move = function(a1, f, e, t, a2)
    check_range("move", f, e)
    return t_move(a1, f, e, t, a2)
  end
end
T.concat = function(list, sep, i, j)
  if j == nil and type(list) == "table" then j = #list end
  check_range("concat", i == nil and 1 or i, j)
  return t_concat(list, sep, i, j)
end
T.insert = function(t, ...)
  check_range("insert", 1, declared_length(t))
  return t_insert(t, ...)
end
T.remove = function(t, ...)
  check_range("remove", 1, declared_length(t))
  return t_remove(t, ...)
end
T.sort = function(t, ...)
  check_range("sort", 1, declared_length(t))
  return t_sort(t, ...)
end

-- One print() is one log line, cut to LOG_LINE_MAX bytes here so that a huge
-- value is never copied into the host; the host limits lines per second.
G.print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  local line = concat(parts, "\t")
  if #line > LOG_LINE_MAX then
    line = s_sub(line, 1, LOG_LINE_MAX) .. " [... " .. (#line - LOG_LINE_MAX) .. " more bytes]"
  end
  log(line)
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
local spent = false                  -- false | "instructions" | "deadline" | "inline"
-- An inline event's own budget, and what it started from (the event's full
-- one, which a host call's resume continues with in the thread).
local inline_ticks, full_ticks, full_deadline = 0, 0, 0
local oom = false
local guard = true                   -- host code running: the hook stands aside

-- The clock is a Python function: reading it takes the GIL, which the event
-- loop's thread holds most of the time. It is read every CLOCK_EVERY ticks only.
local function on_count()
  if guard then return end
  if spent then error(BUDGET, 0) end
  ticks_left = ticks_left - 1
  if ticks_left <= 0 then
    spent = (inline and inline_ticks < full_ticks) and "inline" or "instructions"
    error(BUDGET, 0)
  end
  if ticks_left % CLOCK_EVERY == 0 then
    local now = clock()
    if now > deadline then
      spent = (inline and now <= full_deadline) and "inline" or "deadline"
      error(BUDGET, 0)
    end
  end
end

spent_inline = function()
  spent = "inline"
  error(BUDGET, 0)
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
-- Events run in coroutines of the host's own (runners, below). A script must
-- not drive one: resuming another event's parked runner would run that event's
-- code in this one's context, and a yield of its own would reach the host.
local RUNNERS = setmetatable({}, {__mode = "k"})
local function not_a_runner(co, who)
  if RUNNERS[co] then error("coroutine." .. who .. "(): the event's own coroutine is the host's", 3) end
end
coroutine.resume = function(co, ...)
  not_a_runner(co, "resume")
  return after_protected(co_resume(co, ...))
end
if co_close then
  coroutine.close = function(co)
    not_a_runner(co, "close")
    return after_protected(co_close(co))
  end
end
coroutine.yield = function(...)
  if RUNNERS[co_running()] then error("attempt to yield from outside a coroutine", 2) end
  return co_yield(...)
end
if co_isyieldable then
  coroutine.isyieldable = function()
    return not RUNNERS[co_running()] and co_isyieldable()
  end
end

------------------------------------------------------------------------------
-- Events.

local cur_ev, cur_reply, cur_req, cur_rep = nil, nil, nil, nil
local cur_calls = nil                -- the event's req.store/registrar/dialog by name, made when first read
local cur_runner = nil               -- the coroutine the current event runs in
local cur_fields = nil               -- the event's prefetched fields, by PREFETCHED index
local vars_touched = false           -- req.vars was read or assigned this event
local script_source = nil            -- "@name.lua" of the loaded script
local err_line = nil
local hook_line = nil                -- where the running hook is defined (vars errors)

-- Fields the host passes with the call (runtime.py PREFETCHED, same order),
-- and the ones read from the event dict when first used.
local PREFETCHED = {}
for i, k in next, {"method", "ruri", "ruri_user", "ruri_host", "from_uri", "from_tag",
                   "to_uri", "to_tag", "call_id", "cseq", "source_ip", "source_port",
                   "transport", "in_dialog"} do
  PREFETCHED[k] = i
end
-- Read from the event dict only when a script asks (a call back into Python):
-- the body is large, and the hook is rarely asked (it is the function's name).
-- MISSING: what a script sees when the event lacks the field (auth_user is
-- on_request's only; hosts older than the services send neither).
local LAZY = {body = true, hook = true, auth_user = true, ruri_local = true}
local MISSING = {auth_user = "", ruri_local = false}

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
                      "add_header", "remove_header", "record_route", "authenticate", "save",
                      "lookup", "fix_contact", "limit_duration", "add_profile"} do
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

------------------------------------------------------------------------------
-- Host calls (the OpenResty cosocket model): req.store:get/set/delete/incr,
-- req.registrar:lookup(aor), req.dialog:count(profile, key?). An event runs in
-- a coroutine, a runner; req.store:incr(...) yields HOSTCALL and the op to the host,
-- which answers the Python side "needs a host call". The thread is then free
-- for other events while the trio side awaits the store; the answer comes back
-- as a new job that resumes the runner (api.resume). Across the yield the
-- event's budget (instructions left, deadline) is saved with it and restored,
-- so a loop after a yield is still stopped; the memory cap is the state's.
local HOSTCALL, DONE = {}, {}        -- unique markers of a runner's yields

-- One object per service, made when the script first reads req.<name>; it is
-- the current event's only (cur_calls), so one kept from an earlier event
-- cannot reach the host.
local CALLS = {store = {}, registrar = {}, dialog = {}}   -- name -> its methods
local CALLS_MT = {}
for name, methods in next, CALLS do
  CALLS_MT[name] = {
    __index = methods, __metatable = false,
    __newindex = function(_, k) error("req." .. name .. "." .. tostring(k) .. " is read-only", 2) end,
  }
end

local function call_method(obj, op, name)
  local what = "req." .. obj .. ":" .. name .. "()"
  return function(self, a, b, c)
    if cur_runner == nil then
      error(what .. ": host calls are only possible inside an event, not while the script loads", 2)
    end
    if cur_calls == nil or not rawequal(self, cur_calls[obj]) then
      error(what .. " called outside the event it belongs to (use req." .. obj .. ":, not req."
            .. obj .. ".)", 2)
    end
    if co_running() ~= cur_runner then
      error(what .. " cannot be called inside a coroutine the route created", 2)
    end
    if co_isyieldable and not co_isyieldable() then
      error(what .. " cannot be called from a function Lua calls from C (a metamethod, "
            .. "a table.sort comparator, a string.gsub callback)", 2)
    end
    guard = true                      -- the host's code until the runner runs again
    local ok, v = co_yield(HOSTCALL, op, a, b, c)
    guard = false
    if not ok then error(what .. ": " .. tostring(v), 2) end
    return v
  end
end
for _, m in next, {{"store", "kv.get", "get"}, {"store", "kv.set", "set"},
                   {"store", "kv.delete", "delete"}, {"store", "kv.incr", "incr"},
                   {"registrar", "registrar.lookup", "lookup"},
                   {"dialog", "dialog.count", "count"}} do
  CALLS[m[1]][m[3]] = call_method(m[1], m[2], m[3])
end

local REQ_MT = {
  __metatable = false,
  __index = function(t, k)
    local m = REQ[k]
    if m then return m end
    if not rawequal(t, cur_req) then
      error("req." .. tostring(k) .. " read outside the event it belongs to", 2)
    end
    local mt = CALLS_MT[k]
    if mt then
      local obj = setmetatable({}, mt)
      if cur_calls == nil then cur_calls = {} end
      cur_calls[k] = obj
      rawset(t, k, obj)
      return obj
    end
    if k == "vars" then
      local vars = vars_in()
      rawset(t, "vars", vars)
      vars_touched = true
      return vars
    end
    local i = PREFETCHED[k]
    if i then
      local v = cur_fields[i]
      rawset(t, k, v)
      return v
    end
    if LAZY[k] then
      local v = read(cur_ev, k)
      if v == nil then v = MISSING[k] end
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
  if err_line == nil then err_line = hook_line end
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
  ticks_left, deadline, spent, oom, err_line, hook_line = ticks, dl, false, false, nil, nil
  local fine, ok, e = raw_pcall(protected, f, ...)
  guard = true
  if not fine then return false, ok end
  return ok, e
end

-- Send the simple contents of req.vars back to the host, flat. The host keeps
-- them for the whole call, so their size is capped (VARS_MAX_BYTES, counted as
-- JSON would write them: quotes, colon and comma included) before anything is
-- copied out of Lua.
local MAX_VARS = 256
local function collect_vars(req)
  local vars = rawget(req, "vars")
  if vars == nil then vars = {} end                 -- req.vars = nil clears them
  if type(vars) ~= "table" then error("req.vars must be a table, got a " .. type(vars), 0) end
  local flat, n, size = {}, 0, 2
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
    size = size + #k + (tv == "string" and #v + 2 or 24) + 4
    if size > VARS_MAX_BYTES then
      error("req.vars: more than " .. VARS_MAX_BYTES .. " bytes (at req.vars." .. k
            .. "); keep routing state in vars, not message bodies", 0)
    end
    flat[n - 1], flat[n] = k, v
  end
  vars_out(unpack(flat, 1, n))
end

local function run_hook(fn, req, rep)
  fn(req, rep)
  if vars_touched then
    -- An error here has no script frame on the stack: blame the hook.
    hook_line = getinfo(fn, "S").linedefined
    collect_vars(req)
  end
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

-- A runner runs one event after another: finished ones go back to `idle`, so
-- an event without host calls costs one resume and one yield, not a new
-- coroutine. One that waits on the host stays with its event (`parked`).
local function runner_body(fn, req, rep)
  while true do
    local fine, ok, e = raw_pcall(protected, run_hook, fn, req, rep)
    guard = true
    if not fine then ok, e = false, ok end
    fn, req, rep = co_yield(DONE, ok, e)
  end
end
-- Lua 5.2+: a coroutine starts without the count hook (see `hooked`).
local runner_start = per_thread_hooks and function(...)
  sethook(on_count, "", EVERY)
  return runner_body(...)
end or runner_body

local IDLE_MAX = 4
local idle, n_idle = {}, 0
local parked, last_token = {}, 0

local function clear_event()
  cur_ev, cur_reply, cur_req, cur_rep, cur_fields = nil, nil, nil, nil, nil
  cur_calls, cur_runner, inline = nil, nil, false
end

-- What the runner's resume returned -> dispatch's answer: nothing (done),
-- kind, message, line (failed), or "call", token, op, a, b, c (parked).
local function settle(runner, resumed, tag, x, y, z, w)
  if resumed and tag == DONE then
    if n_idle < IDLE_MAX then n_idle = n_idle + 1; idle[n_idle] = runner end
    clear_event()
    if x then return end
    return classify(y)
  end
  if resumed and tag == HOSTCALL then
    if inline then
      -- It is resumed in the thread: with what is left of its full budget.
      ticks_left, deadline = full_ticks - (inline_ticks - ticks_left), full_deadline
    end
    last_token = last_token + 1
    parked[last_token] = {runner, cur_ev, cur_reply, cur_req, cur_rep, cur_fields, cur_calls,
                          vars_touched, ticks_left, deadline, spent, oom, err_line, hook_line}
    clear_event()
    return "call", last_token, x, y, z, w
  end
  -- The runner died (out of memory while resuming; nothing else escapes its
  -- pcall) or yielded something else; it is not used again.
  clear_event()
  if not resumed then return classify(tag) end
  return "error", "the event's coroutine yielded outside a host call", err_line
end

-- Run one hook. Returns nothing on success, kind, message, line on failure,
-- or "call", token, op, args... when it waits for a host call (api.resume).
-- itk > 0: the event runs inline, first under itk ticks and the deadline idl
-- (failing with "budget", "inline" past them), its full budget ticks and dl.
function api.dispatch(hook, ev, reply, ticks, dl, itk, idl, ...)
  local fn = rawget(G, hook)
  if type(fn) ~= "function" then return end
  cur_ev, cur_reply, cur_fields, vars_touched = ev, reply, {...}, false
  local req = setmetatable({}, REQ_MT)
  local rep = reply and setmetatable({}, REPLY_MT) or nil
  cur_req, cur_rep = req, rep
  ticks_left, deadline, spent, oom, err_line, hook_line = ticks, dl, false, false, nil, nil
  inline = itk > 0
  if inline then
    inline_ticks, full_ticks, full_deadline = itk, ticks, dl
    ticks_left, deadline = itk, idl
  end
  local runner = idle[n_idle]
  if runner then
    idle[n_idle], n_idle = nil, n_idle - 1
  else
    runner = co_create(runner_start)
    RUNNERS[runner] = true
  end
  cur_runner = runner
  return settle(runner, co_resume(runner, fn, req, rep))
end

-- Resume a parked event with its host call's answer: ok, value | false, message.
-- Same answers as dispatch.
function api.resume(token, ok, value)
  local p = parked[token]
  if p == nil then return "error", "host call answered for an event that is gone" end
  parked[token] = nil
  local runner
  runner, cur_ev, cur_reply, cur_req, cur_rep, cur_fields, cur_calls, vars_touched,
    ticks_left, deadline, spent, oom, err_line, hook_line = unpack(p, 1, 14)
  cur_runner = runner
  return settle(runner, co_resume(runner, ok, value))
end

-- Drop a parked event that will not be resumed (past its deadline): its
-- runner is garbage; no script code runs.
function api.forget(token)
  parked[token] = nil
end

-- How many events wait on the host (tests, statistics).
function api.parked()
  local n = 0
  for _ in next, parked do n = n + 1 end
  return n
end

return api
