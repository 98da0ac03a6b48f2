// The outbox: every event the service announces (webhooks, GET /admin/events) is a row in `events`,
// written in the same statement or transaction as the fact it announces, so an event exists iff its
// fact is committed. Each event also gets one webhook_deliveries row per webhook subscribed to its type,
// in that same statement; the delivery loop (src/webhooks/delivery-loop.ts) sends them later, never on
// the consumer's path.
//
// Event ids are derived from what the event announces (type, coupon, the stream entry or state that
// caused it), never drawn at random: the consumer may write a batch twice (redelivery, two instances),
// and the second write must find the same id (ON CONFLICT DO NOTHING) instead of making a second event
// that a receiver could not recognise as a duplicate.
import { createHash } from 'node:crypto'
import { sql, type SQL } from 'drizzle-orm'
import type { Db } from '../db/client.js'

export const EVENT_TYPES = ['issue.created', 'issue.revoked', 'coupon.sold_out', 'redemption.created', 'redemption.rolled_back', 'code.expired'] as const
export type EventType = typeof EVENT_TYPES[number]

/** An event built in JavaScript (recordEvents); `key` names the cause inside the coupon (a stream entry id, a sell-out round). */
export interface OutboxEvent {
  id: string
  type: EventType
  couponId: number
  key: string
  data: Record<string, unknown>
}

/**
 * The stable id of the event of this type caused by `key` in this coupon. The consumer's statement
 * computes the same in SQL (EVENT_ID_SQL below); test/webhooks.test.ts checks they agree. md5 only
 * shortens a key we made ourselves into an opaque id, it guards nothing.
 */
export function eventId (type: EventType, couponId: number, key: string): string {
  return 'evt_' + createHash('md5').update(`${type}|${couponId}|${key}`).digest('hex')
}
const EVENT_ID_SQL = sql.raw('\'evt_\' || md5(a.type || \'|\' || a.coupon_id::text || \'|\' || a.key)')

/** A timestamptz column as JavaScript's toISOString() writes it (ms, Z). */
const isoSql = (column: string) => sql.raw(`to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`)

// The `data` of each event type, built in one place: a new field is one line here. The consumer's
// events are built in SQL from the rows its statement inserted (no per-row work in JavaScript on the
// persistence path); `row` is the alias of that relation.
// redemption.created and redemption.rolled_back are announced by persistRedemptions, in the statement
// that records the redeem / rollback fact; code.expired by persistEvents, from the one-unit revoke fact the
// expiry job's return of a unit (returnExpired.lua) becomes. A code that merely passes its expiresAt in a
// campaign without returnExpiredToStock announces nothing: code.expired means "returned to stock at expiry".
export const eventData = {
  /** from a coupon_issues row */
  issueCreated: (row: string) => sql.raw(`jsonb_build_object('couponId', ${row}.coupon_id, 'userId', ${row}.user_id, 'claim', ${row}.claim, 'code', ${row}.code, 'issuedAt', `)
    .append(isoSql(`${row}.created_at`)).append(sql.raw(')')),
  /** from a coupon_redemptions row (a redeem or rollback fact) and its unit's coupon_issues row (for the code; null if not persisted yet) */
  redemption: (row: string, issue: string) => sql.raw(`jsonb_build_object('couponId', ${row}.coupon_id, 'userId', ${row}.user_id, 'claim', ${row}.claim, 'code', ${issue}.code, 'orderId', ${row}.order_id, 'at', `)
    .append(isoSql(`${row}.at`)).append(sql.raw(')')),
  /** from a coupon_revocations row (a cancel fact) */
  issueRevoked: (row: string) => sql.raw(`jsonb_build_object('couponId', ${row}.coupon_id, 'userId', ${row}.user_id, 'units', ${row}.units, 'upToClaim', ${row}.up_to_claim, 'revokedAt', `)
    .append(isoSql(`${row}.revoked_at`)).append(sql.raw(')')),
  /** from a coupon_revocations row with `claim` (the unit returned at expiry) and a relation holding its `code` */
  codeExpired: (row: string, unit: string) => sql.raw(`jsonb_build_object('couponId', ${row}.coupon_id, 'userId', ${row}.user_id, 'claim', ${row}.claim, 'code', ${unit}.code, 'returnedToStock', true, 'returnedAt', `)
    .append(isoSql(`${row}.revoked_at`)).append(sql.raw(')')),
  couponSoldOut: (s: { couponId: number, totalQuantity: number }) => ({ couponId: s.couponId, totalQuantity: s.totalQuantity })
}

/**
 * The CTEs (to follow other CTEs in a WITH) that write one event per row of the relation `announced`
 * (columns type, coupon_id, key, data), already defined in the same WITH, and its deliveries: one per
 * live webhook subscribed to the type. Only facts the statement really wrote should be announced
 * (their RETURNING), so a fact that already existed (a redelivered entry) or was refused by ON CONFLICT
 * makes no event; the id's primary key is the second guard.
 */
export function outboxCtes ({ keysAreStreamIds = false }: { keysAreStreamIds?: boolean } = {}): SQL {
  // The feed orders one transaction's events by seq, i.e. by the order of this INSERT's rows; a join or a
  // UNION ALL before it promises no order. Events announced from stream entries (key = entry id
  // "ms-seq") are inserted in entry order, so a redemption and its rollback written by one batch reach
  // the feed in the order they happened.
  const order = keysAreStreamIds
    ? sql.raw(" ORDER BY split_part(a.key, '-', 1)::bigint, split_part(a.key, '-', 2)::bigint, a.type")
    : sql.raw('')
  return sql`
    new_events AS (
      INSERT INTO events (id, type, coupon_id, data)
      SELECT ${EVENT_ID_SQL}, a.type, a.coupon_id, a.data FROM announced a${order}
      ON CONFLICT (id) DO NOTHING
      RETURNING id, type
    ), new_deliveries AS (
      INSERT INTO webhook_deliveries (webhook_id, event_id)
      SELECT w.id, e.id FROM new_events e JOIN webhooks w ON w.deleted_at IS NULL AND e.type = ANY(w.event_types)
      ON CONFLICT (webhook_id, event_id) DO NOTHING
      RETURNING 1
    )`
}

const arrayParam = <T>(values: T[]) => sql.param(values)

/**
 * Writes events whose facts the caller has written (or is writing) in the same transaction: pass the
 * transaction as `db`. Idempotent: an event already there is left as it is. Returns how many were new.
 */
export async function recordEvents (db: Db, events: OutboxEvent[]): Promise<number> {
  if (events.length === 0) return 0
  for (const e of events) {
    if (e.id !== eventId(e.type, e.couponId, e.key)) throw new Error(`event ${e.id} does not carry the id of (${e.type}, ${e.couponId}, ${e.key})`)
  }
  const result: any = await db.execute(sql`
    WITH announced AS (
      SELECT * FROM unnest(${arrayParam(events.map((e) => e.type))}::text[], ${arrayParam(events.map((e) => e.couponId))}::bigint[],
                           ${arrayParam(events.map((e) => e.key))}::text[], ${arrayParam(events.map((e) => JSON.stringify(e.data)))}::text[]::jsonb[])
        AS a(type, coupon_id, key, data)
    ), ${outboxCtes()}
    SELECT count(*)::int AS created FROM new_events`)
  return Number((result.rows ?? result)[0].created)
}

/** The sell-out round of a coupon: stock only comes back through a cancel, a return at expiry or a PATCH, so each round has its own key. */
interface SoldOutState { couponId: number, totalQuantity: number, cancels: number }

/**
 * coupon.sold_out, once per sell-out: when a coupon's persisted active (not revoked) units reach its
 * totalQuantity. Run after the issue rows and their revocation fix-up committed (concurrent writers'
 * rows are then visible); a crash before it leaves the batch unacknowledged and the redelivery runs it
 * again. The event key is (totalQuantity, number of recorded cancels and one-unit revokes): a coupon that
 * gets stock back by a cancel, a return at expiry or a raised totalQuantity and sells out again announces again; a repeated check of the same
 * state finds the same id. Not announced: a sell-out reached only by lowering totalQuantity (no issue
 * persisted afterwards), or again after a discarded parked issue returned its unit (same key).
 */
export async function recordSoldOut (db: Db, couponIds: number[]): Promise<number> {
  if (couponIds.length === 0) return 0
  // LIMIT total_quantity bounds the count by what the answer needs.
  const result: any = await db.execute(sql`
    SELECT c.id AS "couponId", c.total_quantity AS "totalQuantity",
           (SELECT count(*) FROM coupon_revocations r WHERE r.coupon_id = c.id)::int AS cancels
    FROM coupons c
    WHERE c.id = ANY(${arrayParam(couponIds)}::bigint[])
      AND (SELECT count(*) FROM (SELECT 1 FROM coupon_issues i WHERE i.coupon_id = c.id AND i.revoked_at IS NULL LIMIT c.total_quantity) active) >= c.total_quantity`)
  const soldOut = (result.rows ?? result) as SoldOutState[]
  return recordEvents(db, soldOut.map((s) => {
    const couponId = Number(s.couponId)
    const key = `${s.totalQuantity}:${s.cancels}`
    return { id: eventId('coupon.sold_out', couponId, key), type: 'coupon.sold_out', couponId, key, data: eventData.couponSoldOut({ couponId, totalQuantity: Number(s.totalQuantity) }) }
  }))
}
