#!lua
--[[
  issue.lua: hand one unit of a coupon to a user, or say why not. The hot path: one round trip.

  The `#!lua` shebang matters: a script that declares itself is refused up front when Redis is out
  of memory, instead of failing after its first write. Every read that could fail (wrong key type)
  also runs before the first write, because Lua does not roll back.

  KEYS[1] meta        hash   total, perUserLimit, startsAt (ms), endsAt (ms or ''), dormant (set by markDormant),
                             paused ('1' while paused; set by updateCoupon), codeSecret, codePrefix, codeLength,
                             codeTail (src/issuing/codes.ts; a meta without codeSecret must be rebuilt),
                             validForMs, validUntil (ms; '' = none; src/issuing/validity.ts),
                             returnExpired ('1' = the campaign returns expired units to stock)
  KEYS[2] stock       string units left
  KEYS[3] holders     hash   userId -> units held now; field '#' marks the hash as complete
  KEYS[4] claims      hash   userId -> last claim number (never decreases); field '#' likewise
                      (a userId cannot contain '#'; a hash without it was lost and must be rebuilt)
  KEYS[5] events      stream issue/revoke events for the consumer group; this one appends
                      e1 = "i|userId|claim|atMs|idempotencyKey" (format: src/stream/events.ts)
  KEYS[6] idempotency hash   remembered outcomes (see includes/outcomes.lua); touched only with a key
  KEYS[7] stats       hash   issued +1, firstIssuedAt (with the first unit) and soldOutAt (first time stock reaches 0) on ISSUED;
                             best effort (a wrong type there fails nothing)
  KEYS[8] codes       hash   the mac's field (includes/codes.lua: its bits as hex) -> "userId|claim|issuedAtMs" of
                             every unit ever handed out (revoked ones too); field '#' marks it complete. A field
                             already taken (another user and claim gave the same bits) makes the script skip to
                             the next claim number, so each code names one unit and still follows from
                             (secret, user, claim). This script only adds its unit (HSETNX, the check and the
                             write in one command) and does not look for '#': a hash that lost it still gets
                             the unit, which the rebuild keeps (it adds with HSETNX too), and every reader of
                             the hash (lookups, redemptions, cancels, the expiry job) answers NEEDS_RESTORE
                             until that rebuild. The one thing given up while the hash is lost is the check
                             against the lost fields: a new unit's mac equal to one of n lost ones, chance
                             n / 2^(5 * length) per issue (below 10^-12 for a million units of 12 characters).
  KEYS[9] expiring    zset   "userId|claim" -> expiresAt ms, the expiry job's candidates; written only when
                             returnExpired is on and the unit expires; member '#' marks it complete (missing:
                             NEEDS_RESTORE, so the rebuild adds every unit out before this one)

  ARGV[1] userId (USER_ID_PATTERN: never contains '|' or '#')
  ARGV[2] backlog cap: shed load when the stream holds this many entries (0 = no cap)
  ARGV[3] idempotency key given (absent or '' = none; never contains '|')
  ARGV[4] idempotency ttl, seconds (only with a key)
  Only what the script uses: every argument is built by the client and parsed by Redis on each issue.

  Returns "code|at|claim|entryId|replayed|reactivated[|field|expiresAt|prefix|tail]", the values of
  { code, at, claim, entryId, replayed, reactivated [, field, expiresAt, prefix, tail] } as one string (none
  of them contains '|'): an array reply of eight values costs the client about 1.8 µs more per call to read
  (docs/benchmarks.md). src/redis/scripts.ts unpacks it and writes the unit's code, prefix .. mac .. tail,
  the mac's characters from its field (src/issuing/codes.ts: base32 in Lua was the dearest part of codes).
    code 0 ISSUED                  at = issuedAt ms; claim, entryId set; field = the bits of the unit's mac,
                                   recomputed for a replay; expiresAt ms (0 = never); the coupon's code prefix
                                   and tail
    code 1 NEEDS_RESTORE           counters (or the idempotency hash, for a keyed call) missing: rebuild, call again
    code 2 ALREADY_ISSUED          user already holds perUserLimit units; at carries perUserLimit
    code 3 SOLD_OUT                at carries endsAt (0 = none), claim carries Redis now (ms): together they
                                   bound how long an instance may answer SOLD_OUT from memory
    code 4 NOT_STARTED             at carries startsAt
    code 5 ENDED                   at carries endsAt
    code 6 BACKLOG_FULL            too many unpersisted events; nothing changed
    code 7 IDEMPOTENCY_KEY_REUSED  the key was used with another userId
    code 8 PAUSED                  the campaign is paused; nothing changed, nothing remembered (a retry after
                                   the resume may win)
    code 9 CODE_EXHAUSTED          four claim numbers in a row gave fields already taken (never seen; the chance
                                   is below 2^-200 for a million units); nothing changed (HSETNX wrote nothing)
  replayed is 1 when the outcome was remembered from an earlier call with the same key.
  reactivated is 1 when the stream had been marked dormant (dropped from the consumer's read list):
  the caller must put the coupon back on that list.
]]

-- @include outcomes.lua
-- @include codes.lua

-- Every reply leaves as one string (see the header).
local function packed (reply)
  return table.concat(reply, '|')
end

local meta, stock, holders, claims, events, idem, stats, codes, expiring = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local userId, idemKey = ARGV[1], ARGV[3] or ''
local idemField = idemKey == '' and '' or 'issue:' .. idemKey
local now, nowText = clock()

local m = redis.call('HMGET', meta, 'perUserLimit', 'startsAt', 'endsAt', 'dormant', 'paused', 'codeSecret', 'codePrefix', 'codeLength', 'codeTail', 'validForMs', 'validUntil', 'returnExpired')
local left = tonumber(redis.call('GET', stock))
local holding = redis.call('HMGET', holders, userId, '#')
if not m[1] or not m[6] or not left or not holding[2] then return packed({ 1, 0, 0, '', 0, 0 }) end
local secret, prefix, length, tail = m[6], m[7] or '', tonumber(m[8]), m[9] or ''
local validFor, validUntil = tonumber(m[10] or ''), tonumber(m[11] or '')
local function expiry (issuedAt)
  if validFor then return issuedAt + validFor end
  return validUntil or 0
end
local replay = replayForKey(idem, idemField, userId, now, ARGV[4])
if replay then
  -- The code is not remembered: it follows from the claim the record kept.
  if replay[1] == 0 then
    replay[7] = codeField(secret, userId, replay[3], length)
    replay[8] = expiry(replay[2])
    replay[9] = prefix
    replay[10] = tail
  end
  return packed(replay)
end
local function finish (code, at, claim, entry, reactivated)
  return rememberOutcome(idem, idemField, userId, now, code, at, claim, entry, reactivated or 0)
end

if m[5] then return packed({ 8, 0, 0, '', 0, 0 }) end
local startsAt, endsAt = tonumber(m[2]), tonumber(m[3])
if startsAt and now < startsAt then return packed({ 4, startsAt, 0, '', 0, 0 }) end
if endsAt and now >= endsAt then return packed({ 5, endsAt, 0, '', 0, 0 }) end

local held = tonumber(holding[1]) or 0
if held >= tonumber(m[1]) then return packed(finish(2, tonumber(m[1]), 0, '')) end
if left <= 0 then return packed(finish(3, endsAt or 0, now, '')) end

local claimed = redis.call('HMGET', claims, userId, '#')
if not claimed[2] then return packed({ 1, 0, 0, '', 0, 0 }) end
local claim = tonumber(claimed[1]) or 0
local expiresAt = expiry(now)
local tracked = m[12] == '1' and expiresAt > 0
if tracked and not redis.call('ZSCORE', expiring, '#') then return packed({ 1, 0, 0, '', 0, 0 }) end
local backlog = redis.call('XLEN', events)
local cap = tonumber(ARGV[2])
if cap > 0 and backlog >= cap then return packed({ 6, 0, 0, '', 0, 0 }) end

-- The first write claims the unit's field: HSETNX writes nothing when another unit has it (or fails on a
-- codes key of the wrong type, before anything changed), and then the next claim number is tried. The
-- value "userId|claim|issuedAtMs" is also the middle of the event's e1; claimText and nowText print each
-- number once (see clock() in includes/outcomes.lua).
local claimText, field, unit
for _ = 1, 4 do
  claim = claim + 1
  claimText = tostring(claim)
  field = codeField(secret, userId, claimText, length)
  unit = userId .. '|' .. claimText .. '|' .. nowText
  if redis.call('HSETNX', codes, field, unit) == 1 then break end
  field = nil
end
if not field then return packed({ 9, 0, 0, '', 0, 0 }) end

-- All checks passed and every key has the right type: from here on nothing can fail halfway.
redis.call('DECR', stock)
redis.call('HSET', holders, userId, held == 0 and '1' or held + 1) -- HSET, not HINCRBY: it cannot fail on a damaged value
redis.call('HSET', claims, userId, claimText)
if tracked then redis.call('ZADD', expiring, expiresAt, userId .. '|' .. claimText) end
local entry = appendEvent(events, { 'i', unit, idemKey })
-- Statistics are best effort (redis.pcall): a damaged stats key must never fail an issue halfway.
-- 'issued' only ever grows (nothing else writes it), so its first unit is the first issue: one call per
-- issue instead of an HSETNX of firstIssuedAt on every one (a pcall error reply is a table, never 1).
if redis.pcall('HINCRBY', stats, 'issued', '1') == 1 then redis.pcall('HSETNX', stats, 'firstIssuedAt', nowText) end
if left == 1 then redis.pcall('HSETNX', stats, 'soldOutAt', nowText) end
local reactivated = wakeIfDormant(meta, m[4]) == 1 and '1' or '0'
-- Every value of the reply as text already, so packing it prints no number.
local reply = finish('0', nowText, claimText, entry, reactivated)
reply[5] = '0'
reply[7] = field
reply[8] = expiresAt == 0 and '0' or expiresAt
reply[9] = prefix
reply[10] = tail
return packed(reply)
