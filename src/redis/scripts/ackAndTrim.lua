#!lua flags=allow-oom
--[[
  ack-and-trim.lua: acknowledge persisted entries and trim the stream, in one round trip.

  allow-oom: a script with a shebang and no flags is refused outright while Redis is over maxmemory,
  yet acknowledging and trimming is the only thing that frees the stream's memory. Without the flag a
  full Redis stays full: the consumer commits, cannot ack, and retries forever. Only XACK, XPENDING and
  XTRIM run here; none of them grows memory.
  Trims only below the oldest entry still pending in the group, so an unacknowledged entry is
  never dropped; when nothing is pending, below the newest id acknowledged here.

  KEYS[1] events stream
  ARGV[1] consumer group
  ARGV[2..] entry ids to acknowledge (ascending)

  Returns { acked, trimmed }
]]

local events, group = KEYS[1], ARGV[1]
local acked = 0
for i = 2, #ARGV, 1000 do -- unpack has a stack limit
  acked = acked + redis.call('XACK', events, group, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local pending = redis.call('XPENDING', events, group)
local threshold
if pending[1] > 0 then
  threshold = pending[2]
else
  -- everything delivered so far is acknowledged; entries above the last one acked here may be undelivered
  local ms, seq = string.match(ARGV[#ARGV], '^(%d+)-(%d+)$')
  threshold = ms .. '-' .. (tonumber(seq) + 1)
end
local trimmed = redis.call('XTRIM', events, 'MINID', threshold)
return { acked, trimmed }
