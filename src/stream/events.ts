// The events the issue and revoke scripts append to a coupon's stream, and how every reader (the
// consumer, the counter rebuild, the failed-events routes, `npm run drain`) reads them back.
//
// Entry formats. A stream entry is either
//
//   v1, compact (written by src/redis/scripts/issue.lua and revoke.lua): ONE field whose name carries
//       the format version, its value the event's fields joined by '|':
//         e1  i|<userId>|<claim>|<atMs>|<idem>           an issue
//         e1  r|<userId>|<units>|<atMs>|<upTo>|<idem>    a revoke
//         e1  d|<userId>|<claim>|<atMs>|<orderId>        a redemption of the unit (userId, claim) by an order
//         e1  u|<userId>|<claim>|<atMs>|<orderId>        its rollback (the order failed; the unit is active again)
//         e1  x|<userId>|<claim>|<atMs>|<reason>         a ONE-UNIT revoke: exactly this claim went back to stock
//                                                        (reason 'expired': returnExpired.lua, the expiry job)
//       (d and u are written by redeem.lua and rollback.lua, x by returnExpired.lua; a reader from before
//       them parks them as poison, "unknown event type".)
//       <idem> is the request's Idempotency-Key, empty without one. <orderId> follows ORDER_ID_PATTERN. There is no couponId: the stream
//       key names the coupon (keys.couponIdOfStream). '|' cannot occur in a userId (USER_ID_PATTERN)
//       or an Idempotency-Key (IDEMPOTENCY_KEY_PATTERN), so one split takes the value apart; an entry
//       whose value does not split into exactly 5 (issue) or 6 (revoke) parts is poison.
//       A later format gets a new field name (e2, ...); a reader that does not know it parks the entry
//       as poison instead of guessing. A field name 'e<digits>' is never a v0 field. A version that
//       writes a new format must not run beside one that cannot read it (its counter rebuild would skip
//       the entries it cannot read): README, "What is on the stream?".
//
//   v0, one field per value (written by versions before v1, so an upgraded service may still find them
//       in a stream, and the form parked entries rebuilt from a decoded event are stored in):
//         type issue,  couponId, userId, claim, at[, idem]
//         type revoke, couponId, userId, units, at[, upTo][, idem]
//         type redeem | rollback, couponId, userId, claim, at, orderId   (only ever written parked)
//         type revokeUnit, couponId, userId, claim, at, reason              (likewise)
//       couponId must match the stream's coupon. Payloads parked before v1 may carry `idempotencyKey`
//       and `upToClaim` instead of `idem` and `upTo` (persist-batch.ts stored decoded events under
//       those names); both are read.
//
// Numbers are positive decimal integers without leading zeros; at and atMs are ms since the epoch
// from Redis TIME. Anything else is an UndecodableEntry (poison): parked in failed_issue_events with
// its fields as a field/value object, never guessed at.

/** What every decoded entry carries: where it is, whose it is, when it happened. */
interface EntryEvent {
  streamKey: string
  /** the stream entry id */
  id: string
  couponId: number
  userId: string
  /** ms since epoch, from Redis TIME inside the script */
  at: number
}

export interface IssueEvent extends EntryEvent {
  type: 'issue'
  claim: number
  /** the Idempotency-Key of the request, carried so a counter rebuild can still replay it */
  idempotencyKey?: string
}

export interface RevokeEvent extends EntryEvent {
  type: 'revoke'
  units: number
  /** the user's claims numbered up to this one are revoked (absent on entries written before it existed) */
  upToClaim?: number
  idempotencyKey?: string
}

/** A redemption of one unit by an order ('redeem'), or its rollback ('rollback'). */
export interface RedemptionEvent extends EntryEvent {
  type: 'redeem' | 'rollback'
  claim: number
  orderId: string
}

/** Why one unit was taken back alone (not by a cancel of its holder). */
export type UnitRevokeReason = 'expired'
const UNIT_REVOKE_REASONS: readonly string[] = ['expired'] satisfies UnitRevokeReason[]

/**
 * A ONE-UNIT revoke: exactly claim `claim` of the user went back to stock (the expiry job returned it at
 * its expiry). Unlike a cancel it names no prefix of claims.
 */
export interface UnitRevokeEvent extends EntryEvent {
  type: 'revokeUnit'
  claim: number
  reason: UnitRevokeReason
}

export type CouponEvent = IssueEvent | RevokeEvent | RedemptionEvent | UnitRevokeEvent

export interface UndecodableEntry {
  streamKey: string
  id: string
  payload: Record<string, string>
  error: string
}

export const USER_ID_PATTERN = /^[A-Za-z0-9._:@-]{1,128}$/
/** What an Idempotency-Key may look like (the route schema holds the same rule). */
export const IDEMPOTENCY_KEY_PATTERN = /^[A-Za-z0-9._:-]{1,255}$/
/** What a shop's order id may look like (the route schema holds the same rule): never '|'. */
export const ORDER_ID_PATTERN = /^[A-Za-z0-9._:#/-]{1,128}$/

/** The field name of a v1 (compact) entry; issue.lua and revoke.lua write it. */
export const ENTRY_FIELD = 'e1'
const VERSIONED_FIELD = /^e\d+$/

const positiveInt = (value: string | undefined) => value !== undefined && /^[1-9]\d{0,15}$/.test(value) ? Number(value) : null

export function fieldsToObject (fields: string[]): Record<string, string> {
  const payload: Record<string, string> = {}
  for (let i = 0; i + 1 < fields.length; i += 2) payload[fields[i]!] = fields[i + 1]!
  return payload
}

/** Turns a raw stream entry into an event, or explains why it cannot be one (a poison entry). */
export function decodeEntry (streamKey: string, streamCouponId: number | null, id: string, fields: string[]): CouponEvent | UndecodableEntry {
  const first = fields[0]
  if (fields.length === 2 && first === ENTRY_FIELD) return decodeCompact(streamKey, streamCouponId, id, fields[1]!, fields)
  if (first !== undefined && VERSIONED_FIELD.test(first)) {
    const error = first === ENTRY_FIELD
      ? `a ${ENTRY_FIELD} entry has exactly one field, this one has ${fields.length >> 1}`
      : `unknown entry format ${JSON.stringify(first)} (written by a newer version?)`
    return { streamKey, id, payload: fieldsToObject(fields), error }
  }
  return decodeV0(streamKey, streamCouponId, id, fields)
}

/** v1: one split, no intermediate object (the consumer decodes every entry through here). */
function decodeCompact (streamKey: string, couponId: number | null, id: string, value: string, fields: string[]): CouponEvent | UndecodableEntry {
  const fail = (error: string): UndecodableEntry => ({ streamKey, id, payload: fieldsToObject(fields), error })
  if (couponId === null) return fail(`the stream key names no coupon, and a ${ENTRY_FIELD} entry carries none`)
  const parts = value.split('|')
  const kind = parts[0]
  if (kind === 'd' || kind === 'u') return decodeRedemption(streamKey, couponId, id, parts, fail)
  if (kind === 'x') return decodeUnitRevoke(streamKey, couponId, id, parts, fail)
  if (kind !== 'i' && kind !== 'r') return fail(`unknown event type ${JSON.stringify(kind)}`)
  const expected = kind === 'i' ? 5 : 6
  if (parts.length !== expected) return fail(`${kind === 'i' ? 'issue' : 'revoke'} entry has ${parts.length} '|'-separated parts, expected ${expected}`)
  const userId = parts[1]!
  if (!USER_ID_PATTERN.test(userId)) return fail('userId missing or malformed')
  const count = positiveInt(parts[2])
  const at = positiveInt(parts[3])
  if (at === null) return fail('at missing or not a timestamp in ms')
  const idempotencyKey = parts[expected - 1]!
  if (idempotencyKey !== '' && !IDEMPOTENCY_KEY_PATTERN.test(idempotencyKey)) return fail('idem malformed')
  if (kind === 'i') {
    if (count === null) return fail('claim missing or not a positive integer')
    return idempotencyKey === ''
      ? { type: 'issue', streamKey, id, couponId, userId, claim: count, at }
      : { type: 'issue', streamKey, id, couponId, userId, claim: count, at, idempotencyKey }
  }
  if (count === null) return fail('units missing or not a positive integer')
  const upToClaim = positiveInt(parts[4])
  if (upToClaim === null) return fail('upTo missing or not a positive integer')
  return idempotencyKey === ''
    ? { type: 'revoke', streamKey, id, couponId, userId, units: count, at, upToClaim }
    : { type: 'revoke', streamKey, id, couponId, userId, units: count, at, upToClaim, idempotencyKey }
}

/** d|userId|claim|atMs|orderId and u|... (see the header). */
function decodeRedemption (streamKey: string, couponId: number, id: string, parts: string[], fail: (error: string) => UndecodableEntry): RedemptionEvent | UndecodableEntry {
  const type = parts[0] === 'd' ? 'redeem' : 'rollback'
  if (parts.length !== 5) return fail(`${type} entry has ${parts.length} '|'-separated parts, expected 5`)
  const userId = parts[1]!
  if (!USER_ID_PATTERN.test(userId)) return fail('userId missing or malformed')
  const claim = positiveInt(parts[2])
  if (claim === null) return fail('claim missing or not a positive integer')
  const at = positiveInt(parts[3])
  if (at === null) return fail('at missing or not a timestamp in ms')
  const orderId = parts[4]!
  if (!ORDER_ID_PATTERN.test(orderId)) return fail('orderId missing or malformed')
  return { type, streamKey, id, couponId, userId, claim, at, orderId }
}

/** x|userId|claim|atMs|reason (see the header). */
function decodeUnitRevoke (streamKey: string, couponId: number, id: string, parts: string[], fail: (error: string) => UndecodableEntry): UnitRevokeEvent | UndecodableEntry {
  if (parts.length !== 5) return fail(`unit revoke entry has ${parts.length} '|'-separated parts, expected 5`)
  return unitRevoke(streamKey, couponId, id, parts[1], parts[2], parts[3], parts[4], fail)
}

function unitRevoke (streamKey: string, couponId: number, id: string, userId: string | undefined, claimText: string | undefined, atText: string | undefined,
  reason: string | undefined, fail: (error: string) => UndecodableEntry): UnitRevokeEvent | UndecodableEntry {
  if (userId === undefined || !USER_ID_PATTERN.test(userId)) return fail('userId missing or malformed')
  const claim = positiveInt(claimText)
  if (claim === null) return fail('claim missing or not a positive integer')
  const at = positiveInt(atText)
  if (at === null) return fail('at missing or not a timestamp in ms')
  if (reason === undefined || !UNIT_REVOKE_REASONS.includes(reason)) return fail(`reason missing or unknown: ${JSON.stringify(reason)}`)
  return { type: 'revokeUnit', streamKey, id, couponId, userId, claim, at, reason: reason as UnitRevokeReason }
}

function decodeV0 (streamKey: string, streamCouponId: number | null, id: string, fields: string[]): CouponEvent | UndecodableEntry {
  const payload = fieldsToObject(fields)
  const fail = (error: string): UndecodableEntry => ({ streamKey, id, payload, error })
  const couponId = positiveInt(payload.couponId)
  const at = positiveInt(payload.at)
  const userId = payload.userId
  if (couponId === null) return fail('couponId missing or not a positive integer')
  if (streamCouponId !== null && couponId !== streamCouponId) return fail(`couponId ${couponId} does not match stream of coupon ${streamCouponId}`)
  if (userId === undefined || !USER_ID_PATTERN.test(userId)) return fail('userId missing or malformed')
  if (at === null) return fail('at missing or not a timestamp in ms')
  const idempotencyKey = payload.idem ?? payload.idempotencyKey
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
    const upTo = payload.upTo ?? payload.upToClaim
    const upToClaim = upTo === undefined ? undefined : positiveInt(upTo)
    if (upToClaim === null) return fail('upTo not a positive integer')
    return { type: 'revoke', streamKey, id, couponId, userId, units, at, ...(upToClaim === undefined ? {} : { upToClaim }), ...withKey }
  }
  if (payload.type === 'revokeUnit') return unitRevoke(streamKey, couponId, id, userId, payload.claim, payload.at, payload.reason, fail)
  if (payload.type === 'redeem' || payload.type === 'rollback') {
    const claim = positiveInt(payload.claim)
    if (claim === null) return fail('claim missing or not a positive integer')
    const orderId = payload.orderId
    if (orderId === undefined || !ORDER_ID_PATTERN.test(orderId)) return fail('orderId missing or malformed')
    return { type: payload.type, streamKey, id, couponId, userId, claim, at, orderId }
  }
  return fail(`unknown event type ${JSON.stringify(payload.type)}`)
}

type Unplaced<E> = E extends CouponEvent ? Omit<E, 'streamKey' | 'id' | 'couponId'> : never

/** The v1 entry of an event, as the scripts write it: [ENTRY_FIELD, value]. For tests and tools. */
export function encodeEntry (event: Unplaced<CouponEvent>): [string, string] {
  switch (event.type) {
    case 'issue': return [ENTRY_FIELD, `i|${event.userId}|${event.claim}|${event.at}|${event.idempotencyKey ?? ''}`]
    case 'revoke': return [ENTRY_FIELD, `r|${event.userId}|${event.units}|${event.at}|${event.upToClaim ?? ''}|${event.idempotencyKey ?? ''}`]
    case 'revokeUnit': return [ENTRY_FIELD, `x|${event.userId}|${event.claim}|${event.at}|${event.reason}`]
    default: return [ENTRY_FIELD, `${event.type === 'redeem' ? 'd' : 'u'}|${event.userId}|${event.claim}|${event.at}|${event.orderId}`]
  }
}

/**
 * A decoded event as a v0 field/value object: how an entry parked after decoding (unknown coupon, a row
 * Postgres refused) is stored. It reads well in the admin listing and decodeEntry reads it back whole.
 */
export function eventPayload (event: CouponEvent): Record<string, string> {
  const payload: Record<string, string> = { type: event.type, couponId: String(event.couponId), userId: event.userId }
  if ('orderId' in event) return { ...payload, claim: String(event.claim), at: String(event.at), orderId: event.orderId }
  if (event.type === 'revokeUnit') return { ...payload, claim: String(event.claim), at: String(event.at), reason: event.reason }
  if (event.type === 'issue') {
    payload.claim = String(event.claim)
    payload.at = String(event.at)
  } else {
    payload.units = String(event.units)
    payload.at = String(event.at)
    if (event.upToClaim !== undefined) payload.upTo = String(event.upToClaim)
  }
  if (event.idempotencyKey !== undefined) payload.idem = event.idempotencyKey
  return payload
}

export const isRedemption = (event: CouponEvent): event is RedemptionEvent => 'orderId' in event

export const isEvent = (entry: CouponEvent | UndecodableEntry): entry is CouponEvent => 'type' in entry
