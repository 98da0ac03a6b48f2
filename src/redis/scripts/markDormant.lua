#!lua
--[[
  markDormant.lua: tell whether a coupon's stream is fully consumed and, if so, mark it dormant.

  The consumer stops reading a settled stream of an ended coupon: it removes the coupon from the
  active list FIRST, then calls this. An entry appended before this call makes the stream unsettled
  (the caller puts the coupon back); an entry appended after it finds the dormant mark, and issue.lua
  and revoke.lua answer `reactivated`, so their caller puts it back. Either way no stream with
  unpersisted entries is left off the list, whichever code path wrote the entry.

  KEYS[1] meta    hash
  KEYS[2] events  stream

  ARGV[1] consumer group name

  Returns 1 (settled: nothing pending, nothing undelivered; marked dormant) or 0 (not settled)
]]

local meta, events, group = KEYS[1], KEYS[2], ARGV[1]

local function parseId (id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

if redis.call('XLEN', events) > 0 then
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', events)
  if not ok then return 0 end
  local settled = false
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == group then
      local last = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)[1][1]
      local lms, lseq = parseId(last)
      local dms, dseq = parseId(info['last-delivered-id'])
      settled = info['pending'] == 0 and (dms > lms or (dms == lms and dseq >= lseq))
    end
  end
  if not settled then return 0 end
end
if redis.call('EXISTS', meta) == 1 then redis.call('HSET', meta, 'dormant', 1) end
return 1
