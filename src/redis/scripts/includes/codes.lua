--[[
  Shared by issue.lua (inlined at load time by src/redis/scripts.ts): the unguessable part of a unit's
  code. src/issuing/codes.ts computes exactly the same characters in Node (consumer, counter rebuild):
  the first `length` characters of sha1hex(secret ':' userId ':' claim), read five hex digits (20 bits)
  at a time, each group written as four characters of Crockford's base32, most significant first.
]]

local CODE_ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'

-- Bytes into a table and one string.char at the end: no intermediate strings per character (measured
-- cheaper than concatenating substrings; docs/benchmarks.md).
local function codeMac (secret, userId, claim, length)
  local hex = redis.sha1hex(secret .. ':' .. userId .. ':' .. claim)
  local out = {}
  local n = 0
  local from = 1
  while n < length do
    local value = tonumber(string.sub(hex, from, from + 4), 16)
    from = from + 5
    out[n + 1] = string.byte(CODE_ALPHABET, math.floor(value / 32768) + 1)
    out[n + 2] = string.byte(CODE_ALPHABET, math.floor(value / 1024) % 32 + 1)
    out[n + 3] = string.byte(CODE_ALPHABET, math.floor(value / 32) % 32 + 1)
    out[n + 4] = string.byte(CODE_ALPHABET, value % 32 + 1)
    n = n + 4
  end
  return string.char(unpack(out, 1, length))
end
