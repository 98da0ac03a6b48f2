import { and, asc, desc, eq, isNull, sql } from 'drizzle-orm'
import type { Db } from '../client.js'
import { couponIssues, couponRevocations, failedIssueEvents } from '../schema.js'
import type { IssueEvent, RevokeEvent, UndecodableEntry } from '../../stream/events.js'

const iso = (ms: number) => new Date(ms).toISOString()
const arrayParam = <T>(values: T[]) => sql.param(values)

/**
 * Writes a batch of stream events atomically (one statement, or one transaction when there are revokes); idempotent, so a redelivered batch changes nothing.
 * Issues go in with one unnest-based INSERT (one statement whatever the batch size). A revocation is
 * kept as a fact and applied to every matching issue, including ones that arrive in a later batch.
 * Returns how many issue rows were new.
 */
export async function persistEvents (db: Db, issues: IssueEvent[], revokes: RevokeEvent[]): Promise<number> {
  // A batch of issues alone is one statement, atomic by itself: BEGIN and COMMIT around it would only
  // add two round trips per batch.
  if (revokes.length === 0) return insertIssues(db, issues)
  return db.transaction(async (tx) => {
    await tx.execute(sql`
      INSERT INTO ${couponRevocations} (coupon_id, user_id, revoked_at, stream_id)
      SELECT * FROM unnest(${arrayParam(revokes.map((r) => r.couponId))}::bigint[], ${arrayParam(revokes.map((r) => r.userId))}::text[],
                           ${arrayParam(revokes.map((r) => iso(r.at)))}::timestamptz[], ${arrayParam(revokes.map((r) => r.id))}::text[])
      ON CONFLICT (coupon_id, stream_id) DO NOTHING`)
    const inserted = await insertIssues(tx as unknown as Db, issues)
    await tx.execute(sql`
      UPDATE ${couponIssues} i SET revoked_at = r.revoked_at
      FROM unnest(${arrayParam(revokes.map((r) => r.couponId))}::bigint[], ${arrayParam(revokes.map((r) => r.userId))}::text[],
                  ${arrayParam(revokes.map((r) => iso(r.at)))}::timestamptz[]) AS r(coupon_id, user_id, revoked_at)
      WHERE i.coupon_id = r.coupon_id AND i.user_id = r.user_id AND i.revoked_at IS NULL AND i.created_at <= r.revoked_at`)
    return inserted
  })
}

/** One unnest-based INSERT for a batch of issue events; returns how many rows were new. */
async function insertIssues (db: Db, issues: IssueEvent[]): Promise<number> {
  if (issues.length === 0) return 0
  const couponIds = [...new Set(issues.map((e) => e.couponId))]
  // The per-row revocation lookup runs only when the batch's coupons have any revocation at all: the
  // EXISTS is uncorrelated, so Postgres evaluates it once per statement (an InitPlan), not per row.
  const result: any = await db.execute(sql`
    INSERT INTO ${couponIssues} (coupon_id, user_id, claim, created_at, stream_id, revoked_at)
    SELECT t.coupon_id, t.user_id, t.claim, t.created_at, t.stream_id,
           CASE WHEN (SELECT EXISTS (SELECT 1 FROM ${couponRevocations} r0 WHERE r0.coupon_id = ANY(${arrayParam(couponIds)}::bigint[])))
           THEN (SELECT min(r.revoked_at) FROM ${couponRevocations} r
                  WHERE r.coupon_id = t.coupon_id AND r.user_id = t.user_id AND r.revoked_at >= t.created_at) END
    FROM unnest(${arrayParam(issues.map((e) => e.couponId))}::bigint[], ${arrayParam(issues.map((e) => e.userId))}::text[],
                ${arrayParam(issues.map((e) => e.claim))}::int[], ${arrayParam(issues.map((e) => iso(e.at)))}::timestamptz[],
                ${arrayParam(issues.map((e) => e.id))}::text[]) AS t(coupon_id, user_id, claim, created_at, stream_id)
    ON CONFLICT (coupon_id, user_id, claim) DO NOTHING`)
  return Number(result.rowCount ?? result.affectedRows ?? 0)
}

export interface PersistedIssue {
  userId: string
  claim: number
  createdAt: Date
  revokedAt: Date | null
}

/** Every issue of a coupon, the input of a counter rebuild. */
export async function issuesOfCoupon (db: Db, couponId: number): Promise<PersistedIssue[]> {
  return db.select({
    userId: couponIssues.userId,
    claim: couponIssues.claim,
    createdAt: couponIssues.createdAt,
    revokedAt: couponIssues.revokedAt
  }).from(couponIssues).where(eq(couponIssues.couponId, couponId))
}

export async function issuesOfUser (db: Db, userId: string, couponId?: number) {
  return db.select({
    couponId: couponIssues.couponId,
    claim: couponIssues.claim,
    issuedAt: couponIssues.createdAt,
    revokedAt: couponIssues.revokedAt
  }).from(couponIssues)
    .where(couponId === undefined ? eq(couponIssues.userId, userId) : and(eq(couponIssues.userId, userId), eq(couponIssues.couponId, couponId)))
    .orderBy(asc(couponIssues.couponId), asc(couponIssues.claim))
}

export interface FailedEntry extends UndecodableEntry {
  deliveries: number
}

// jsonb and text refuse NUL; a poison entry must still be recordable.
const storable = (text: string) => text.replace(/\0/g, '\\u0000')
const storablePayload = (payload: Record<string, string>) =>
  Object.fromEntries(Object.entries(payload).map(([k, v]) => [storable(k), storable(v)]))

/** Parks entries that cannot be persisted; called before they are acknowledged. */
export async function recordFailedEvents (db: Db, entries: FailedEntry[]): Promise<void> {
  if (entries.length === 0) return
  await db.insert(failedIssueEvents).values(entries.map((e) => ({
    streamKey: e.streamKey,
    streamId: e.id,
    payload: storablePayload(e.payload),
    error: storable(e.error),
    deliveries: e.deliveries
  }))).onConflictDoNothing()
}

export async function listFailedEvents (db: Db, { includeRetried = false, limit = 100 } = {}) {
  return db.select().from(failedIssueEvents)
    .where(includeRetried ? undefined : isNull(failedIssueEvents.retriedAt))
    .orderBy(desc(failedIssueEvents.id)).limit(limit)
}

/** Parked entries of one stream not yet retried: their units were handed out, a rebuild must count them. */
export async function parkedEntriesOfStream (db: Db, streamKey: string): Promise<[id: string, fields: string[]][]> {
  const rows = await db.select({ streamId: failedIssueEvents.streamId, payload: failedIssueEvents.payload }).from(failedIssueEvents)
    .where(and(eq(failedIssueEvents.streamKey, streamKey), isNull(failedIssueEvents.retriedAt)))
  return rows.map((row) => [row.streamId, Object.entries(row.payload as Record<string, string>).flat()])
}

export async function findFailedEvent (db: Db, id: number) {
  const [row] = await db.select().from(failedIssueEvents).where(eq(failedIssueEvents.id, id))
  return row
}

export async function markFailedEventRetried (db: Db, id: number): Promise<void> {
  await db.update(failedIssueEvents).set({ retriedAt: new Date() }).where(eq(failedIssueEvents.id, id))
}
