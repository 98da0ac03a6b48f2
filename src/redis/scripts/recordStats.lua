#!lua
--[[
  recordStats.lua: add what one instance counted for a coupon since its last flush to the coupon's
  statistics (src/issuing/campaign-stats.ts). Additive and commutative, so any number of instances may
  flush in any order; nothing here touches the counters that decide an issue.

  KEYS[1]      stats hash
  KEYS[2..n]   per-second issue counters, one per second counted (expire after 120 s)

  ARGV[1]      R: how many rejection pairs follow
  then R pairs code, count                    -> HINCRBY stats rejected:<code>
  then n-1     issues counted in each second  -> INCRBY; peakPerSecond = the largest total any second reached
  then         persistence lag seen, ms (0 = none) -> lagWorstMs = the largest seen

  Returns 1.
]]

local stats = KEYS[1]
local i = 2
for _ = 1, tonumber(ARGV[1]) do
  redis.call('HINCRBY', stats, 'rejected:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
local function raise (field, value)
  if value > (tonumber(redis.call('HGET', stats, field)) or 0) then redis.call('HSET', stats, field, value) end
end
for k = 2, #KEYS do
  local total = redis.call('INCRBY', KEYS[k], ARGV[i])
  redis.call('EXPIRE', KEYS[k], 120)
  raise('peakPerSecond', total)
  i = i + 1
end
local lag = tonumber(ARGV[i]) or 0
if lag > 0 then raise('lagWorstMs', lag) end
return 1
