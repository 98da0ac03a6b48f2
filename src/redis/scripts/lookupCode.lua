#!lua
--[[
  lookupCode.lua: what a code names and its state right now (GET /codes/:code). Read-only.

  KEYS[1] meta   KEYS[2] codes   KEYS[3] redemptions   KEYS[4] revoked   (see includes/units.lua)
  ARGV[1] head: the code without its coupon-id tail, upper-case

  Returns { code, userId, claim, issuedAtMs, revokedAtMs (0 = not revoked), state ('d', 'u' or ''),
            orderId, stateAtMs, nowMs, expiresAtMs (0 = never), returnedAtMs (0 = not returned to stock at expiry) }
    code 0 FOUND
    code 1 NEEDS_RESTORE
    code 2 NOT_FOUND
]]

-- @include outcomes.lua
-- @include codes.lua
-- @include units.lua

local code, unit = findUnit(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
if code ~= 0 then return { code } end
return { 0, unit.userId, unit.claim, unit.issuedAt, unit.revokedAt or 0, unit.state or '', unit.orderId or '', unit.stateAt or 0, nowMs(), unit.expiresAt or 0, unit.returnedAt or 0 }
