--[[
  Shared by the scripts that key a unit by its code (inlined at load time by src/redis/scripts.ts). Redis
  keys a unit by its mac's *field*: the first 5 * length bits of sha1hex(secret ':' userId ':' claim) as
  lower-case hex, a trailing partial digit with its spare bits zero. The characters a customer types carry
  the same bits in Crockford's base32 (src/issuing/codes.ts writes them from the field issue.lua answers):
  codeField is a substring on the hot path, fieldOfMac the conversion back, only for a code typed at
  GET /codes/:code or a redemption. src/issuing/codes.ts computes exactly the same fields in Node.
]]

local CODE_ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
local HEX_DIGITS = '0123456789abcdef'

local function codeField (secret, userId, claim, length)
  local hex = redis.sha1hex(secret .. ':' .. userId .. ':' .. claim)
  local bits = length * 5
  local full = math.floor(bits / 4)
  local rest = bits % 4
  if rest == 0 then return string.sub(hex, 1, full) end
  local digit = tonumber(string.sub(hex, full + 1, full + 1), 16)
  local spare = 2 ^ (4 - rest)
  return string.sub(hex, 1, full) .. string.sub(HEX_DIGITS, digit - digit % spare + 1, digit - digit % spare + 1)
end

-- The field of a typed mac (upper-case base32); nil when a character is not in the alphabet.
local function fieldOfMac (mac)
  local out = {}
  local acc, bits = 0, 0
  for i = 1, #mac do
    local at = string.find(CODE_ALPHABET, string.sub(mac, i, i), 1, true)
    if not at then return nil end
    acc = acc * 32 + at - 1
    bits = bits + 5
    while bits >= 4 do
      bits = bits - 4
      local digit = math.floor(acc / 2 ^ bits)
      acc = acc - digit * 2 ^ bits
      out[#out + 1] = string.sub(HEX_DIGITS, digit + 1, digit + 1)
    end
  end
  if bits > 0 then
    local digit = acc * 2 ^ (4 - bits)
    out[#out + 1] = string.sub(HEX_DIGITS, digit + 1, digit + 1)
  end
  return table.concat(out)
end
