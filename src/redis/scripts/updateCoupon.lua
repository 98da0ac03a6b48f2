#!lua
--[[
  update-coupon.lua: apply an admin change (window, more stock) to live counters.
  When the counters are missing nothing is written: the next restore reads the new values from Postgres.

  KEYS[1] meta   hash
  KEYS[2] stock  string

  ARGV[1] total (new)   ARGV[2] startsAt ms   ARGV[3] endsAt ms or ''
  ARGV[4] units added to stock (new total minus old total, >= 0)

  Returns code
    0 MISSING  counters absent; nothing written
    1 UPDATED
]]

local meta, stock = KEYS[1], KEYS[2]
if redis.call('HEXISTS', meta, 'perUserLimit') == 0 or redis.call('EXISTS', stock) == 0 then return 0 end
redis.call('GET', stock) -- type check before the first write
redis.call('HSET', meta, 'total', ARGV[1], 'startsAt', ARGV[2], 'endsAt', ARGV[3])
redis.call('INCRBY', stock, ARGV[4])
return 1
