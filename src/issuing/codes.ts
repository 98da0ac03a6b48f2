// Redeemable codes. A unit's code is derived, never stored as a secret of its own:
//
//   code = prefix + mac + tail
//   mac  = the first 5 * length bits of sha1(secret ':' userId ':' claim), written as `length` characters
//          of ALPHABET (5 bits each, most significant first)
//   tail = the coupon id in ALPHABET digits (no leading zero) + one character saying how many digits
//
// Redis keys a unit by the same bits written as hex, the mac's *field* (codeField): the first
// floor(5 * length / 4) hex digits of the sha1, plus, when 5 * length is not a multiple of 4, one more
// digit holding the remaining bits with the rest zeroed. issue.lua takes it straight from redis.sha1hex
// (a substring): writing base32 in Lua cost 29,000 of the script's 247,000 instructions per call
// (callgrind, docs/benchmarks.md), the largest part of what codes cost the hot path. The service writes
// the characters (macOfField) from the field the script answers; GET /codes/:code and redemptions turn the
// typed mac back into its field (fieldOfMac in includes/codes.lua, off the hot path). Field and mac carry
// the same bits, so uniqueness and lookups are exactly those of the characters.
//
// issue.lua computes the field in the same script that hands the unit out (no extra round trip); the
// consumer and a counter rebuild compute the same bits here from (secret, user, claim), so the stream
// entry need not carry the code. The tail lets GET /codes/:code find the coupon's keys
// from the code alone, read from the end, whatever the prefix: no global code -> coupon key, so every key
// of a script stays under the coupon's hash tag (Redis Cluster). The secret is per coupon (32 random
// bytes) and never leaves the service, so a code cannot be guessed from the user and claim. A mac already
// taken by another unit of the coupon (chance about n^2 / 2^(5 * length + 1) for n units) makes issue.lua
// skip to the next claim number, so codes stay unique and still follow from (secret, user, claim).
import { hash, randomBytes } from 'node:crypto'

/** Crockford's base32: no I, L, O, U, so a code read aloud or typed from paper is not misread. */
export const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
export const DEFAULT_CODE_LENGTH = 12
export const MIN_CODE_LENGTH = 12
/** sha1 gives 160 bits = 32 characters of 5 bits */
export const MAX_CODE_LENGTH = 32
export const CODE_PREFIX_PATTERN = /^[A-Z0-9-]{1,12}$/
/** Longest code: prefix 12 + mac 32 + tail (11 digits for 2^53, one length character). */
export const MAX_CODE_CHARS = 12 + MAX_CODE_LENGTH + 12

export interface CodeSettings {
  couponId: number
  codeSecret: string
  codePrefix: string
  codeLength: number
}

export const newCodeSecret = () => randomBytes(32).toString('hex')

/** The coupon id as ALPHABET digits plus their count: read from the end of a code. */
export function codeTail (couponId: number): string {
  let digits = ''
  let rest = couponId
  do {
    digits = ALPHABET[rest % 32]! + digits
    rest = Math.floor(rest / 32)
  } while (rest > 0)
  return digits + ALPHABET[digits.length]!
}

/**
 * The bits of a unit's mac as Redis keys them: the first 5 * length bits of the sha1 as lower-case hex,
 * exactly as includes/codes.lua's codeField computes them (a trailing partial digit has its spare bits zero).
 */
export function codeField (secret: string, userId: string, claim: number, length: number): string {
  // The one-shot digest: 0.9 µs per code against 1.6 µs for createHash().update().digest() (Node 24),
  // paid once per persisted row by the consumer.
  return fieldOfDigest(hash('sha1', `${secret}:${userId}:${claim}`, 'hex'), length)
}

const HEX = '0123456789abcdef'

function fieldOfDigest (hex: string, length: number): string {
  const bits = length * 5
  const full = Math.floor(bits / 4)
  const rest = bits % 4
  if (rest === 0) return hex.slice(0, full)
  const digit = parseInt(hex[full]!, 16)
  return hex.slice(0, full) + HEX[digit - (digit % (1 << (4 - rest)))]
}

/** Each lower-case hex digit's value, by character code. */
const HEX_VALUE = new Int8Array(128).fill(0)
for (let i = 0; i < 16; i++) HEX_VALUE[HEX.charCodeAt(i)] = i

/**
 * A field's bits as the mac's characters: 5 bits per character, an incomplete last group dropped. A
 * table instead of parseInt(digit, 16): 0.19 against 1.0 µs per 12-character mac, paid on every issue
 * and every persisted row. The field comes from sha1 hex (lower case), never from a client.
 */
export function macOfField (field: string): string {
  let out = ''
  let acc = 0
  let bits = 0
  for (let i = 0; i < field.length; i++) {
    acc = (acc << 4) | HEX_VALUE[field.charCodeAt(i) & 127]!
    bits += 4
    if (bits >= 5) {
      bits -= 5
      out += ALPHABET[(acc >> bits) & 31]
      acc &= (1 << bits) - 1
    }
  }
  return out
}

/** The mac's characters as their field (the inverse of macOfField; null for a character not in ALPHABET). */
export function fieldOfMac (mac: string): string | null {
  let out = ''
  let acc = 0
  let bits = 0
  for (let i = 0; i < mac.length; i++) {
    const value = ALPHABET.indexOf(mac[i]!)
    if (value < 0) return null
    acc = (acc << 5) | value
    bits += 5
    while (bits >= 4) {
      bits -= 4
      out += HEX[(acc >> bits) & 15]
      acc &= (1 << bits) - 1
    }
  }
  return bits > 0 ? out + HEX[acc << (4 - bits)] : out
}

/** The unguessable part of a unit's code, the characters a customer types. */
export function codeMac (secret: string, userId: string, claim: number, length: number): string {
  return macOfField(codeField(secret, userId, claim, length))
}

export function codeOf (s: CodeSettings, userId: string, claim: number): string {
  return s.codePrefix + codeMac(s.codeSecret, userId, claim, s.codeLength) + codeTail(s.couponId)
}

/** What a code names before anything is looked up: its coupon, and the rest (prefix + mac) to check there. */
export interface ParsedCode {
  couponId: number
  /** prefix + mac: compared against the coupon's own prefix and length by lookupCode.lua */
  head: string
}

const CODE_CHARS = /^[0-9A-Z-]+$/

/**
 * Reads a code typed by a customer: case-insensitive; null when it cannot be a code of any coupon. The
 * caller answers null exactly as an unknown code (CODE_NOT_FOUND), so malformed says nothing more.
 */
export function parseCode (input: string): ParsedCode | null {
  if (input.length < MIN_CODE_LENGTH + 2 || input.length > MAX_CODE_CHARS) return null
  const code = input.toUpperCase()
  if (!CODE_CHARS.test(code)) return null
  const digits = ALPHABET.indexOf(code[code.length - 1]!)
  if (digits < 1 || digits > 11 || code.length < digits + 1 + MIN_CODE_LENGTH) return null
  const idPart = code.slice(code.length - 1 - digits, code.length - 1)
  if (idPart[0] === '0') return null // one spelling per coupon id
  let couponId = 0
  for (const ch of idPart) {
    const d = ALPHABET.indexOf(ch)
    if (d < 0) return null
    couponId = couponId * 32 + d
  }
  if (!Number.isSafeInteger(couponId) || couponId < 1) return null
  return { couponId, head: code.slice(0, code.length - 1 - digits) }
}
