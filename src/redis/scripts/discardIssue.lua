#!lua
--[[
  discardIssue.lua: an admin gives up a parked issue entry (it will never reach Postgres): its unit
  goes back to stock and its holder loses it, unless a cancel already gave it back. Idempotent: the
  entry id is remembered in the discarded set until the next counter rebuild (which computes from
  Postgres, where the discard is recorded, and clears the set).

  KEYS[1] meta       hash
  KEYS[2] stock      string
  KEYS[3] holders    hash
  KEYS[4] revoked    hash   userId -> "upTo|revokedAtMs"
  KEYS[5] discarded  set    entry ids given back
  KEYS[6] stats      hash   discarded += 1 on RETURNED (best effort)
  KEYS[7] codes      hash   the unit's field is removed on RETURNED: a unit given back never reached Postgres
                            and is not counted by a rebuild, so its code must stop naming anything at once
                            (not only after the next rebuild); GET /codes answers CODE_NOT_FOUND

  ARGV[1] userId   ARGV[2] claim number of the parked issue   ARGV[3] its stream entry id
  ARGV[4] stock-returned channel   ARGV[5] couponId (published on RETURNED: see src/issuing/sold-out-markers.ts)

  Returns code
    0 RETURNED         the unit went back to stock
    1 NEEDS_RESTORE
    2 ALREADY          discarded before: nothing changed
    3 NOT_HELD         a cancel already returned the unit: nothing changed
]]

-- @include codes.lua

local meta, stock, holders, revoked, discarded, stats, codes = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local userId, claim, entryId = ARGV[1], tonumber(ARGV[2]), ARGV[3]

if redis.call('SISMEMBER', discarded, entryId) == 1 then return 2 end
local m = redis.call('HMGET', meta, 'perUserLimit', 'codeSecret', 'codeLength')
local left = redis.call('GET', stock)
local holding = redis.call('HMGET', holders, userId, '#')
local cancel = redis.call('HMGET', revoked, userId, '#')
if not m[1] or not m[2] or not left or not holding[2] or not cancel[2] then return 1 end
redis.call('HLEN', codes) -- type check before the first write

local upTo = cancel[1] and tonumber(string.match(cancel[1], '^(%d+)|')) or 0
local held = tonumber(holding[1]) or 0
redis.call('SADD', discarded, entryId)
if upTo >= claim or held <= 0 then return 3 end
if held == 1 then redis.call('HDEL', holders, userId) else redis.call('HSET', holders, userId, held - 1) end
redis.call('INCR', stock)
redis.call('HDEL', codes, codeField(m[2], userId, claim, tonumber(m[3])))
redis.call('PUBLISH', ARGV[4], ARGV[5])
redis.pcall('HINCRBY', stats, 'discarded', 1)
return 0
