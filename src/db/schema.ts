import { sql } from 'drizzle-orm'
import { bigint, boolean, check, index, integer, jsonb, pgTable, text, timestamp, uniqueIndex, uuid } from 'drizzle-orm/pg-core'

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
  createdAt: moment('created_at').notNull().defaultNow(),
  updatedAt: moment('updated_at').notNull().defaultNow()
}, (t) => [
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
  couponId: bigint('coupon_id', { mode: 'number' }).notNull().references(() => coupons.id),
  userId: text('user_id').notNull(),
  claim: integer('claim').notNull().default(1),
  /** The moment of issue, taken from Redis TIME inside the issue script. */
  createdAt: moment('created_at').notNull(),
  persistedAt: moment('persisted_at').notNull().defaultNow(),
  streamId: text('stream_id').notNull(),
  revokedAt: moment('revoked_at'),
  /** The Idempotency-Key the claim was made with, so a counter rebuild can still replay it. */
  idempotencyKey: text('idempotency_key'),
  /** The unit's redeemable code (src/issuing/codes.ts); null only on rows persisted before codes existed. */
  code: text('code'),
  /**
   * The unit's current redemption, from its last event in coupon_redemptions (null when never redeemed or
   * rolled back); set by the consumer's fix-up (queries/issues.ts), whatever order the events arrive in.
   */
  redeemedAt: moment('redeemed_at'),
  orderId: text('order_id')
}, (t) => [
  uniqueIndex('coupon_issues_code').on(t.code),
  uniqueIndex('coupon_issues_coupon_user_claim').on(t.couponId, t.userId, t.claim),
  index('coupon_issues_user').on(t.userId),
  // The winners list in issue order, page by page (keyset on created_at, id).
  index('coupon_issues_coupon_created').on(t.couponId, t.createdAt, t.id)
])

/**
 * Cancellations as facts, so a revoke persisted before its issue still marks that issue. A cancel
 * revokes exactly the user's claims numbered up to `up_to_claim` (claim numbers only grow, so a claim
 * made after the cancel is never hit, even within the same millisecond). Rows written before that
 * column existed have it null and fall back to comparing moments.
 */
export const couponRevocations = pgTable('coupon_revocations', {
  couponId: bigint('coupon_id', { mode: 'number' }).notNull().references(() => coupons.id),
  userId: text('user_id').notNull(),
  revokedAt: moment('revoked_at').notNull(),
  streamId: text('stream_id').notNull(),
  upToClaim: integer('up_to_claim'),
  units: integer('units'),
  idempotencyKey: text('idempotency_key')
}, (t) => [
  uniqueIndex('coupon_revocations_coupon_stream').on(t.couponId, t.streamId),
  index('coupon_revocations_coupon_user').on(t.couponId, t.userId)
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
