#!lua
--[[
  updateCoupon.lua: apply an admin change (stock, window, pause) to live counters, in one atomic step.

  Stock is derived from the new total and what is out now (issued = old total - stock left), never
  added as a delta computed from an earlier read: any number of identical changes converge to the
  same state, and concurrent different ones serialize here. The caller holds the coupon's row lock in
  Postgres while it calls this, and commits the same values only when this answers UPDATED.

  KEYS[1] meta   hash
  KEYS[2] stock  string

  ARGV[1] total (new)   ARGV[2] startsAt ms   ARGV[3] endsAt ms or ''
  ARGV[4] stock-returned channel   ARGV[5] couponId (published on UPDATED: see src/issuing/sold-out-markers.ts)
  ARGV[6] paused: '1' = paused (issue answers PAUSED), '' = open

  Returns { code, issued }
    code 0 UPDATED             issued = units out at the moment of the change
    code 1 NEEDS_RESTORE       counters absent: rebuild them, then call again
    code 2 STOCK_BELOW_ISSUED  the new total is below what is out; nothing written
]]

local meta, stock = KEYS[1], KEYS[2]
local current = redis.call('HMGET', meta, 'perUserLimit', 'total')
local left = tonumber(redis.call('GET', stock))
if not current[1] or not current[2] or not left then return { 1, 0 } end
local issued = tonumber(current[2]) - left
local total = tonumber(ARGV[1])
if total < issued then return { 2, issued } end
redis.call('HSET', meta, 'total', total, 'startsAt', ARGV[2], 'endsAt', ARGV[3])
if ARGV[6] == '1' then redis.call('HSET', meta, 'paused', '1') else redis.call('HDEL', meta, 'paused') end
redis.call('SET', stock, total - issued)
-- Any change may bring stock back (a higher total) or reopen the window: drop every instance's sold-out marker.
redis.call('PUBLISH', ARGV[4], ARGV[5])
return { 0, issued }
