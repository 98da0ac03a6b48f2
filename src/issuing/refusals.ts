// The one place where script reply codes become what the client sees (as BullMQ's finished-errors.ts
// does). The losing outcomes of an issue — most requests of a rush — are not thrown: they come back as
// a Refusal whose body is already serialized, and the route sends it as is. Failures stay errors.
import * as errors from '../errors.js'
import { errorBody } from '../errors.js'
import { IssueCode, RedemptionCode, RevokeCode, type Outcome, type RedemptionOutcome } from '../redis/scripts.js'

/** A losing answer to an issue request: status, code, and the JSON body ready to send. */
export interface Refusal {
  statusCode: number
  code: string
  body: string
  /** answered from this process's sold-out marker, without asking Redis */
  fromMemory: boolean
}

// Refusals that depend only on the coupon (and a window edge) are built once; keyed by code, coupon and
// edge, bounded because coupon ids come from clients. Shared objects: never modified.
const CACHE_LIMIT = 10_000
const cache = new Map<string, Readonly<Refusal>>()

function refusal (err: Error & { code: string, statusCode: number }, fromMemory = false): Readonly<Refusal> {
  return { statusCode: err.statusCode, code: err.code, body: JSON.stringify(errorBody(err, err.statusCode)), fromMemory }
}

function cached (key: string, make: () => Readonly<Refusal>): Readonly<Refusal> {
  let answer = cache.get(key)
  if (answer === undefined) {
    if (cache.size >= CACHE_LIMIT) cache.clear()
    cache.set(key, answer = make())
  }
  return answer
}

const soldOut = (couponId: number) => cached(`SOLD_OUT:${couponId}`, () => refusal(new errors.SoldOut(couponId)))

/** SOLD_OUT answered from the sold-out marker (sold-out-markers.ts), without asking Redis. */
export const soldOutFromMemory = (couponId: number) => cached(`SOLD_OUT*:${couponId}`, () => refusal(new errors.SoldOut(couponId), true))

/**
 * What the client gets for an issue the script did not make (any code but ISSUED): a Refusal for the
 * losing outcomes, an error (thrown by the caller) for anything else.
 */
export function issueRefusal ({ code, at }: Outcome<IssueCode>, couponId: number, userId: string): Readonly<Refusal> | Error {
  switch (code) {
    case IssueCode.ALREADY_ISSUED: return refusal(new errors.AlreadyIssued(userId, couponId, at))
    case IssueCode.SOLD_OUT: return soldOut(couponId)
    case IssueCode.NOT_STARTED: return cached(`NOT_STARTED:${couponId}:${at}`, () => refusal(new errors.NotStarted(couponId, new Date(at).toISOString())))
    case IssueCode.ENDED: return cached(`ENDED:${couponId}:${at}`, () => refusal(new errors.Ended(couponId, new Date(at).toISOString())))
    case IssueCode.PAUSED: return cached(`PAUSED:${couponId}`, () => refusal(new errors.Paused(couponId)))
    case IssueCode.BACKLOG_FULL: return cached(`BACKLOG_FULL:${couponId}`, () => refusal(new errors.BacklogFull(couponId)))
    case IssueCode.IDEMPOTENCY_KEY_REUSED: return new errors.IdempotencyKeyReused()
    default: return new errors.IssueScriptFailed()
  }
}

/** The error for a cancel the script did not make (any code but REVOKED). */
export function revokeRefusal ({ code, count }: Outcome<RevokeCode>, couponId: number, userId: string): Error {
  switch (code) {
    case RevokeCode.NOT_HELD: return new errors.IssueNotFound(userId, couponId)
    // For REDEEMED the script returns how many units are redeemed in `count`.
    case RevokeCode.REDEEMED: return new errors.HolderRedeemed(userId, count, couponId)
    case RevokeCode.IDEMPOTENCY_KEY_REUSED: return new errors.IdempotencyKeyReused()
    default: return new errors.CancelScriptFailed()
  }
}

/** The error for a redemption or rollback the script did not make (any code but DONE). */
export function redemptionRefusal ({ code, at }: RedemptionOutcome, orderId: string): Error {
  switch (code) {
    case RedemptionCode.NOT_FOUND: return new errors.CodeNotFound()
    case RedemptionCode.REVOKED: return new errors.CodeRevoked()
    case RedemptionCode.ALREADY_REDEEMED: return new errors.AlreadyRedeemed()
    case RedemptionCode.NOT_REDEEMED_BY_ORDER: return new errors.NotRedeemedByOrder(orderId)
    // For EXPIRED the script returns the unit's expiresAt in `at`.
    case RedemptionCode.EXPIRED: return new errors.CodeExpired(new Date(at).toISOString())
    default: return new errors.RedeemScriptFailed()
  }
}
