--[[
  Shared by issue.lua (inlined at load time by src/redis/scripts.ts): the unguessable part of a unit's
  code. src/issuing/codes.ts computes exactly the same characters in Node (consumer, counter rebuild):
  the first `length` characters of sha1hex(secret ':' userId ':' claim), read five hex digits (20 bits)
  at a time, each group written as four characters of Crockford's base32, most significant first.
]]

local CODE_ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'

local function codeMac (secret, userId, claim, length)
  local hex = redis.sha1hex(secret .. ':' .. userId .. ':' .. claim)
  local out = {}
  local group = 0
  while #out < length do
    local value = tonumber(string.sub(hex, group * 5 + 1, group * 5 + 5), 16)
    local divisor = 32768 -- 2^15
    while divisor >= 1 and #out < length do
      local digit = math.floor(value / divisor) % 32
      out[#out + 1] = string.sub(CODE_ALPHABET, digit + 1, digit + 1)
      divisor = divisor / 32
    end
    group = group + 1
  end
  return table.concat(out)
end
