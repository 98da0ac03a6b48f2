#!lua
--[[
  redeem.lua: an order uses a unit's code, exactly once. Checking "is it unused" and marking it used
  happen in one script, so fifty concurrent orders for one code get one winner. Appends a redemption
  event (format: src/stream/events.ts) for the consumer; a paused campaign is still redeemable.

  KEYS[1] meta   KEYS[2] codes   KEYS[3] redemptions   KEYS[4] revoked   (see includes/units.lua)
  KEYS[5] events stream; this one appends e1 = "d|userId|claim|atMs|orderId"
  KEYS[6] expiring (unused here: rollback.lua takes the same keys; a redeemed unit stays among the expiry
          job's candidates until the job looks at it and drops it)

  ARGV[1] head: the code without its coupon-id tail, upper-case
  ARGV[2] orderId (ORDER_ID_PATTERN: never contains '|')

  Returns { code, atMs, userId, claim, entryId, replayed, reactivated }
    code 0 REDEEMED          atMs = redeemedAt; replayed = 1 when this order had redeemed it already
    code 1 NEEDS_RESTORE
    code 2 NOT_FOUND
    code 3 REVOKED           the unit was cancelled (its stock given back)
    code 4 ALREADY_REDEEMED  another order holds it; nothing changed
    code 6 EXPIRED           past the unit's expiresAt (Redis TIME); a redemption made in time still replays;
                             also a unit the expiry job returned to stock (returnExpired.lua), whatever came after
  reactivated: as in issue.lua (the stream had been marked dormant).
]]

-- @include outcomes.lua
-- @include codes.lua
-- @include units.lua

local meta, codes, redemptions, revoked, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local orderId = ARGV[2]
local code, unit = findUnit(meta, codes, redemptions, revoked, ARGV[1])
if code ~= 0 then return { code, 0, '', 0, '', 0, 0 } end
-- Returned at expiry: the job never returns a redeemed unit, so this unit is not redeemed, and stays gone.
if unit.returnedAt then return { 6, unit.expiresAt or 0, unit.userId, unit.claim, '', 0, 0 } end
if unit.revokedAt then return { 3, 0, unit.userId, unit.claim, '', 0, 0 } end
if unit.state == 'd' then
  if unit.orderId == orderId then return { 0, unit.stateAt, unit.userId, unit.claim, '', 1, 0 } end
  return { 4, 0, unit.userId, unit.claim, '', 0, 0 }
end
local now = nowMs()
if unit.expiresAt and now >= unit.expiresAt then return { 6, unit.expiresAt, unit.userId, unit.claim, '', 0, 0 } end
redis.call('XLEN', events) -- type check before the first write

redis.call('HSET', redemptions, unit.field, 'd|' .. orderId .. '|' .. now)
redis.call('HINCRBY', redemptions, '@' .. unit.userId, 1)
local entry = appendEvent(events, { 'd', unit.userId, unit.claim, now, orderId })
return { 0, now, unit.userId, unit.claim, entry, 0, wakeIfDormant(meta, unit.dormant) }
