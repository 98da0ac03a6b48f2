#!lua
--[[
  revoke.lua: take back every unit a user holds (an order was cancelled), return them to stock,
  and record a revoke event on the same stream so Postgres marks the rows instead of deleting them.

  The event names what it revokes: the user's claims numbered up to `upTo` (the last claim number
  handed out). Claim numbers only grow, so a claim made after this cancel, even in the same
  millisecond, is never revoked by it. Never compare moments to decide what a cancel hit.

  KEYS[1] meta        hash   (checked to detect missing counters; dormant, see issue.lua)
  KEYS[2] stock       string units left
  KEYS[3] holders     hash   userId -> units held now; field '#' marks it complete (see issue.lua)
  KEYS[4] claims      hash   userId -> last claim number; field '#' likewise
  KEYS[5] events      stream; this one appends e1 = "r|userId|units|atMs|upTo|idempotencyKey"
                      (format: src/stream/events.ts)
  KEYS[6] idempotency hash   (see includes/outcomes.lua)
  KEYS[7] revoked     hash   userId -> "upTo|revokedAtMs" of the user's last cancel; field '#' likewise
  KEYS[8] stats       hash   revoked += units returned (best effort)
  KEYS[9] redemptions hash   '@userId' -> units of the user redeemed now (includes/units.lua); '#' = complete.
                             A user with a redeemed unit is not cancelled unless forced; a forced cancel
                             clears the count (the units are revoked, their redemptions stay as history)

  ARGV[1] couponId (published on the stock-returned channel; the entry names no coupon, the stream key does)
  ARGV[2] userId (never contains '|')
  ARGV[3] idempotency key given ('' = none; never contains '|')
  ARGV[4] idempotency ttl, seconds
  ARGV[5] stock-returned channel: the coupon id is published there when units return to stock, so
          every instance drops its sold-out marker (src/issuing/sold-out-markers.ts)
  ARGV[6] force: '1' cancels even when a unit is redeemed (an admin decision), '' refuses then

  Returns { code, revokedAtMs, units, entryId, replayed, reactivated }
    code 0 REVOKED        units returned to stock
    code 1 NEEDS_RESTORE
    code 2 NOT_HELD       the user holds nothing (a repeated cancel lands here)
    code 3 REDEEMED       a unit of the user is redeemed and force was not given; nothing changed, nothing
                          remembered (a retry after the order's rollback may cancel); units = redeemed ones
    code 7 IDEMPOTENCY_KEY_REUSED
]]

-- @include outcomes.lua

local meta, stock, holders, claims, events, idem, revoked, stats, redemptions = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local couponId, userId, idemKey = ARGV[1], ARGV[2], ARGV[3]
local field = idemKey == '' and '' or 'revoke:' .. idemKey
local now = nowMs()

local m = redis.call('HMGET', meta, 'perUserLimit', 'dormant')
local left = tonumber(redis.call('GET', stock))
local holding = redis.call('HMGET', holders, userId, '#')
local claimed = redis.call('HMGET', claims, userId, '#')
local complete = redis.call('HEXISTS', revoked, '#')
local redeemed = redis.call('HMGET', redemptions, '@' .. userId, '#')
if not m[1] or not left or not holding[2] or not claimed[2] or complete == 0 or not redeemed[2] then return { 1, 0, 0, '', 0, 0 } end
local replay = replayForKey(idem, field, userId, now, ARGV[4])
if replay then return replay end
local function finish (code, at, units, entry, reactivated)
  return rememberOutcome(idem, field, userId, now, code, at, units, entry, reactivated or 0)
end

local held = tonumber(holding[1]) or 0
if held <= 0 then return finish(2, 0, 0, '') end
local inUse = tonumber(redeemed[1]) or 0
if inUse > 0 and ARGV[6] ~= '1' then return { 3, 0, inUse, '', 0, 0 } end
redis.call('XLEN', events) -- type check before the first write
local upTo = tonumber(claimed[1]) or 0

if inUse > 0 then redis.call('HDEL', redemptions, '@' .. userId) end
redis.call('INCRBY', stock, held)
redis.call('HDEL', holders, userId)
redis.call('HSET', revoked, userId, upTo .. '|' .. now)
local entry = appendEvent(events, { 'r', userId, held, now, upTo, idemKey })
local reactivated = wakeIfDormant(meta, m[2])
redis.call('PUBLISH', ARGV[5], couponId)
redis.pcall('HINCRBY', stats, 'revoked', held)
return finish(0, now, held, entry, reactivated)
