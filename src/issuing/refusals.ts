// The one place where script reply codes become catalog errors (as BullMQ's finished-errors.ts does):
// what the client sees for each way a script can say no.
import * as errors from '../errors.js'
import { IssueCode, RevokeCode, type Outcome } from '../redis/scripts.js'

/** The error for an issue the script did not make (any code but ISSUED). */
export function issueRefusal ({ code, at }: Outcome<IssueCode>, couponId: number, userId: string): Error {
  switch (code) {
    case IssueCode.ALREADY_ISSUED: return new errors.AlreadyIssued(userId, couponId, at)
    case IssueCode.SOLD_OUT: return new errors.SoldOut(couponId)
    case IssueCode.NOT_STARTED: return new errors.NotStarted(couponId, new Date(at).toISOString())
    case IssueCode.ENDED: return new errors.Ended(couponId, new Date(at).toISOString())
    case IssueCode.BACKLOG_FULL: return new errors.BacklogFull(couponId)
    case IssueCode.IDEMPOTENCY_KEY_REUSED: return new errors.IdempotencyKeyReused()
    default: return new errors.IssueScriptFailed()
  }
}

/** The error for a cancel the script did not make (any code but REVOKED). */
export function revokeRefusal ({ code }: Outcome<RevokeCode>, couponId: number, userId: string): Error {
  switch (code) {
    case RevokeCode.NOT_HELD: return new errors.IssueNotFound(userId, couponId)
    case RevokeCode.IDEMPOTENCY_KEY_REUSED: return new errors.IdempotencyKeyReused()
    default: return new errors.IssueScriptFailed()
  }
}
