#!lua
--[[
  updateCoupon.lua: apply an admin change (stock, window, pause) to live counters, in one atomic step.

  Stock is derived from the new total and what is out now (issued = old total - stock left), never
  added as a delta computed from an earlier read: any number of identical changes converge to the
  same state, and concurrent different ones serialize here. The caller holds the coupon's row lock in
  Postgres while it calls this, and commits the same values only when this answers UPDATED.

  KEYS[1] meta     hash
  KEYS[2] stock    string
  KEYS[3] expiring zset (see issue.lua): deleted whenever returnExpired changes. Turned on, its marker is
                   then missing, so issues, rollbacks and the expiry job answer NEEDS_RESTORE until a rebuild
                   (which the caller starts at once) adds every unit already out; turned off, it is not needed.

  ARGV[1] total (new)   ARGV[2] startsAt ms   ARGV[3] endsAt ms or ''
  ARGV[4] stock-returned channel   ARGV[5] couponId (published on UPDATED: see src/issuing/sold-out-markers.ts)
  ARGV[6] paused: '1' = paused (issue answers PAUSED), '' = open
  ARGV[7] returnExpired: '1' = expired units go back to stock (src/issuing/expiry.ts), '' = they do not

  Returns { code, issued }
    code 0 UPDATED             issued = units out at the moment of the change
    code 1 NEEDS_RESTORE       counters absent: rebuild them, then call again
    code 2 STOCK_BELOW_ISSUED  the new total is below what is out; nothing written
]]

local meta, stock, expiring = KEYS[1], KEYS[2], KEYS[3]
local current = redis.call('HMGET', meta, 'perUserLimit', 'total', 'returnExpired')
local left = tonumber(redis.call('GET', stock))
if not current[1] or not current[2] or not left then return { 1, 0 } end
local issued = tonumber(current[2]) - left
local total = tonumber(ARGV[1])
if total < issued then return { 2, issued } end
redis.call('ZCARD', expiring) -- type check before the first write
redis.call('HSET', meta, 'total', total, 'startsAt', ARGV[2], 'endsAt', ARGV[3])
if ARGV[6] == '1' then redis.call('HSET', meta, 'paused', '1') else redis.call('HDEL', meta, 'paused') end
if (current[3] or '') ~= ARGV[7] then
  redis.call('HSET', meta, 'returnExpired', ARGV[7])
  redis.call('DEL', expiring)
end
redis.call('SET', stock, total - issued)
-- Any change may bring stock back (a higher total) or reopen the window: drop every instance's sold-out marker.
redis.call('PUBLISH', ARGV[4], ARGV[5])
return { 0, issued }
