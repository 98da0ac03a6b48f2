import { and, asc, desc, eq, isNotNull, isNull, sql, type SQL } from 'drizzle-orm'
import type { Db } from '../client.js'
import { couponIssues, couponRedemptions, couponRevocations, failedIssueEvents } from '../schema.js'
import type { IssueEvent, RedemptionEvent, RevokeEvent, UndecodableEntry, UnitRevokeEvent } from '../../stream/events.js'
import { eventData, outboxCtes } from '../../events/outbox.js'

const iso = (ms: number) => new Date(ms).toISOString()
const arrayParam = <T>(values: T[]) => sql.param(values)

/**
 * Writes a batch of stream events; idempotent, so a redelivered batch changes nothing. Returns how many
 * issue rows were new.
 *
 * Revocations are kept as facts ("this user's claims up to N are revoked") and applied to the rows
 * they name by a fix-up that each writer runs AFTER its own write committed. Two consumers may persist
 * an issue and its cancel in concurrent transactions, neither seeing the other's uncommitted row; but
 * whichever commits second starts its fix-up after both commits and so sees both (READ COMMITTED takes
 * a fresh snapshot per statement). A crash between commit and fix-up leaves the entries unacknowledged:
 * the redelivery runs the fix-up again. Costs one more statement per batch.
 *
 * `revokes` may hold one-unit revokes (the expiry job's returns): facts with `claim` and `reason` set,
 * announced as code.expired instead of issue.revoked.
 */
export async function persistEvents (db: Db, issues: IssueEvent[], revokes: (RevokeEvent | UnitRevokeEvent)[],
  codeOf: (unit: Pick<IssueEvent, 'couponId' | 'userId' | 'claim'>) => string | null = () => null,
  { announce = true }: { announce?: boolean } = {}): Promise<number> {
  if (issues.length === 0 && revokes.length === 0) return 0
  const cancel = (r: RevokeEvent | UnitRevokeEvent): r is RevokeEvent => r.type === 'revoke'
  // The code of each returned unit, for its code.expired event (the unit's row may not be persisted yet).
  const returns = revokes.filter((r): r is UnitRevokeEvent => !cancel(r))
  // One statement: facts, rows and the events announcing them (only those this statement inserted, see
  // outboxCtes) commit together. The fix-up always runs: whether a cancel exists
  // cannot be judged inside this statement (its snapshot may predate a cancel committed meanwhile); for
  // users nobody cancelled it is one index probe per pair and takes no lock on coupon_issues.
  const result: any = await db.execute(sql`
    WITH facts AS (
      INSERT INTO ${couponRevocations} (coupon_id, user_id, revoked_at, stream_id, up_to_claim, units, idempotency_key, claim, reason)
      SELECT * FROM unnest(${arrayParam(revokes.map((r) => r.couponId))}::bigint[], ${arrayParam(revokes.map((r) => r.userId))}::text[],
                           ${arrayParam(revokes.map((r) => iso(r.at)))}::timestamptz[], ${arrayParam(revokes.map((r) => r.id))}::text[],
                           ${arrayParam(revokes.map((r) => cancel(r) ? r.upToClaim ?? null : null))}::int[], ${arrayParam(revokes.map((r) => cancel(r) ? r.units : 1))}::int[],
                           ${arrayParam(revokes.map((r) => cancel(r) ? r.idempotencyKey ?? null : null))}::text[],
                           ${arrayParam(revokes.map((r) => cancel(r) ? null : r.claim))}::int[], ${arrayParam(revokes.map((r) => cancel(r) ? null : r.reason))}::text[])
      ON CONFLICT (coupon_id, stream_id) DO NOTHING
      RETURNING coupon_id, user_id, units, up_to_claim, revoked_at, stream_id, claim, reason
    ), unit_codes AS (
      SELECT * FROM unnest(${arrayParam(returns.map((r) => r.id))}::text[], ${arrayParam(returns.map((r) => codeOf(r)))}::text[]) AS u(stream_id, code)
    ), inserted AS (
      INSERT INTO ${couponIssues} (coupon_id, user_id, claim, created_at, stream_id, idempotency_key, code)
      SELECT * FROM unnest(${arrayParam(issues.map((e) => e.couponId))}::bigint[], ${arrayParam(issues.map((e) => e.userId))}::text[],
                           ${arrayParam(issues.map((e) => e.claim))}::int[], ${arrayParam(issues.map((e) => iso(e.at)))}::timestamptz[],
                           ${arrayParam(issues.map((e) => e.id))}::text[], ${arrayParam(issues.map((e) => e.idempotencyKey ?? null))}::text[],
                           ${arrayParam(issues.map(codeOf))}::text[])
      ON CONFLICT (coupon_id, user_id, claim) DO NOTHING
      RETURNING coupon_id, user_id, claim, created_at, stream_id, code
    ), announced AS (
      -- EVENTS_ENABLED off: nothing announced (the outbox doubles this statement's cost, docs/benchmarks.md).
      SELECT * FROM (
        SELECT 'issue.created' AS type, i.coupon_id, i.stream_id AS key, ${eventData.issueCreated('i')} AS data FROM inserted i
        UNION ALL
        SELECT 'issue.revoked', f.coupon_id, f.stream_id, ${eventData.issueRevoked('f')} FROM facts f WHERE f.claim IS NULL
        UNION ALL
        SELECT 'code.expired', f.coupon_id, f.stream_id, ${eventData.codeExpired('f', 'u')}
        FROM facts f JOIN unit_codes u ON u.stream_id = f.stream_id WHERE f.claim IS NOT NULL AND f.reason = 'expired'
      ) AS a WHERE ${sql.raw(announce ? 'true' : 'false')}
    ), ${outboxCtes({ keysAreStreamIds: true })}
    SELECT (SELECT count(*) FROM inserted)::int AS inserted, (SELECT count(*) FROM facts)::int AS facts`)
  const row = (result.rows ?? result)[0] as { inserted: number }
  await applyRevocations(db, [...issues, ...revokes])
  return Number(row.inserted)
}

/** Marks revoked every row of these events' (coupon, user) pairs that a recorded cancel or one-unit revoke names. */
async function applyRevocations (db: Db, events: (IssueEvent | RevokeEvent | UnitRevokeEvent)[]): Promise<void> {
  const pairs = new Map<string, [number, string]>()
  for (const e of events) pairs.set(`${e.couponId}|${e.userId}`, [e.couponId, e.userId])
  const list = [...pairs.values()]
  // apply_coupon_revocations (migrations/0006_expired_to_stock.sql) locks rows only when a pair has a revocation.
  await db.execute(sql`SELECT apply_coupon_revocations(${arrayParam(list.map(([c]) => c))}::bigint[], ${arrayParam(list.map(([, u]) => u))}::text[])`)
}

/**
 * Writes redemption and rollback events as facts (idempotent: the stream id), then brings the
 * redeemed_at / order_id of every unit they or `issues` touch to the unit's last fact. The one place
 * where redemptions reach Postgres (an outbox of redemption.created / redemption.rolled_back events
 * belongs next to the INSERT). Returns how many facts were new.
 *
 * The fix-up runs after the facts committed, in its own transaction that first locks the units' rows
 * (in id order) and only then reads the facts: a state can go back and forth (redeem, rollback,
 * redeem), so a writer that read before another committed must never write after it. Whichever
 * writer locks second reads after the other's facts and fix-up committed (READ COMMITTED takes a fresh
 * snapshot per statement), so the last write is always computed from every fact. An issue row
 * persisted after its redemption (a parked issue retried) is fixed up by the issue's own batch.
 */
export async function persistRedemptions (db: Db, redemptions: RedemptionEvent[], issues: IssueEvent[] = [], { announce = true }: { announce?: boolean } = {}): Promise<number> {
  if (redemptions.length === 0 && issues.length === 0) return 0
  let facts = 0
  if (redemptions.length > 0) {
    // The facts and the events announcing them (only those this statement inserted) in one statement,
    // as persistEvents does for issues.
    const result: any = await db.execute(sql`
      WITH facts AS (
        INSERT INTO ${couponRedemptions} (coupon_id, user_id, claim, kind, order_id, at, stream_id)
        SELECT * FROM unnest(${arrayParam(redemptions.map((e) => e.couponId))}::bigint[], ${arrayParam(redemptions.map((e) => e.userId))}::text[],
                             ${arrayParam(redemptions.map((e) => e.claim))}::int[], ${arrayParam(redemptions.map((e) => e.type))}::text[],
                             ${arrayParam(redemptions.map((e) => e.orderId))}::text[], ${arrayParam(redemptions.map((e) => iso(e.at)))}::timestamptz[],
                             ${arrayParam(redemptions.map((e) => e.id))}::text[])
        ON CONFLICT (coupon_id, stream_id) DO NOTHING
        RETURNING coupon_id, user_id, claim, kind, order_id, at, stream_id
      ), announced AS (
        SELECT CASE WHEN r.kind = 'redeem' THEN 'redemption.created' ELSE 'redemption.rolled_back' END AS type, r.coupon_id, r.stream_id AS key,
               ${eventData.redemption('r', 'i')} AS data
        FROM facts r LEFT JOIN ${couponIssues} i ON i.coupon_id = r.coupon_id AND i.user_id = r.user_id AND i.claim = r.claim
        WHERE ${sql.raw(announce ? 'true' : 'false')}
      ), ${outboxCtes({ keysAreStreamIds: true })}
      SELECT (SELECT count(*) FROM facts)::int AS facts`)
    facts = Number((result.rows ?? result)[0].facts)
  }
  const units = new Map<string, [number, string, number]>()
  for (const e of redemptions) units.set(`${e.couponId}|${e.userId}|${e.claim}`, [e.couponId, e.userId, e.claim])
  if (issues.length > 0) {
    // Most issued units were never redeemed: one index probe finds the few that were (a redemption
    // persisted before its issue), so a batch of issues locks nothing.
    const probe: any = await db.execute(sql`
      SELECT DISTINCT coupon_id, user_id, claim FROM ${couponRedemptions}
      WHERE (coupon_id, user_id, claim) IN (SELECT * FROM unnest(${arrayParam(issues.map((e) => e.couponId))}::bigint[],
        ${arrayParam(issues.map((e) => e.userId))}::text[], ${arrayParam(issues.map((e) => e.claim))}::int[]))`)
    for (const r of probe.rows ?? probe) units.set(`${r.coupon_id}|${r.user_id}|${r.claim}`, [Number(r.coupon_id), r.user_id, Number(r.claim)])
  }
  if (units.size === 0) return facts
  const list = [...units.values()]
  const touched = sql`SELECT * FROM unnest(${arrayParam(list.map(([c]) => c))}::bigint[], ${arrayParam(list.map(([, u]) => u))}::text[], ${arrayParam(list.map(([, , n]) => n))}::int[])`
  await db.transaction(async (tx) => {
    await tx.execute(sql`SELECT 1 FROM ${couponIssues} WHERE (coupon_id, user_id, claim) IN (${touched}) ORDER BY id FOR UPDATE`)
    await tx.execute(sql`
      UPDATE ${couponIssues} AS i
      SET redeemed_at = CASE WHEN last.kind = 'redeem' THEN last.at END, order_id = CASE WHEN last.kind = 'redeem' THEN last.order_id END
      FROM (
        SELECT DISTINCT ON (coupon_id, user_id, claim) coupon_id, user_id, claim, kind, at, order_id
        FROM ${couponRedemptions}
        WHERE (coupon_id, user_id, claim) IN (${touched})
        ORDER BY coupon_id, user_id, claim, split_part(stream_id, '-', 1)::bigint DESC, split_part(stream_id, '-', 2)::bigint DESC
      ) AS last
      WHERE i.coupon_id = last.coupon_id AND i.user_id = last.user_id AND i.claim = last.claim
        AND (i.redeemed_at IS DISTINCT FROM CASE WHEN last.kind = 'redeem' THEN last.at END
          OR i.order_id IS DISTINCT FROM CASE WHEN last.kind = 'redeem' THEN last.order_id END)`)
  })
  return facts
}

export interface PersistedRedemption {
  userId: string
  claim: number
  kind: 'redeem' | 'rollback'
  orderId: string
  at: Date
  streamId: string
}

/** Every redemption fact of a coupon, an input of a counter rebuild. */
export async function redemptionsOfCoupon (db: Db, couponId: number): Promise<PersistedRedemption[]> {
  const rows = await db.select({
    userId: couponRedemptions.userId,
    claim: couponRedemptions.claim,
    kind: couponRedemptions.kind,
    orderId: couponRedemptions.orderId,
    at: couponRedemptions.at,
    streamId: couponRedemptions.streamId
  }).from(couponRedemptions).where(eq(couponRedemptions.couponId, couponId))
  return rows as PersistedRedemption[]
}

export interface PersistedIssue {
  userId: string
  claim: number
  createdAt: Date
  revokedAt: Date | null
  streamId: string
  idempotencyKey: string | null
}

/** Every issue of a coupon, the input of a counter rebuild. */
export async function issuesOfCoupon (db: Db, couponId: number): Promise<PersistedIssue[]> {
  return db.select({
    userId: couponIssues.userId,
    claim: couponIssues.claim,
    createdAt: couponIssues.createdAt,
    revokedAt: couponIssues.revokedAt,
    streamId: couponIssues.streamId,
    idempotencyKey: couponIssues.idempotencyKey
  }).from(couponIssues).where(eq(couponIssues.couponId, couponId))
}

export type PersistedRevocation = Pick<typeof couponRevocations.$inferSelect, 'userId' | 'revokedAt' | 'streamId' | 'upToClaim' | 'units' | 'idempotencyKey'> & {
  /** set: a one-unit revoke of exactly this claim (returned at expiry); absent or null: a cancel */
  claim?: number | null
}

/** Every cancel and one-unit revoke of a coupon recorded in Postgres, the other input of a counter rebuild. */
export async function revocationsOfCoupon (db: Db, couponId: number): Promise<PersistedRevocation[]> {
  return db.select({
    userId: couponRevocations.userId,
    revokedAt: couponRevocations.revokedAt,
    streamId: couponRevocations.streamId,
    upToClaim: couponRevocations.upToClaim,
    units: couponRevocations.units,
    idempotencyKey: couponRevocations.idempotencyKey,
    claim: couponRevocations.claim
  }).from(couponRevocations).where(eq(couponRevocations.couponId, couponId))
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

export type IssueStatus = 'active' | 'revoked'

/** Where a page of the winners list ends: the last row's issue moment and id (the keyset). */
export interface IssueCursor { issuedAtMs: number, id: number }

export interface WinnerRow {
  id: number
  userId: string
  claim: number
  issuedAt: Date
  revokedAt: Date | null
  /** 'cancelled' or 'expired' (returned to stock at expiry); null while active */
  revokeReason: string | null
  redeemedAt: Date | null
  orderId: string | null
  /** null only for rows persisted before codes existed (the route derives it) */
  code: string | null
}

/**
 * One page of a coupon's issues in issue order (created_at, then id), after `after`; served by the
 * coupon_issues_coupon_created index, so a page costs the same on page 1 and page 1,000.
 */
export async function issuesPage (db: Db, couponId: number, { status, after, limit }: { status?: IssueStatus, after?: IssueCursor, limit: number }): Promise<WinnerRow[]> {
  const conditions: SQL[] = [eq(couponIssues.couponId, couponId)]
  if (status === 'active') conditions.push(isNull(couponIssues.revokedAt))
  if (status === 'revoked') conditions.push(isNotNull(couponIssues.revokedAt))
  if (after) conditions.push(sql`(${couponIssues.createdAt}, ${couponIssues.id}) > (${new Date(after.issuedAtMs).toISOString()}::timestamptz, ${after.id})`)
  return db.select({
    id: couponIssues.id,
    userId: couponIssues.userId,
    claim: couponIssues.claim,
    issuedAt: couponIssues.createdAt,
    revokedAt: couponIssues.revokedAt,
    revokeReason: couponIssues.revokeReason,
    redeemedAt: couponIssues.redeemedAt,
    orderId: couponIssues.orderId,
    code: couponIssues.code
  }).from(couponIssues).where(and(...conditions)).orderBy(asc(couponIssues.createdAt), asc(couponIssues.id)).limit(limit)
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
    .where(includeRetried ? undefined : and(isNull(failedIssueEvents.retriedAt), isNull(failedIssueEvents.discardedAt)))
    .orderBy(desc(failedIssueEvents.id)).limit(limit)
}

/**
 * Parked entries of one stream neither retried nor discarded: their units were handed out, a rebuild
 * must count them.
 */
export async function parkedEntriesOfStream (db: Db, streamKey: string): Promise<[id: string, fields: string[]][]> {
  const rows = await db.select({ streamId: failedIssueEvents.streamId, payload: failedIssueEvents.payload }).from(failedIssueEvents)
    .where(and(eq(failedIssueEvents.streamKey, streamKey), isNull(failedIssueEvents.retriedAt), isNull(failedIssueEvents.discardedAt)))
  return rows.map((row) => [row.streamId, Object.entries(row.payload as Record<string, string>).flat()])
}

/** A parked entry; with `forUpdate`, locked until the caller's transaction ends (retry and discard serialize on it). */
export async function findFailedEvent (db: Db, id: number, forUpdate = false) {
  const query = db.select().from(failedIssueEvents).where(eq(failedIssueEvents.id, id))
  const [row] = forUpdate ? await query.for('update') : await query
  return row
}

export async function markFailedEventRetried (db: Db, id: number): Promise<void> {
  await db.update(failedIssueEvents).set({ retriedAt: new Date() }).where(eq(failedIssueEvents.id, id))
}

/** Records that an admin gave the parked entry up; returns the moment. */
export async function markFailedEventDiscarded (db: Db, id: number, reason: string | null): Promise<Date> {
  const discardedAt = new Date()
  await db.update(failedIssueEvents).set({ discardedAt, discardReason: reason }).where(eq(failedIssueEvents.id, id))
  return discardedAt
}
