#!lua
--[[
  rollback.lua: the order that redeemed a unit failed or was cancelled: the code is active again for
  the same user (the unit does not return to stock). Only the order holding the redemption can roll it
  back; the same rollback again replays. Appends e1 = "u|userId|claim|atMs|orderId".

  KEYS and ARGV as redeem.lua, and
  KEYS[6] expiring  zset (see issue.lua): while the campaign returns expired units to stock, the unit is a
                    candidate of the expiry job again (the job dropped it while it was redeemed); its
                    marker missing: NEEDS_RESTORE

  Returns { code, atMs, userId, claim, entryId, replayed, reactivated }
    code 0 ROLLED_BACK          atMs = the rollback's moment; replayed = 1 when it was rolled back already
    code 1 NEEDS_RESTORE
    code 2 NOT_FOUND
    code 3 REVOKED
    code 5 NOT_REDEEMED_BY_ORDER  the unit is not redeemed by this order (never, or by another one)
]]

-- @include outcomes.lua
-- @include codes.lua
-- @include units.lua

local meta, codes, redemptions, revoked, events, expiring = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local orderId = ARGV[2]
local code, unit = findUnit(meta, codes, redemptions, revoked, ARGV[1])
if code ~= 0 then return { code, 0, '', 0, '', 0, 0 } end
if unit.revokedAt then return { 3, 0, unit.userId, unit.claim, '', 0, 0 } end
if unit.orderId ~= orderId then return { 5, 0, unit.userId, unit.claim, '', 0, 0 } end
if unit.state == 'u' then return { 0, unit.stateAt, unit.userId, unit.claim, '', 1, 0 } end
local tracked = unit.returnExpired and unit.expiresAt and not unit.returnedAt
if tracked and not redis.call('ZSCORE', expiring, '#') then return { 1, 0, '', 0, '', 0, 0 } end
redis.call('XLEN', events) -- type check before the first write
local now = nowMs()

redis.call('HSET', redemptions, unit.field, 'u|' .. orderId .. '|' .. now)
if redis.call('HINCRBY', redemptions, '@' .. unit.userId, -1) <= 0 then redis.call('HDEL', redemptions, '@' .. unit.userId) end
if tracked then redis.call('ZADD', expiring, unit.expiresAt, unit.userId .. '|' .. unit.claim) end
local entry = appendEvent(events, { 'u', unit.userId, unit.claim, now, orderId })
return { 0, now, unit.userId, unit.claim, entry, 0, wakeIfDormant(meta, unit.dormant) }
