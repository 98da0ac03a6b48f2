import { asc, eq, gt, inArray, sql } from 'drizzle-orm'
import type { Db } from '../client.js'
import { coupons, databaseIdentity, type Discount } from '../schema.js'
import { DEFAULT_CODE_LENGTH, newCodeSecret, type CodeSettings } from '../../issuing/codes.js'

export type Coupon = typeof coupons.$inferSelect

export interface NewCoupon {
  name: string
  totalQuantity: number
  perUserLimit?: number
  startsAt?: Date
  endsAt?: Date | null
  discount?: Discount | null
  metadata?: Record<string, string | number | boolean | null> | null
  codePrefix?: string
  codeLength?: number
  validFor?: string | null
  validUntil?: Date | null
  /** POST /coupons' Idempotency-Key and the digest of its body (routes/coupons.ts) */
  creation?: { key: string, request: string }
  returnExpiredToStock?: boolean
}

/**
 * Inserts the campaign; with `input.creation`, undefined when a campaign with that key exists already
 * (a concurrent twin waits for the first insert to commit or abort, then gets undefined or inserts).
 */
export async function insertCoupon (db: Db, input: NewCoupon & { creation: NonNullable<NewCoupon['creation']> }): Promise<Coupon | undefined>
export async function insertCoupon (db: Db, input: NewCoupon): Promise<Coupon>
export async function insertCoupon (db: Db, input: NewCoupon): Promise<Coupon | undefined> {
  const [row] = await db.insert(coupons).values({
    name: input.name,
    totalQuantity: input.totalQuantity,
    perUserLimit: input.perUserLimit ?? 1,
    ...(input.startsAt ? { startsAt: input.startsAt } : {}),
    endsAt: input.endsAt ?? null,
    discount: input.discount ?? null,
    metadata: input.metadata ?? null,
    codeSecret: newCodeSecret(),
    codePrefix: input.codePrefix ?? '',
    codeLength: input.codeLength ?? DEFAULT_CODE_LENGTH,
    validFor: input.validFor ?? null,
    validUntil: input.validUntil ?? null,
    returnExpiredToStock: input.returnExpiredToStock ?? false,
    creationKey: input.creation?.key ?? null,
    creationRequest: input.creation?.request ?? null
  }).onConflictDoNothing({ target: coupons.creationKey }).returning()
  return row
}

/** The campaign created with this Idempotency-Key, if any. */
export async function findCouponByCreationKey (db: Db, key: string): Promise<Coupon | undefined> {
  const [row] = await db.select().from(coupons).where(eq(coupons.creationKey, key))
  return row
}

/**
 * The coupon row; with `lock`, row-locked until the caller's transaction ends: 'update' serializes
 * admin changes, 'share' keeps them out while a counter rebuild reads and installs the row.
 */
export async function findCoupon (db: Db, id: number, lock?: 'update' | 'share'): Promise<Coupon | undefined> {
  const query = db.select().from(coupons).where(eq(coupons.id, id))
  const [row] = lock ? await query.for(lock) : await query
  return row
}

export interface CouponChanges {
  totalQuantity?: number
  startsAt?: Date
  endsAt?: Date | null
  paused?: boolean
  returnExpiredToStock?: boolean
  /** null clears; absent keeps */
  discount?: Discount | null
  metadata?: Record<string, string | number | boolean | null> | null
}

export async function updateCoupon (db: Db, id: number, changes: CouponChanges): Promise<Coupon | undefined> {
  const [row] = await db.update(coupons).set({ ...changes, updatedAt: new Date() }).where(eq(coupons.id, id)).returning()
  return row
}

/**
 * The code settings of those among `ids` that exist; the consumer uses it to tell an unknown coupon from
 * a database fault, and to compute each persisted unit's code (src/issuing/codes.ts).
 */
export async function codeSettingsOf (db: Db, ids: number[]): Promise<Map<number, CodeSettings>> {
  if (ids.length === 0) return new Map()
  const rows = await db.select({ couponId: coupons.id, codeSecret: coupons.codeSecret, codePrefix: coupons.codePrefix, codeLength: coupons.codeLength })
    .from(coupons).where(inArray(coupons.id, ids))
  return new Map(rows.map((r) => [r.couponId, r]))
}

export interface CouponWithCounts extends Coupon {
  persistedIssued: number
}

export async function listCoupons (db: Db, { afterId, limit }: { afterId: number, limit: number }): Promise<CouponWithCounts[]> {
  const rows = await db.select({
    coupon: coupons,
    // Spelled out: inside a select list drizzle renders columns unqualified, which a subquery would misread.
    persistedIssued: sql<number>`(SELECT count(*)::int FROM coupon_issues i WHERE i.coupon_id = coupons.id AND i.revoked_at IS NULL)`
  }).from(coupons).where(gt(coupons.id, afterId)).orderBy(asc(coupons.id)).limit(limit)
  return rows.map((r) => ({ ...r.coupon, persistedIssued: Number(r.persistedIssued) }))
}

/** The id of this database, created on first use. */
export async function databaseId (db: Db): Promise<string> {
  await db.insert(databaseIdentity).values({}).onConflictDoNothing()
  const [row] = await db.select({ id: databaseIdentity.id }).from(databaseIdentity)
  return row!.id
}
