-- Benchmark route: the same logic as bench/kamailio/proxy.cfg, in Lua.
-- bench/run.py copies this folder to a temporary directory and replaces
-- @UAS_URI@ with the address of the sipp uas of the run.

function on_request(req)
  if req.method == "INVITE" then
    req:record_route()
  end
  req:relay("@UAS_URI@")
end
