--[[
  Shared by issue.lua and revoke.lua (inlined at load time by src/redis/client.ts).
  Idempotency records are strings "userId|code|at|count|entryId" that live for the key's TTL.
  Replies are { code, at, count, entryId, replayed }; code 7 = IDEMPOTENCY_MISMATCH.
]]

-- Redis TIME in ms: one clock for every app instance.
local function nowMs ()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- The remembered reply for this key, a mismatch reply when the key came with another user, or nil.
local function recallOutcome (idem, idemKey, userId)
  if idemKey == '' then return nil end
  local seen = redis.call('GET', idem)
  if not seen then return nil end
  local user, code, at, count, entry = string.match(seen, '^(.*)|(%d+)|(%d*)|(%d*)|(.*)$')
  if user ~= userId then return { 7, 0, 0, '', 0 } end
  return { tonumber(code), tonumber(at) or 0, tonumber(count) or 0, entry, 1 }
end

-- Builds a final reply and remembers it when the request carried a key.
local function rememberOutcome (idem, idemKey, ttl, userId, code, at, count, entry)
  if idemKey ~= '' then
    redis.call('SET', idem, userId .. '|' .. code .. '|' .. at .. '|' .. count .. '|' .. entry, 'EX', ttl)
  end
  return { code, at, count, entry, 0 }
end
