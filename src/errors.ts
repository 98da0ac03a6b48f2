// The error catalog: every error a client can see, with its code, status and a message that says what to do.
import { STATUS_CODES } from 'node:http'
import createError from '@fastify/error'

// The answers most requests of a rush get: expected outcomes, not faults, so no stack trace is captured
// (it would be paid on every losing request and never read).
const LOSER = false

export const CouponNotFound = createError('COUPON_NOT_FOUND', 'Coupon %s does not exist. Check the coupon id.', 404)
export const IssueNotFound = createError('ISSUE_NOT_FOUND', 'User %s holds no unit of coupon %s.', 404)
export const AlreadyIssued = createError('ALREADY_ISSUED', 'User %s already holds coupon %s (limit %s per user). Do not retry.', 409, Error, LOSER)
export const SoldOut = createError('SOLD_OUT', 'Coupon %s is sold out. Do not retry.', 409, Error, LOSER)
export const NotStarted = createError('NOT_STARTED', 'Coupon %s opens at %s. Retry after that moment.', 409, Error, LOSER)
export const Ended = createError('ENDED', 'Coupon %s closed at %s.', 409, Error, LOSER)
export const Paused = createError('PAUSED', 'Coupon %s is paused. Retry after it resumes.', 409, Error, LOSER)
// Codes (GET /codes/:code, redemptions). One body for every code that names nothing, whatever the reason
// (malformed, unknown coupon, unknown unit): the answer must not help anyone guessing codes.
export const CodeNotFound = createError('CODE_NOT_FOUND', 'No such code. Check the spelling (letters and digits; I, L, O and U are never used).', 404)
export const AlreadyRedeemed = createError('ALREADY_REDEEMED', 'This code is already redeemed by another order. Roll that order back first (DELETE /codes/{code}/redemptions/{orderId}).', 409)
export const HolderRedeemed = createError('ALREADY_REDEEMED', 'User %s has %s redeemed unit(s) of coupon %s. Roll the order back first, or cancel with ?force=true (admin).', 409)
export const CodeRevoked = createError('REVOKED', 'This code was cancelled (its unit went back to stock); it cannot be redeemed or rolled back.', 409)
export const CodeExpired = createError('EXPIRED', 'This code expired at %s; it can no longer be redeemed.', 409)
export const InvalidValidity = createError('INVALID_REQUEST', 'validFor must be an ISO 8601 duration of weeks (P2W) or days and time (P7D, PT30M, P1DT12H), from one minute to ten years; validFor and validUntil exclude each other (found %s).', 400)
export const NotRedeemedByOrder = createError('NOT_REDEEMED_BY_ORDER', 'This code is not redeemed by order %s; nothing to roll back.', 409)
export const RedeemScriptFailed = createError('REDEEM_SCRIPT_FAILED', 'The coupon store rejected the redemption or rollback; nothing was changed. Retry later or contact the operator.', 503)
export const IdempotencyKeyReused = createError('IDEMPOTENCY_KEY_REUSED', 'This Idempotency-Key was already used with a different request body. Use a new key for a new request.', 422)
export const StockBelowIssued = createError('STOCK_BELOW_ISSUED', 'totalQuantity %s is below the %s units out right now (issued and not cancelled). Stock can be lowered down to what is out, never below it.', 409)
export const InvalidCursor = createError('INVALID_REQUEST', '`after` is not a cursor this list gave out. Pass the `next` of the previous page.', 400)
export const InvalidMetadataKey = createError('INVALID_REQUEST', 'metadata keys are 1-40 characters of A-Z a-z 0-9 _ . - (found %s).', 400)
export const InvalidWindow = createError('INVALID_WINDOW', 'endsAt must be later than startsAt.', 400)
export const Unauthorized = createError('UNAUTHORIZED', 'Missing or invalid credentials. Send `Authorization: Bearer <token>`.', 401)
export const Forbidden = createError('FORBIDDEN', 'This key may not use this route. Admin routes need the ADMIN_TOKEN.', 403)
// The outcome is unknown (no answer in time, or the connection closed after the command was sent): the act
// may have happened. Only a retry with the same Idempotency-Key is answered exactly (a replay).
export const RedisUnavailable = createError('REDIS_UNAVAILABLE', 'The coupon store (Redis) is unavailable or did not answer in time; the operation may or may not have happened. Retry shortly with the same Idempotency-Key.', 503)
// Redis Cluster refused the command before running it (failover, slot migration): nothing happened, a retry is safe.
export const RedisReconfiguring = createError('REDIS_RECONFIGURING', 'The coupon store (Redis Cluster) refused the operation while it fails over or moves data; nothing was changed. Retry shortly.', 503)
export const DatabaseUnavailable = createError('DATABASE_UNAVAILABLE', 'The database is unavailable. Retry shortly.', 503)
export const BacklogFull = createError('BACKLOG_FULL', 'Too many issues are waiting to be persisted for coupon %s. Retry in a few seconds.', 503)
export const ReplicationTimeout = createError('REPLICATION_TIMEOUT', 'Redis replicas did not confirm the write in time (REDIS_WAIT_REPLICAS): the outcome is unknown, it may have happened. Retry with the same Idempotency-Key.', 503)
export const Restoring = createError('RESTORING', 'Stock of coupon %s is being rebuilt. Retry in a moment.', 503)
// One code per script a client can set off, so an alert or a client knows which act did not happen.
export const IssueScriptFailed = createError('ISSUE_SCRIPT_FAILED', 'The coupon store rejected the operation; nothing was changed. Retry later or contact the operator.', 503)
export const CancelScriptFailed = createError('CANCEL_SCRIPT_FAILED', 'The coupon store rejected the cancel; nothing was changed. Retry later with the same Idempotency-Key or contact the operator.', 503)
export const UpdateScriptFailed = createError('UPDATE_SCRIPT_FAILED', 'The coupon store rejected the change of stock or window; nothing was changed. Retry later or contact the operator.', 503)
export const FailedEventNotFound = createError('FAILED_EVENT_NOT_FOUND', 'Failed event %s does not exist. List them with GET /admin/failed-events.', 404)
export const FailedEventSettled = createError('FAILED_EVENT_SETTLED', 'Failed event %s was already %s; nothing changed.', 409)
export const FailedEventNotDiscardable = createError('FAILED_EVENT_NOT_DISCARDABLE', 'Failed event %s is a %s: Redis applied it when it was answered, so giving it up would leave Redis and Postgres disagreeing (a rebuild would undo it, and a unit handed out again meanwhile would be counted twice). Retry it instead; until then it stays parked and every rebuild counts it.', 409)
export const FailedEventStillFailing = createError('FAILED_EVENT_STILL_FAILING', 'Failed event %s still cannot be persisted: %s', 422)
export const InvalidWebhookUrl = createError('INVALID_WEBHOOK_URL', 'url must be an absolute http:// or https:// URL with a host, without user:password@ and without a #fragment, at most 2048 characters (%s).', 400)
export const EventsDisabled = createError('EVENTS_DISABLED', 'Events are not recorded on this service (EVENTS_ENABLED is off), so webhooks and the event feed would stay silent. Set EVENTS_ENABLED=true.', 409)
export const TooManyWebhooks = createError('TOO_MANY_WEBHOOKS', 'There are already %s webhooks, the most allowed. Delete one first.', 409)
export const WebhookNotFound = createError('WEBHOOK_NOT_FOUND', 'Webhook %s does not exist (or was deleted). List them with GET /admin/webhooks.', 404)
export const DeliveryNotFound = createError('DELIVERY_NOT_FOUND', 'Webhook %s has no delivery %s. List them with GET /admin/webhooks/%s/deliveries.', 404)
export const DeliveryInFlight = createError('DELIVERY_IN_FLIGHT', 'Delivery %s is being attempted right now. Retry the redeliver once the attempt ended (at most a few seconds).', 409)
export const InvalidEventCursor = createError('INVALID_CURSOR', '`after` is not a cursor this feed gave out. Pass the `next` of the previous page, or no `after` to start from the first event.', 400)
// Every request arriving during a shutdown gets it: expected, so without a stack trace either.
export const ShuttingDown = createError('SHUTTING_DOWN', 'The service is shutting down. Retry against another instance or in a moment.', 503, Error, LOSER)

/** What every error answer looks like on the wire. */
export interface ErrorBody { statusCode: number, code: string, error: string, message: string }

/** The answer body for an error with this status (the error handler, the shutdown hook and the hot path agree on it). */
export function errorBody (err: { code?: string, message: string }, statusCode: number): ErrorBody {
  return { statusCode, code: err.code ?? `HTTP_${statusCode}`, error: STATUS_CODES[statusCode] ?? 'Error', message: err.message }
}

/** True for errors from this catalog (they carry a code and status for the client). */
export function isCatalogError (err: unknown): err is Error & { code: string, statusCode: number } {
  return err instanceof Error && err.name === 'FastifyError' && typeof (err as { statusCode?: unknown }).statusCode === 'number'
}

/** One of the *_SCRIPT_FAILED errors above. */
export type ScriptFailure = new (options: { cause: unknown }) => Error

/**
 * Refusals of a Redis Cluster that mean "not run here": the slot moved or is moving (MOVED, ASK, TRYAGAIN),
 * the cluster cannot serve the slot (CLUSTERDOWN), ioredis gave up following such redirections, or its
 * auto-pipeline found its commands' slots on different nodes after the slot map changed (a failover) and
 * refused the pipeline before sending it. None of them ran the command.
 */
const CLUSTER_REFUSAL = /^(?:MOVED|ASK|TRYAGAIN|CLUSTERDOWN) |^Too many Cluster redirections|^All keys in the pipeline should belong to the same slots allocation group/

/**
 * Any Redis failure that is not one of our codes becomes a 503 the client can act on. Two kinds, told
 * apart because a client retries them differently:
 * - refused, nothing changed: Redis refusing a command (a ReplyError: out of memory, a key of the wrong
 *   type, READONLY from a demoted master, NOREPLICAS) becomes the given script's code; a cluster's
 *   redirections and CLUSTERDOWN become REDIS_RECONFIGURING.
 * - outcome unknown: everything else (a timeout, a connection closed under a sent command, Redis out of
 *   reach) is REDIS_UNAVAILABLE, whose message asks for a retry with the same Idempotency-Key.
 */
export function redisFailure (err: unknown, ScriptFailed: ScriptFailure = IssueScriptFailed): Error {
  if (isCatalogError(err)) return err
  const message = (err as Error)?.message ?? ''
  if (CLUSTER_REFUSAL.test(message)) return new RedisReconfiguring({ cause: err })
  if ((err as Error)?.name === 'ReplyError') return new ScriptFailed({ cause: err })
  return new RedisUnavailable({ cause: err })
}

/** Any database failure that is not one of our codes becomes DATABASE_UNAVAILABLE. */
export function databaseFailure (err: unknown): Error {
  if (isCatalogError(err)) return err
  return new DatabaseUnavailable({ cause: err })
}

// Errors Fastify or Node raise before a route runs (bad URLs, unknown media types, slow or malformed
// requests); src/plugins/error-handler.ts answers them with these codes instead of the framework's own.
export const InvalidUrl = createError('INVALID_REQUEST', 'The URL is not valid: a `%` must be followed by two hex digits (percent-encoding).', 400)
export const UriTooLong = createError('URI_TOO_LONG', 'A path segment is longer than %s characters. Check the URL (a userId has at most 128 characters).', 414)
export const UnsupportedMediaType = createError('UNSUPPORTED_MEDIA_TYPE', 'Send the body as JSON with `Content-Type: application/json`.', 415)
export const RequestTimeout = createError('REQUEST_TIMEOUT', 'The request did not arrive completely in time. Send the headers and the body at once.', 408)
export const HeadersTooLarge = createError('HEADERS_TOO_LARGE', 'The request line and headers are too large.', 431)
export const MalformedRequest = createError('INVALID_REQUEST', 'The request is not valid HTTP/1.1.', 400)
