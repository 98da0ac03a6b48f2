--[[
  Shared by lookupCode.lua, redeem.lua and rollback.lua (inlined at load time by src/redis/scripts.ts,
  after includes/codes.lua): from a code's head (prefix .. mac; the coupon id at its end already chose
  these keys) to the unit it names and that unit's state. The hashes are keyed by the mac's field
  (includes/codes.lua), the same bits as hex.

  KEYS used: meta (codeSecret, codePrefix, codeLength, dormant, validForMs, validUntil, returnExpired), codes (field -> "userId|claim|issuedAtMs",
  with "|returnedAtMs" once the expiry job returned the unit to stock (returnExpired.lua); '#' = complete), redemptions (field -> "d|orderId|atMs" redeemed or "u|orderId|atMs" rolled back;
  '@userId' -> units of the user redeemed now; '#' = complete), revoked (userId -> "upTo|revokedAtMs").

  findUnit returns 0 and the unit, 1 (NEEDS_RESTORE: a hash or the code settings are missing) or 2
  (NOT_FOUND). A head with the wrong prefix or length, or a character outside the alphabet, is looked up
  as the empty field, which is never there: every unknown code costs the same commands as a known one.
]]

local function findUnit (meta, codes, redemptions, revoked, head)
  local m = redis.call('HMGET', meta, 'codeSecret', 'codePrefix', 'codeLength', 'dormant', 'validForMs', 'validUntil', 'returnExpired')
  if not m[1] then return 1 end
  local prefix, length = m[2] or '', tonumber(m[3]) or 0
  local field = ''
  if #head == #prefix + length and string.sub(head, 1, #prefix) == prefix then field = fieldOfMac(string.sub(head, #prefix + 1)) or '' end
  local unit = redis.call('HMGET', codes, field, '#')
  local state = redis.call('HMGET', redemptions, field, '#')
  if not unit[2] or not state[2] then return 1 end
  if field == '' or not unit[1] then return 2 end
  local userId, claim, issuedAt, returnedAt = string.match(unit[1], '^([^|]*)|(%d+)|(%d+)|?(%d*)$')
  local cancel = redis.call('HMGET', revoked, userId, '#')
  if not cancel[2] then return 1 end
  local found = { field = field, userId = userId, claim = tonumber(claim), issuedAt = tonumber(issuedAt), dormant = m[4], returnedAt = tonumber(returnedAt), returnExpired = m[7] == '1' }
  -- expiresAt: nil = never (validForMs counts from the unit's issue; validUntil is one moment for all)
  local validFor, validUntil = tonumber(m[5] or ''), tonumber(m[6] or '')
  if validFor then found.expiresAt = found.issuedAt + validFor else found.expiresAt = validUntil end
  if cancel[1] then
    local upTo, revokedAt = string.match(cancel[1], '^(%d+)|(%d+)$')
    if tonumber(upTo) >= found.claim then found.revokedAt = tonumber(revokedAt) end
  end
  if state[1] then
    local kind, orderId, at = string.match(state[1], '^([du])|(.*)|(%d+)$')
    found.state, found.orderId, found.stateAt = kind, orderId, tonumber(at)
  end
  return 0, found
end
