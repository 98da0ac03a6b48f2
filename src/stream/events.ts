// The events the issue and revoke scripts append to a coupon's stream, and how the consumer reads them back.
// Field names are written by src/redis/scripts/issue.lua and revoke.lua.

export interface IssueEvent {
  type: 'issue'
  streamKey: string
  id: string
  couponId: number
  userId: string
  claim: number
  /** ms since epoch, from Redis TIME inside the script */
  at: number
  /** the Idempotency-Key of the request, carried so a counter rebuild can still replay it */
  idempotencyKey?: string
}

export interface RevokeEvent {
  type: 'revoke'
  streamKey: string
  id: string
  couponId: number
  userId: string
  units: number
  at: number
  /** the user's claims numbered up to this one are revoked (absent on entries written before it existed) */
  upToClaim?: number
  idempotencyKey?: string
}

export type CouponEvent = IssueEvent | RevokeEvent

export interface UndecodableEntry {
  streamKey: string
  id: string
  payload: Record<string, string>
  error: string
}

export const USER_ID_PATTERN = /^[A-Za-z0-9._:@-]{1,128}$/
/** What an Idempotency-Key may look like (the route schema holds the same rule). */
export const IDEMPOTENCY_KEY_PATTERN = /^[A-Za-z0-9._:-]{1,255}$/

const positiveInt = (value: string | undefined) => value !== undefined && /^[1-9]\d{0,15}$/.test(value) ? Number(value) : null

export function fieldsToObject (fields: string[]): Record<string, string> {
  const payload: Record<string, string> = {}
  for (let i = 0; i + 1 < fields.length; i += 2) payload[fields[i]!] = fields[i + 1]!
  return payload
}

/** Turns a raw stream entry into an event, or explains why it cannot be one (a poison entry). */
export function decodeEntry (streamKey: string, streamCouponId: number | null, id: string, fields: string[]): CouponEvent | UndecodableEntry {
  const payload = fieldsToObject(fields)
  const fail = (error: string): UndecodableEntry => ({ streamKey, id, payload, error })
  const couponId = positiveInt(payload.couponId)
  const at = positiveInt(payload.at)
  const userId = payload.userId
  if (couponId === null) return fail('couponId missing or not a positive integer')
  if (streamCouponId !== null && couponId !== streamCouponId) return fail(`couponId ${couponId} does not match stream of coupon ${streamCouponId}`)
  if (userId === undefined || !USER_ID_PATTERN.test(userId)) return fail('userId missing or malformed')
  if (at === null) return fail('at missing or not a timestamp in ms')
  const idempotencyKey = payload.idem
  if (idempotencyKey !== undefined && !IDEMPOTENCY_KEY_PATTERN.test(idempotencyKey)) return fail('idem malformed')
  const withKey = idempotencyKey === undefined ? {} : { idempotencyKey }
  if (payload.type === 'issue') {
    const claim = positiveInt(payload.claim)
    if (claim === null) return fail('claim missing or not a positive integer')
    return { type: 'issue', streamKey, id, couponId, userId, claim, at, ...withKey }
  }
  if (payload.type === 'revoke') {
    const units = positiveInt(payload.units)
    if (units === null) return fail('units missing or not a positive integer')
    const upToClaim = payload.upTo === undefined ? undefined : positiveInt(payload.upTo)
    if (upToClaim === null) return fail('upTo not a positive integer')
    return { type: 'revoke', streamKey, id, couponId, userId, units, at, ...(upToClaim === undefined ? {} : { upToClaim }), ...withKey }
  }
  return fail(`unknown event type ${JSON.stringify(payload.type)}`)
}

export const isEvent = (entry: CouponEvent | UndecodableEntry): entry is CouponEvent => 'type' in entry
