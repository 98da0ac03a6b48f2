#!lua
--[[
  restoreCounters.lua: install a coupon's counters (at creation, or after they went missing) from
  state the caller computed out of Postgres plus the events still in the stream. Refuses when the
  stream moved on since the caller read it, so a rebuild can never miss an event.

  KEYS[1] meta        hash
  KEYS[2] stock       string
  KEYS[3] holders     hash (gets the completeness marker field '#')
  KEYS[4] claims      hash (likewise)
  KEYS[5] events      stream (created with the consumer group if missing)
  KEYS[6] idempotency hash (likewise; records are added, never dropped or overwritten: a kept record is never wrong)
  KEYS[7] revoked     hash (likewise)
  KEYS[8] discarded   set of parked entry ids given back since the last rebuild (cleared: the
                      caller's state already leaves discarded entries out)
  KEYS[9] codes       hash field -> "userId|claim|issuedAtMs" (gets the marker '#'; see issue.lua)
  KEYS[10] redemptions hash (includes/units.lua; gets the marker '#')
  KEYS[11] expiring   zset "userId|claim" -> expiresAt ms (see issue.lua; gets the marker '#' while
                      returnExpired is on, deleted while it is off)

  ARGV[1] consumer group name
  ARGV[2] id of the last stream entry the caller saw ('' = stream empty or missing)
  ARGV[3] total      ARGV[4] perUserLimit   ARGV[5] startsAt ms   ARGV[6] endsAt ms or ''
  ARGV[7] stock left
  ARGV[8] U, ARGV[9] I, ARGV[10] R: how many of each group follow
  ARGV[11] stock-returned channel   ARGV[12] couponId (published after a full rebuild: the rebuilt stock
           may differ from what instances saw, see src/issuing/sold-out-markers.ts)
  ARGV[13] paused: '1' or ''
  ARGV[14] codeSecret   ARGV[15] codePrefix   ARGV[16] codeLength   ARGV[17] codeTail (src/issuing/codes.ts)
  ARGV[18] C: how many code pairs follow the last cancels
  ARGV[19] D: how many redemption pairs follow the code pairs
  ARGV[20] validForMs   ARGV[21] validUntil ms   ('' = none; src/issuing/validity.ts)
  ARGV[22] returnExpired: '1' or ''   ARGV[23] E: how many expiring pairs follow the redemption pairs
  then U triples  userId, units held now, last claim number
  then I pairs    idempotency field, record
  then R pairs    userId, "upTo|revokedAtMs"
  then C pairs    field, "userId|claim|issuedAtMs" (every unit the caller knows of, revoked ones too)
  then D pairs    redemptions field, value: a unit's field -> last "d|orderId|atMs" / "u|orderId|atMs" of the unit,
                  '@userId' -> units of the user redeemed now (not revoked)
  then E pairs    member "userId|claim", expiresAt ms: every active, unredeemed unit that expires
                  (only with returnExpired on; a unit returned at expiry carries "|returnedAtMs" in its C pair)

  Returns code
    0 PRESENT       counters already there (another request restored them): nothing written
    1 RESTORED      (or, when only the idempotency/last-cancel/codes hash or the meta's code settings were
                    missing, those completed)
    2 STREAM_MOVED  new events arrived since the caller's read: read again and retry
]]

local meta, stock, holders, claims, events, idem, revoked, discarded, codes, redemptions =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]

local users, records, cancels, codeCount, redemptionCount = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[18]), tonumber(ARGV[19])
local expiring, returnExpired, expiringCount = KEYS[11], ARGV[22], tonumber(ARGV[23])
local FIRST_GROUP = 24
local records_from = FIRST_GROUP + 3 * users
local codes_from = records_from + 2 * records + 2 * cancels

-- Calls apply(ARGV[i], ARGV[i + 1]) for the `count` pairs that start at ARGV[from].
local function eachPair (from, count, apply)
  local i = from
  for _ = 1, count do
    apply(ARGV[i], ARGV[i + 1])
    i = i + 2
  end
end

-- The code settings (fixed at creation) and every unit's field. HSETNX: a field already there names the
-- same unit (it follows from the unit), so adding is always safe.
local function installCodes ()
  redis.call('HSET', meta, 'codeSecret', ARGV[14], 'codePrefix', ARGV[15], 'codeLength', ARGV[16], 'codeTail', ARGV[17],
    'validForMs', ARGV[20], 'validUntil', ARGV[21], 'returnExpired', returnExpired)
  eachPair(codes_from, codeCount, function (field, unit) redis.call('HSETNX', codes, field, unit) end)
  redis.call('HSET', codes, '#', 1)
end

-- The redemption state, only into a hash without its marker (lost, or just cleared): while the marker
-- is missing, redeem, rollback and cancel answer NEEDS_RESTORE, so the caller's state is complete.
local function installRedemptions ()
  if redis.call('HEXISTS', redemptions, '#') == 1 then return end
  eachPair(codes_from + 2 * codeCount, redemptionCount, function (field, value) redis.call('HSET', redemptions, field, value) end)
  redis.call('HSET', redemptions, '#', 1)
end

-- The expiry job's candidates, only into a zset without its marker (lost, cleared by a PATCH that turned
-- returnExpired on, or just deleted): while the flag is on and the marker missing, issue, rollback and the
-- job answer NEEDS_RESTORE, so the caller's state is complete. Gone while the flag is off.
local function installExpiring ()
  if returnExpired ~= '1' then
    redis.call('DEL', expiring)
    return
  end
  if redis.call('ZSCORE', expiring, '#') then return end
  eachPair(codes_from + 2 * codeCount + 2 * redemptionCount, expiringCount, function (unit, expiresAt) redis.call('ZADD', expiring, expiresAt, unit) end)
  redis.call('ZADD', expiring, '+inf', '#')
end

-- The idempotency records and last cancels from ARGV[from..], and their markers. HSETNX: a record
-- still live is never older than one computed from Postgres and the stream.
local function installPairs (from)
  eachPair(from, records, function (field, record) redis.call('HSETNX', idem, field, record) end)
  eachPair(from + 2 * records, cancels, function (userId, cancel) redis.call('HSETNX', revoked, userId, cancel) end)
  redis.call('HSET', idem, '#', 1)
  redis.call('HSET', revoked, '#', 1)
end

if redis.call('HEXISTS', meta, 'perUserLimit') == 1 and redis.call('EXISTS', stock) == 1
  and redis.call('HEXISTS', holders, '#') == 1 and redis.call('HEXISTS', claims, '#') == 1 then
  if redis.call('HEXISTS', idem, '#') == 1 and redis.call('HEXISTS', revoked, '#') == 1
    and redis.call('HEXISTS', codes, '#') == 1 and redis.call('HEXISTS', meta, 'codeSecret') == 1
    and redis.call('HEXISTS', redemptions, '#') == 1 and (redis.call('HGET', meta, 'returnExpired') or '') == returnExpired
    and (returnExpired ~= '1' or redis.call('ZSCORE', expiring, '#')) then return 0 end
  -- Only the idempotency, the last-cancel or the codes hash (or the meta's code settings: counters
  -- installed before codes existed) was lost: add what the caller computed, keep the live counters. No
  -- check of the stream is needed: while a hash lacks its marker, every keyed call (the only writer of
  -- idempotency records), every cancel (the only writer of the last-cancel hash), the expiry job (a writer
  -- of codes; issue.lua, the other, adds only its own unit with HSETNX even to a hash without the marker,
  -- so a unit issued meanwhile is there as well as every unit the caller computed; issue.lua's header says
  -- which check that gives up), every redeem, rollback and cancel (the
  -- writers of redemptions) and, while returnExpired is on, every issue, rollback and expiry job (the
  -- writers of the expiring zset) answers NEEDS_RESTORE, so nothing the caller's read missed can be there.
  redis.call('HLEN', codes) -- type checks before the first write
  redis.call('HLEN', redemptions)
  redis.call('ZCARD', expiring)
  installPairs(records_from)
  installCodes()
  installRedemptions()
  installExpiring()
  return 1
end

local last = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
local lastId = last[1] and last[1][1] or ''
if lastId ~= ARGV[2] then return 2 end
redis.call('HLEN', idem) -- type checks before the first write
redis.call('SCARD', discarded)
redis.call('HLEN', codes)
redis.call('HLEN', redemptions)
redis.call('ZCARD', expiring)

redis.call('DEL', meta, stock, holders, claims, revoked, discarded, codes, redemptions, expiring)
redis.call('HSET', meta, 'total', ARGV[3], 'perUserLimit', ARGV[4], 'startsAt', ARGV[5], 'endsAt', ARGV[6])
if ARGV[13] == '1' then redis.call('HSET', meta, 'paused', '1') end
redis.call('SET', stock, ARGV[7])
redis.call('HSET', holders, '#', 1)
redis.call('HSET', claims, '#', 1)
local i = FIRST_GROUP
for _ = 1, users do
  if tonumber(ARGV[i + 1]) > 0 then redis.call('HSET', holders, ARGV[i], ARGV[i + 1]) end
  redis.call('HSET', claims, ARGV[i], ARGV[i + 2])
  i = i + 3
end
installPairs(i)
installCodes()
installRedemptions()
installExpiring()

local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', events, ARGV[1], '0', 'MKSTREAM')
if not ok and not string.find(tostring(err), 'BUSYGROUP') then return redis.error_reply(tostring(err)) end
redis.call('PUBLISH', ARGV[11], ARGV[12])
return 1
