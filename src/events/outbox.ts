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
import type { IssueEvent, RevokeEvent } from '../stream/events.js'

export const EVENT_TYPES = ['issue.created', 'issue.revoked', 'coupon.sold_out', 'redemption.created', 'redemption.rolled_back', 'code.expired'] as const
export type EventType = typeof EVENT_TYPES[number]

/** An event about to be written; `key` names the cause inside the coupon (a stream entry id, a sell-out round). */
export interface OutboxEvent {
  id: string
  type: EventType
  couponId: number
  key: string
  data: Record<string, unknown>
}

/** The stable id of the event of this type caused by `key` in this coupon. */
export function eventId (type: EventType, couponId: number, key: string): string {
  return 'evt_' + createHash('sha256').update(`${type}|${couponId}|${key}`).digest('hex').slice(0, 32)
}

const iso = (ms: number) => new Date(ms).toISOString()

// The `data` of each event type, built in one place: a new field is one line here.
// redemption.created, redemption.rolled_back and code.expired come from the redeem / rollback / expiry
// stream entries of the codes feature: give each a builder here and announce it next to its fact's
// write (as persistEvents does with outboxCtes, or recordEvents inside the fact's transaction).
export const eventData = {
  issueCreated: (e: IssueEvent) => ({ couponId: e.couponId, userId: e.userId, claim: e.claim, issuedAt: iso(e.at) }),
  issueRevoked: (r: RevokeEvent) => ({ couponId: r.couponId, userId: r.userId, units: r.units, upToClaim: r.upToClaim ?? null, revokedAt: iso(r.at) }),
  couponSoldOut: (s: { couponId: number, totalQuantity: number }) => ({ couponId: s.couponId, totalQuantity: s.totalQuantity })
}

export const issueCreated = (e: IssueEvent): OutboxEvent =>
  ({ id: eventId('issue.created', e.couponId, e.id), type: 'issue.created', couponId: e.couponId, key: e.id, data: eventData.issueCreated(e) })

export const issueRevoked = (r: RevokeEvent): OutboxEvent =>
  ({ id: eventId('issue.revoked', r.couponId, r.id), type: 'issue.revoked', couponId: r.couponId, key: r.id, data: eventData.issueRevoked(r) })

const arrayParam = <T>(values: T[]) => sql.param(values)

/**
 * The CTEs (to follow other CTEs in a WITH) that insert `candidates` whose (coupon_id, key, type) appears
 * in `announced` (a relation with columns coupon_id, key, type: typically the RETURNING of the facts'
 * own inserts in the same statement), plus their deliveries. Only facts this statement really wrote are
 * announced, so a fact that already existed (a redelivered entry) or was refused by ON CONFLICT makes
 * no event; the id's primary key is the second guard.
 */
export function outboxCtes (candidates: OutboxEvent[], announced: SQL): SQL {
  return sql`
    candidate_events AS (
      SELECT * FROM unnest(${arrayParam(candidates.map((c) => c.id))}::text[], ${arrayParam(candidates.map((c) => c.type))}::text[],
                           ${arrayParam(candidates.map((c) => c.couponId))}::bigint[], ${arrayParam(candidates.map((c) => c.key))}::text[],
                           ${arrayParam(candidates.map((c) => JSON.stringify(c.data)))}::text[]::jsonb[]) AS c(id, type, coupon_id, key, data)
    ), new_events AS (
      INSERT INTO events (id, type, coupon_id, data)
      SELECT c.id, c.type, c.coupon_id, c.data FROM candidate_events c
      WHERE (c.coupon_id, c.key, c.type) IN (${announced})
      ON CONFLICT (id) DO NOTHING
      RETURNING id, type
    ), new_deliveries AS (
      INSERT INTO webhook_deliveries (webhook_id, event_id)
      SELECT w.id, e.id FROM new_events e JOIN webhooks w ON w.deleted_at IS NULL AND e.type = ANY(w.event_types)
      ON CONFLICT (webhook_id, event_id) DO NOTHING
      RETURNING 1
    )`
}

/**
 * Writes events whose facts the caller has written (or is writing) in the same transaction: pass the
 * transaction as `db`. Idempotent: an event already there is left as it is. Returns how many were new.
 */
export async function recordEvents (db: Db, events: OutboxEvent[]): Promise<number> {
  if (events.length === 0) return 0
  const result: any = await db.execute(sql`
    WITH ${outboxCtes(events, sql`SELECT coupon_id, key, type FROM candidate_events`)}
    SELECT count(*)::int AS created FROM new_events`)
  return Number((result.rows ?? result)[0].created)
}

/** The sell-out round of a coupon: stock only comes back through a cancel or a PATCH, so each round has its own key. */
interface SoldOutState { couponId: number, totalQuantity: number, cancels: number }

/**
 * coupon.sold_out, once per sell-out: when a coupon's persisted active (not revoked) units reach its
 * totalQuantity. Run after the issue rows and their revocation fix-up committed (concurrent writers'
 * rows are then visible); a crash before it leaves the batch unacknowledged and the redelivery runs it
 * again. The event key is (totalQuantity, number of recorded cancels): a coupon that gets stock back by
 * a cancel or a raised totalQuantity and sells out again announces again; a repeated check of the same
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
