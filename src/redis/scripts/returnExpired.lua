#!lua
--[[
  returnExpired.lua: the expiry job (src/issuing/expiry.ts) returns expired, unredeemed units of a coupon
  whose campaign has returnExpiredToStock to stock, a few at a time. Checking "not redeemed, not revoked,
  expired" and the return are this one script, so it serializes with redeem.lua (and every other script
  on the coupon's keys): a unit is either redeemed or returned, never both. Two instances running the job
  at once only split the work: a unit returned once is marked returned and skipped by everyone after.

  Candidates come from the expiring zset (issue.lua and rollback.lua add a unit there; see keys.ts), due
  ones first. Each is checked against the unit's own state and then dropped from the zset (or re-scored,
  should its score be early), so every call moves the head forward: bounded work, no candidate looked at
  twice unless a rollback puts it back.

  For each unit returned: stock +1, its holder's count -1 (the user's slot is free again, as after a
  cancel), the unit marked returned in the codes hash (its code answers "expired", redeem.lua answers
  EXPIRED), and one ONE-UNIT revoke entry e1 = "x|userId|claim|atMs|expired" on the stream (format:
  src/stream/events.ts) for Postgres (revoked_at + reason) and the code.expired event.

  Returns nothing while the campaign has ended (endsAt reached: the stock no longer matters) or the flag
  is off. A paused campaign still returns units: pausing stops claims only, like cancels they go on and
  the stock is there when the campaign resumes.

  KEYS[1] meta   KEYS[2] stock   KEYS[3] holders   KEYS[4] revoked   KEYS[5] codes   KEYS[6] redemptions
  KEYS[7] expiring   KEYS[8] events   KEYS[9] stats (returned += units, best effort)

  ARGV[1] couponId (published on the stock-returned channel when anything returned)
  ARGV[2] stock-returned channel (src/issuing/sold-out-markers.ts)
  ARGV[3] how many candidates to look at, at most

  Returns { code, returned, more, reactivated, nowMs }
    code 0 DONE           returned = units returned now; more = 1 when as many candidates were due as
                          allowed (call again)
    code 1 NEEDS_RESTORE  counters, or a hash or the zset's marker, missing
    code 2 NOT_ENABLED    returnExpiredToStock off, or the campaign's codes never expire
    code 3 ENDED          the campaign has ended: nothing returned any more
  reactivated: as in issue.lua (the stream had been marked dormant).
]]

-- @include outcomes.lua
-- @include codes.lua

local meta, stock, holders, revoked, codes, redemptions, expiring, events, stats =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local limit = tonumber(ARGV[3])

local m = redis.call('HMGET', meta, 'perUserLimit', 'endsAt', 'dormant', 'codeSecret', 'codeLength', 'validForMs', 'validUntil', 'returnExpired')
local left = redis.call('GET', stock)
if not m[1] or not m[4] or not left then return { 1, 0, 0, 0, 0 } end
local validFor, validUntil = tonumber(m[6] or ''), tonumber(m[7] or '')
if m[8] ~= '1' or (not validFor and not validUntil) then return { 2, 0, 0, 0, 0 } end
if redis.call('HEXISTS', holders, '#') == 0 or redis.call('HEXISTS', revoked, '#') == 0 or redis.call('HEXISTS', codes, '#') == 0
  or redis.call('HEXISTS', redemptions, '#') == 0 or not redis.call('ZSCORE', expiring, '#') then return { 1, 0, 0, 0, 0 } end
local now = nowMs()
local endsAt = tonumber(m[2] or '')
if endsAt and now >= endsAt then return { 3, 0, 0, 0, now } end
redis.call('XLEN', events) -- type check before the first write

local secret, length = m[4], tonumber(m[5])
local due = redis.call('ZRANGEBYSCORE', expiring, '-inf', now, 'LIMIT', 0, limit)
local returned = 0
local entry
for _, member in ipairs(due) do
  local userId, claimText = string.match(member, '^([^|]+)|(%d+)$')
  local claim = tonumber(claimText)
  local keep = false
  if claim then
    local field = codeField(secret, userId, claim, length)
    local unit = redis.call('HGET', codes, field)
    -- "userId|claim|issuedAtMs" of this very unit; one already returned carries a fourth part and does not match
    local owner, number, issuedAt
    if unit then owner, number, issuedAt = string.match(unit, '^([^|]*)|(%d+)|(%d+)$') end
    if owner ~= userId or tonumber(number) ~= claim then issuedAt = nil else issuedAt = tonumber(issuedAt) end
    local cancel = redis.call('HGET', revoked, userId)
    local upTo = cancel and tonumber(string.match(cancel, '^(%d+)|')) or 0
    local state = redis.call('HGET', redemptions, field)
    local held = tonumber(redis.call('HGET', holders, userId)) or 0
    -- Not a unit any more (discarded, already returned: the suffix makes the match fail), cancelled,
    -- redeemed (a rollback puts it back), or nothing held: drop the candidate, return nothing.
    if issuedAt and upTo < claim and not (state and string.sub(state, 1, 2) == 'd|') and held > 0 then
      local expiresAt = validFor and issuedAt + validFor or validUntil
      if expiresAt > now then
        redis.call('ZADD', expiring, expiresAt, member)
        keep = true
      else
        redis.call('INCR', stock)
        if held == 1 then redis.call('HDEL', holders, userId) else redis.call('HSET', holders, userId, held - 1) end
        redis.call('HSET', codes, field, unit .. '|' .. now)
        entry = appendEvent(events, { 'x', userId, claim, now, 'expired' })
        returned = returned + 1
      end
    end
  end
  if not keep then redis.call('ZREM', expiring, member) end
end

local reactivated = 0
if returned > 0 then
  reactivated = wakeIfDormant(meta, m[3])
  redis.call('PUBLISH', ARGV[2], ARGV[1])
  redis.pcall('HINCRBY', stats, 'returned', returned)
end
return { 0, returned, #due >= limit and 1 or 0, reactivated, now }
