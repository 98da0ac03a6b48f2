import { sql } from 'drizzle-orm'
import { bigint, boolean, check, customType, index, integer, jsonb, pgTable, text, timestamp, uniqueIndex, uuid } from 'drizzle-orm/pg-core'

/** percent: 0 < value <= 100; amount: value in the currency's minor units (cents), ISO 4217 currency */
export type Discount = { type: 'percent', value: number } | { type: 'amount', value: number, currency: string }

const moment = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' })

export const coupons = pgTable('coupons', {
  id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
  name: text('name').notNull(),
  totalQuantity: integer('total_quantity').notNull(),
  perUserLimit: integer('per_user_limit').notNull().default(1),
  startsAt: moment('starts_at').notNull().defaultNow(),
  endsAt: moment('ends_at'),
  /** while true, issue requests answer 409 PAUSED (redemption and cancels go on) */
  paused: boolean('paused').notNull().default(false),
  /** what the coupon is worth at checkout, echoed so checkout needs no second lookup (routes/schemas.ts: discount) */
  discount: jsonb('discount').$type<Discount>(),
  /** the shop's own small key/value data about the campaign, echoed as given */
  metadata: jsonb('metadata').$type<Record<string, string | number | boolean | null>>(),
  /**
   * Key of the codes' MAC (src/issuing/codes.ts): a unit's code is derived from it, the user and the
   * claim, in issue.lua and in Node alike. Never leaves the service. Rows older than the column got a
   * random one from gen_random_uuid() (a strong random source since Postgres 13); new rows get 32
   * bytes from node:crypto.
   */
  codeSecret: text('code_secret').notNull().default(sql`replace(gen_random_uuid()::text, '-', '')`),
  /** printed before every code of the campaign ('' = none) */
  codePrefix: text('code_prefix').notNull().default(''),
  /** characters of the unguessable part of each code */
  codeLength: integer('code_length').notNull().default(12),
  /** ISO 8601 duration each unit's code stays redeemable after its issue (src/issuing/validity.ts) */
  validFor: text('valid_for'),
  /** or one moment after which no code of the campaign is redeemable */
  validUntil: moment('valid_until'),
  /**
   * The Idempotency-Key the campaign was created with, and a digest of that request's body: a retried
   * POST /coupons (its 503 may come after the row committed) finds the campaign instead of making a second.
   */
  creationKey: text('creation_key'),
  creationRequest: text('creation_request'),
  /**
   * The expiry job (src/issuing/expiry.ts) returns expired, unredeemed units to stock while the campaign
   * has not ended: the holder loses the unit, its code answers "expired", and code.expired is announced.
   */
  returnExpiredToStock: boolean('return_expired_to_stock').notNull().default(false),
  createdAt: moment('created_at').notNull().defaultNow(),
  updatedAt: moment('updated_at').notNull().defaultNow()
}, (t) => [
  uniqueIndex('coupons_creation_key').on(t.creationKey),
  check('coupons_total_quantity_positive', sql`${t.totalQuantity} > 0`),
  check('coupons_per_user_limit_positive', sql`${t.perUserLimit} > 0`),
  check('coupons_window_ordered', sql`${t.endsAt} IS NULL OR ${t.endsAt} > ${t.startsAt}`),
  check('coupons_code_length', sql`${t.codeLength} BETWEEN 12 AND 32`),
  check('coupons_code_prefix', sql`${t.codePrefix} ~ '^[A-Z0-9-]{0,12}$'`),
  check('coupons_one_validity', sql`${t.validFor} IS NULL OR ${t.validUntil} IS NULL`)
])

/**
 * One row per unit handed out. `claim` is the user's n-th claim of this coupon (1 unless the coupon
 * allows more per user or the user cancelled and claimed again), so (coupon_id, user_id, claim) is the
 * identity of an issue and a redelivered event inserts nothing.
 */
export const couponIssues = pgTable('coupon_issues', {
  id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
  /**
   * Always a coupon's id, but not by a foreign key: its per-row check (a look-up and a row lock on the
   * coupon for every inserted issue) cost Postgres 3-6 µs per persisted issue. Migration 0009 checks each
   * INSERT or UPDATE statement's rows at once (a trigger on the statement's new rows) and refuses deleting
   * or truncating coupons, which nothing does; so no issue can name a missing coupon, as before.
   */
  couponId: bigint('coupon_id', { mode: 'number' }).notNull(),
  userId: text('user_id').notNull(),
  claim: integer('claim').notNull().default(1),
  /** The moment of issue, taken from Redis TIME inside the issue script. */
  createdAt: moment('created_at').notNull(),
  persistedAt: moment('persisted_at').notNull().defaultNow(),
  streamId: text('stream_id').notNull(),
  revokedAt: moment('revoked_at'),
  /** The Idempotency-Key the claim was made with, so a counter rebuild can still replay it. */
  idempotencyKey: text('idempotency_key'),
  /**
   * The unit's redeemable code (src/issuing/codes.ts); null only on rows persisted before codes existed.
   * Not indexed: nothing looks a unit up by its code here (GET /codes/:code and redemptions read the
   * coupon's codes hash in Redis, found from the code's tail), and codes are unique by construction
   * (issue.lua skips a mac already taken; (coupon, user, claim) is unique below). The unique index it had
   * cost Postgres about 4 µs per persisted issue, a random-key B-tree insert (docs/benchmarks.md).
   */
  code: text('code'),
  /**
   * The unit's current redemption, from its last event in coupon_redemptions (null when never redeemed or
   * rolled back); set by the consumer's fix-up (queries/issues.ts), whatever order the events arrive in.
   */
  redeemedAt: moment('redeemed_at'),
  orderId: text('order_id'),
  /**
   * Why the unit was taken back (null while active): 'cancelled' (a cancel of the holder) or 'expired'
   * (returned to stock at expiry by the expiry job). Set with revoked_at by apply_coupon_revocations.
   */
  revokeReason: text('revoke_reason')
}, (t) => [
  uniqueIndex('coupon_issues_coupon_user_claim').on(t.couponId, t.userId, t.claim),
  index('coupon_issues_user').on(t.userId),
  // The winners list in issue order, page by page (keyset on created_at, id).
  index('coupon_issues_coupon_created').on(t.couponId, t.createdAt, t.id)
])

/**
 * Cancellations as facts, so a revoke persisted before its issue still marks that issue. A cancel
 * revokes exactly the user's claims numbered up to `up_to_claim` (claim numbers only grow, so a claim
 * made after the cancel is never hit, even within the same millisecond). Rows written before that
 * column existed have it null and fall back to comparing moments. A row with `claim` set is a one-unit
 * revocation instead (the expiry job's return of that claim), with its `reason`.
 */
export const couponRevocations = pgTable('coupon_revocations', {
  couponId: bigint('coupon_id', { mode: 'number' }).notNull().references(() => coupons.id),
  userId: text('user_id').notNull(),
  revokedAt: moment('revoked_at').notNull(),
  streamId: text('stream_id').notNull(),
  upToClaim: integer('up_to_claim'),
  units: integer('units'),
  idempotencyKey: text('idempotency_key'),
  /**
   * A ONE-UNIT revocation (the expiry job returned this claim to stock): exactly this claim, never a
   * prefix; up_to_claim is null then. Null for a cancel.
   */
  claim: integer('claim'),
  /** why a one-unit revocation happened ('expired'); null for a cancel */
  reason: text('reason')
}, (t) => [
  uniqueIndex('coupon_revocations_coupon_stream').on(t.couponId, t.streamId),
  index('coupon_revocations_coupon_user').on(t.couponId, t.userId),
  check('coupon_revocations_one_unit', sql`${t.claim} IS NULL OR (${t.upToClaim} IS NULL AND ${t.reason} IS NOT NULL)`)
])

/**
 * Every redemption and rollback of a unit, as facts (the history a shop's support reads). A unit's current
 * state is its last fact by stream id; the stream id makes a redelivered event insert nothing.
 */
export const couponRedemptions = pgTable('coupon_redemptions', {
  couponId: bigint('coupon_id', { mode: 'number' }).notNull().references(() => coupons.id),
  userId: text('user_id').notNull(),
  claim: integer('claim').notNull(),
  /** 'redeem' or 'rollback' */
  kind: text('kind').notNull(),
  orderId: text('order_id').notNull(),
  /** Redis TIME inside redeem.lua / rollback.lua */
  at: moment('at').notNull(),
  streamId: text('stream_id').notNull(),
  persistedAt: moment('persisted_at').notNull().defaultNow()
}, (t) => [
  uniqueIndex('coupon_redemptions_coupon_stream').on(t.couponId, t.streamId),
  index('coupon_redemptions_unit').on(t.couponId, t.userId, t.claim),
  check('coupon_redemptions_kind', sql`${t.kind} IN ('redeem', 'rollback')`)
])

/** Stream entries that could not be persisted; kept with their payload so an admin can retry them. */
export const failedIssueEvents = pgTable('failed_issue_events', {
  id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
  streamKey: text('stream_key').notNull(),
  streamId: text('stream_id').notNull(),
  payload: jsonb('payload').notNull(),
  error: text('error').notNull(),
  deliveries: integer('deliveries').notNull(),
  failedAt: moment('failed_at').notNull().defaultNow(),
  retriedAt: moment('retried_at'),
  /** An admin gave the entry up: its unit went back to stock and it no longer counts as issued. */
  discardedAt: moment('discarded_at'),
  discardReason: text('discard_reason')
}, (t) => [
  uniqueIndex('failed_issue_events_stream_entry').on(t.streamKey, t.streamId)
])

/**
 * One row naming this database. Redis remembers which database its keys belong to, so a second
 * database (a reset, another environment) pointed at the same REDIS_PREFIX is refused instead of
 * silently sharing counters with coupon ids that mean something else.
 */
export const databaseIdentity = pgTable('database_identity', {
  singleton: boolean('singleton').primaryKey().default(true),
  id: uuid('id').notNull().defaultRandom(),
  createdAt: moment('created_at').notNull().defaultNow()
}, (t) => [
  check('database_identity_one_row', sql`${t.singleton}`)
])

/** Postgres' 64-bit transaction id (pg_current_xact_id()); the event feed orders by it (src/events/feed.ts). */
const xid8 = customType<{ data: string, driverData: string }>({ dataType: () => 'xid8' })

/**
 * The outbox: one row per event (issue.created, issue.revoked, coupon.sold_out, ...), written in the same
 * statement or transaction as the fact it announces, so an event exists iff its fact is committed.
 * `id` is derived from what the event announces (src/events/outbox.ts: eventId), so a redelivered stream
 * batch finds its event already there instead of making a second one with another id.
 */
export const events = pgTable('events', {
  id: text('id').primaryKey(),
  /** Insertion order inside one transaction; the feed's tie-break after tx_id. */
  seq: bigint('seq', { mode: 'number' }).notNull().generatedAlwaysAsIdentity(),
  /** The writing transaction: the feed serves an event only once every smaller transaction id has ended. */
  txId: xid8('tx_id').notNull().default(sql`pg_current_xact_id()`),
  type: text('type').notNull(),
  couponId: bigint('coupon_id', { mode: 'number' }),
  data: jsonb('data').notNull(),
  createdAt: moment('created_at').notNull().defaultNow()
}, (t) => [
  index('events_feed').on(t.txId, t.seq)
])

/** Endpoints the admin registered; `secret` signs every delivery and is shown once, at creation. */
export const webhooks = pgTable('webhooks', {
  id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
  url: text('url').notNull(),
  eventTypes: text('event_types').array().notNull(),
  secret: text('secret').notNull(),
  createdAt: moment('created_at').notNull().defaultNow(),
  /** Deleted webhooks keep their row (and delivery history) but get nothing new. */
  deletedAt: moment('deleted_at')
})

/**
 * One row per (webhook, event): the delivery's state. A delivery is leased by one instance at a time
 * (`lease_until`, `lease_token`); a lease that outlives its holder (killed instance) expires and the
 * delivery is taken again.
 */
export const webhookDeliveries = pgTable('webhook_deliveries', {
  id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
  webhookId: bigint('webhook_id', { mode: 'number' }).notNull().references(() => webhooks.id),
  eventId: text('event_id').notNull().references(() => events.id),
  /** pending (waiting or in flight), delivered, failed (gave up), cancelled (webhook deleted) */
  status: text('status').notNull().default('pending'),
  attempts: integer('attempts').notNull().default(0),
  nextAttemptAt: moment('next_attempt_at').notNull().defaultNow(),
  /**
   * Retries go on until WEBHOOK_RETRY_FOR_MS after this moment (then the delivery is marked failed);
   * a redeliver starts the window again.
   */
  retrySince: moment('retry_since').notNull().defaultNow(),
  leaseUntil: moment('lease_until'),
  leaseToken: uuid('lease_token'),
  lastAttemptAt: moment('last_attempt_at'),
  /** The receiver's HTTP status of the last attempt, null when it never answered (timeout, connection error). */
  lastStatus: integer('last_status'),
  lastError: text('last_error'),
  deliveredAt: moment('delivered_at'),
  createdAt: moment('created_at').notNull().defaultNow()
}, (t) => [
  uniqueIndex('webhook_deliveries_webhook_event').on(t.webhookId, t.eventId),
  index('webhook_deliveries_due').on(t.nextAttemptAt).where(sql`${t.status} = 'pending'`),
  index('webhook_deliveries_webhook').on(t.webhookId, t.id),
  check('webhook_deliveries_status', sql`${t.status} IN ('pending', 'delivered', 'failed', 'cancelled')`)
])
