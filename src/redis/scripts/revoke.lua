#!lua
--[[
  revoke.lua: take back every unit a user holds (an order was cancelled), return them to stock,
  and record a revoke event on the same stream so Postgres marks the rows instead of deleting them.

  KEYS[1] meta        hash   (checked only to detect missing counters)
  KEYS[2] stock       string units left
  KEYS[3] holders     hash   userId -> units held now; field '#' marks it complete (see issue.lua)
  KEYS[4] events      stream
  KEYS[5] idempotency string remembered outcome (ignored when ARGV[3] is '')

  ARGV[1] couponId
  ARGV[2] userId
  ARGV[3] idempotency key given ('' = none)
  ARGV[4] idempotency ttl, seconds

  Returns { code, revokedAtMs, units, entryId, replayed }
    code 0 REVOKED        units returned to stock
    code 1 NEEDS_RESTORE
    code 2 NOT_HELD       the user holds nothing (a repeated cancel lands here)
    code 7 IDEMPOTENCY_MISMATCH
]]

-- @include outcomes.lua

local meta, stock, holders, events, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local couponId, userId, idemKey = ARGV[1], ARGV[2], ARGV[3]

local seen = recallOutcome(idem, idemKey, userId)
if seen then return seen end
local function finish (code, at, units, entry)
  return rememberOutcome(idem, idemKey, ARGV[4], userId, code, at, units, entry)
end

local known = redis.call('HGET', meta, 'perUserLimit')
local left = tonumber(redis.call('GET', stock))
local holding = redis.call('HMGET', holders, userId, '#')
if not known or not left or not holding[2] then return { 1, 0, 0, '', 0 } end

local held = tonumber(holding[1]) or 0
if held <= 0 then return finish(2, 0, 0, '') end
redis.call('XLEN', events) -- type check before the first write

local now = nowMs()
redis.call('INCRBY', stock, held)
redis.call('HDEL', holders, userId)
local entry = redis.call('XADD', events, '*', 'type', 'revoke', 'couponId', couponId, 'userId', userId,
  'units', held, 'at', now)
return finish(0, now, held, entry)
