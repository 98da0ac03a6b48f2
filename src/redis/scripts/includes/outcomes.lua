--[[
  Shared by issue.lua and revoke.lua (inlined at load time by src/redis/scripts.ts): the clock, the
  idempotency records, appending an event (format: src/stream/events.ts) and waking a dormant stream.

  Idempotency records live in the coupon's idempotency hash: field "<action>:<key>" ->
  "userId|code|at|count|entryId|recordedAtMs". The hash carries no TTL, so a volatile-* eviction policy
  cannot pick it first; a record older than the TTL is ignored here (and pruned by the maintenance
  tick). Field '#' marks the hash complete: without it the hash was lost, and a keyed request must wait
  for a rebuild (which restores every issue and cancel made with a key) instead of acting twice.
  Replies are { code, at, count, entryId, replayed, reactivated }; code 7 = IDEMPOTENCY_KEY_REUSED.
]]

-- Redis TIME in ms, one clock for every app instance: as a number and as its digits. The digits are
-- cut from TIME's own strings (seconds, then the microseconds' first three of six digits): Lua turns a
-- number into text through printf, about 2,000 instructions each time (docs/benchmarks.md), and the
-- issue path writes the moment into four places.
local function clock ()
  local time = redis.call('TIME')
  local text = time[1] .. string.sub('00000' .. time[2], -6, -4)
  return tonumber(text), text
end

local function nowMs ()
  return (clock())
end

-- The remembered reply for this field, a mismatch reply when the key came with another user, or nil.
local function recallOutcome (idem, field, userId, now, ttlMs)
  local seen = redis.call('HGET', idem, field)
  if not seen then return nil end
  local user, code, at, count, entry, recorded = string.match(seen, '^(.*)|(%d+)|(%d*)|(%d*)|(.*)|(%d+)$')
  if not user or tonumber(recorded) + ttlMs <= now then return nil end
  if user ~= userId then return { 7, 0, 0, '', 0, 0 } end
  return { tonumber(code), tonumber(at) or 0, tonumber(count) or 0, entry, 1, 0 }
end

-- For a call made with a key (field ~= ''): NEEDS_RESTORE while the idempotency hash lacks its
-- completeness marker, the remembered reply when there is one; nil to go on.
local function replayForKey (idem, field, userId, now, ttlSeconds)
  if field == '' then return nil end
  if redis.call('HEXISTS', idem, '#') == 0 then return { 1, 0, 0, '', 0, 0 } end
  return recallOutcome(idem, field, userId, now, tonumber(ttlSeconds) * 1000)
end

-- Builds a final reply and remembers it when the request carried a key (field ~= '').
local function rememberOutcome (idem, field, userId, now, code, at, count, entry, reactivated)
  if field ~= '' then
    redis.call('HSET', idem, field, userId .. '|' .. code .. '|' .. at .. '|' .. count .. '|' .. entry .. '|' .. now)
  end
  return { code, at, count, entry, 0, reactivated }
end

-- Appends an event as one v1 entry: field 'e1', the event's values joined by '|' (the format, and the
-- older one readers still accept, is documented in src/stream/events.ts). `values` ends with the
-- idempotency key ('' = none): the key travels with the event, a counter rebuild replays it from there.
-- Numbers are concatenated as Lua prints them: plain digits for every integer below 1e14 (ms until 5138).
local function appendEvent (events, values)
  return redis.call('XADD', events, '*', 'e1', table.concat(values, '|'))
end

-- After an append to a stream marked dormant (markDormant.lua): clears the mark and answers 1, so the
-- caller puts the coupon back on the consumer's read list; 0 otherwise.
local function wakeIfDormant (meta, dormant)
  if not dormant then return 0 end
  redis.call('HDEL', meta, 'dormant')
  return 1
end
