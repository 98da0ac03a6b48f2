// Couponrush-Signature, as Stripe signs: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
// The timestamp is inside the MAC so a receiver can refuse replays of old deliveries (README shows a
// receiver's check).
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'

export const SIGNATURE_HEADER = 'couponrush-signature'

/** A new signing secret: 32 random bytes, prefixed so it is recognisable in a receiver's config. */
export const newSecret = () => 'whsec_' + randomBytes(32).toString('base64url')

export function sign (secret: string, timestamp: number, body: string): string {
  return `t=${timestamp},v1=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`
}

/**
 * What a receiver does (used by the tests): true when the header carries a v1 signature of this body
 * with this secret, made at most `toleranceSeconds` from `now`.
 */
export function verify (secret: string, header: string, body: string, { now = Date.now() / 1000, toleranceSeconds = 300 } = {}): boolean {
  const parts = new Map<string, string[]>()
  for (const item of header.split(',')) {
    const [k, v] = item.split('=', 2)
    if (k && v) parts.set(k, [...(parts.get(k) ?? []), v])
  }
  const t = Number(parts.get('t')?.[0])
  if (!Number.isInteger(t) || Math.abs(now - t) > toleranceSeconds) return false
  const expected = Buffer.from(sign(secret, t, body).split('v1=')[1]!, 'hex')
  return (parts.get('v1') ?? []).some((v) => {
    const given = Buffer.from(v, 'hex')
    return given.length === expected.length && timingSafeEqual(given, expected)
  })
}
