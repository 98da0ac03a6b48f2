// Webhooks and their deliveries: the admin's CRUD, and the leasing the delivery loop relies on.
import { and, desc, eq, isNull, sql } from 'drizzle-orm'
import type { Db } from '../client.js'
import { webhookDeliveries, webhooks } from '../schema.js'

const rowsOf = (result: any) => (result.rows ?? result) as any[]

export interface WebhookRow {
  id: number
  url: string
  eventTypes: string[]
  createdAt: Date
}

const publicColumns = { id: webhooks.id, url: webhooks.url, eventTypes: webhooks.eventTypes, createdAt: webhooks.createdAt }

export async function createWebhook (db: Db, { url, eventTypes, secret }: { url: string, eventTypes: string[], secret: string }): Promise<WebhookRow> {
  const [row] = await db.insert(webhooks).values({ url, eventTypes, secret }).returning(publicColumns)
  return row!
}

export async function countWebhooks (db: Db): Promise<number> {
  const [row] = await db.select({ n: sql<number>`count(*)::int` }).from(webhooks).where(isNull(webhooks.deletedAt))
  return Number(row?.n ?? 0)
}

/** Live webhooks, newest first; the secret is never read here. */
export async function listWebhooks (db: Db): Promise<WebhookRow[]> {
  return db.select(publicColumns).from(webhooks).where(isNull(webhooks.deletedAt)).orderBy(desc(webhooks.id))
}

export async function findWebhook (db: Db, id: number): Promise<WebhookRow | undefined> {
  const [row] = await db.select(publicColumns).from(webhooks).where(and(eq(webhooks.id, id), isNull(webhooks.deletedAt)))
  return row
}

/**
 * Deletes a webhook: it gets no new deliveries (outboxCtes joins live webhooks only) and its waiting
 * ones are cancelled, in one transaction. The row and the delivery history stay. An attempt already in
 * flight finishes (at-least-once: it may still arrive). Returns false when there was no live webhook.
 */
export async function deleteWebhook (db: Db, id: number): Promise<boolean> {
  return db.transaction(async (tx) => {
    const deleted = await tx.update(webhooks).set({ deletedAt: new Date() })
      .where(and(eq(webhooks.id, id), isNull(webhooks.deletedAt))).returning({ id: webhooks.id })
    if (deleted.length === 0) return false
    await tx.update(webhookDeliveries).set({ status: 'cancelled', leaseUntil: null, leaseToken: null })
      .where(and(eq(webhookDeliveries.webhookId, id), eq(webhookDeliveries.status, 'pending')))
    return true
  })
}

export interface DeliveryRow {
  id: number
  eventId: string
  eventType: string
  status: string
  attempts: number
  nextAttemptAt: Date | null
  lastAttemptAt: Date | null
  lastStatus: number | null
  lastError: string | null
  deliveredAt: Date | null
  createdAt: Date
}

const deliveryColumns = sql`d.id, d.event_id AS "eventId", e.type AS "eventType", d.status, d.attempts,
  CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS "nextAttemptAt", d.last_attempt_at AS "lastAttemptAt",
  d.last_status AS "lastStatus", d.last_error AS "lastError", d.delivered_at AS "deliveredAt", d.created_at AS "createdAt"`

const toDelivery = (row: any): DeliveryRow => ({
  ...row,
  id: Number(row.id),
  nextAttemptAt: row.nextAttemptAt === null ? null : new Date(row.nextAttemptAt),
  lastAttemptAt: row.lastAttemptAt === null ? null : new Date(row.lastAttemptAt),
  deliveredAt: row.deliveredAt === null ? null : new Date(row.deliveredAt),
  createdAt: new Date(row.createdAt)
})

/** A webhook's deliveries, newest first, `before` a delivery id (keyset). */
export async function listDeliveries (db: Db, webhookId: number, { status, before, limit }: { status?: string, before?: number, limit: number }): Promise<DeliveryRow[]> {
  const rows = rowsOf(await db.execute(sql`
    SELECT ${deliveryColumns} FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
    WHERE d.webhook_id = ${webhookId}
      ${status === undefined ? sql`` : sql`AND d.status = ${status}`}
      ${before === undefined ? sql`` : sql`AND d.id < ${before}`}
    ORDER BY d.id DESC LIMIT ${limit}`))
  return rows.map(toDelivery)
}

export type RedeliverOutcome = { delivery: DeliveryRow } | { missing: true } | { inFlight: true }

/**
 * Sends a delivery again as soon as possible, whatever its state (delivered, failed, pending), with a
 * fresh retry window. A delivery in flight (leased, lease not expired) is refused, so no two attempts
 * of one delivery ever run at once.
 */
export async function redeliver (db: Db, webhookId: number, deliveryId: number): Promise<RedeliverOutcome> {
  const updated = rowsOf(await db.execute(sql`
    WITH d AS (
      UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), retry_since = now(), lease_until = NULL, lease_token = NULL
      WHERE id = ${deliveryId} AND webhook_id = ${webhookId} AND status <> 'cancelled' AND (lease_until IS NULL OR lease_until < now())
      RETURNING *
    )
    SELECT ${deliveryColumns} FROM d JOIN events e ON e.id = d.event_id`))
  if (updated.length > 0) return { delivery: toDelivery(updated[0]) }
  const [existing] = await db.select({ status: webhookDeliveries.status }).from(webhookDeliveries)
    .where(and(eq(webhookDeliveries.id, deliveryId), eq(webhookDeliveries.webhookId, webhookId)))
  return existing && existing.status !== 'cancelled' ? { inFlight: true } : { missing: true }
}

/** A delivery taken by one instance; `leaseToken` proves the lease when the outcome is written. */
export interface LeasedDelivery {
  id: number
  webhookId: number
  attempts: number
  leaseToken: string
  url: string
  secret: string
  event: { id: string, type: string, createdAt: Date, data: unknown }
}

/**
 * Leases up to `limit` due deliveries for `leaseMs`. FOR UPDATE SKIP LOCKED lets several instances
 * lease at once without waiting for or taking each other's rows; the lease (lease_until) then keeps a
 * delivery away from every other instance while its attempt runs, and expires if this instance dies.
 * The attempt is counted here, before it is made, so a crash mid-attempt still counts it.
 *
 * `room` caps what one webhook may get (webhook id -> free slots; `perWebhook` for webhooks not
 * listed): a dead receiver with thousands of due deliveries must not take every slot of the loop and
 * starve the other webhooks. Deliveries of a webhook deleted meanwhile (a consumer statement that
 * read the webhook before the delete committed) are cancelled here instead of sent.
 */
export async function leaseDeliveries (db: Db, { limit, leaseMs, token, perWebhook = limit, room = new Map() }: {
  limit: number, leaseMs: number, token: string, perWebhook?: number, room?: Map<number, number>
}): Promise<LeasedDelivery[]> {
  const full = [...room].filter(([, free]) => free <= 0).map(([id]) => id)
  const partial = [...room].filter(([, free]) => free > 0)
  const rows = rowsOf(await db.execute(sql`
    WITH candidates AS (
      SELECT d.id, d.webhook_id, d.next_attempt_at FROM webhook_deliveries d
      WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND (d.lease_until IS NULL OR d.lease_until < now())
        AND d.webhook_id <> ALL(${sql.param(full)}::bigint[])
      ORDER BY d.next_attempt_at
      LIMIT ${limit * 4}
      FOR UPDATE SKIP LOCKED
    ), ranked AS (
      SELECT c.id, c.next_attempt_at, w.deleted_at IS NOT NULL AS gone,
             row_number() OVER (PARTITION BY c.webhook_id ORDER BY c.next_attempt_at, c.id) AS n,
             coalesce((SELECT r.free FROM unnest(${sql.param(partial.map(([id]) => id))}::bigint[], ${sql.param(partial.map(([, free]) => free))}::int[]) AS r(webhook_id, free)
                       WHERE r.webhook_id = c.webhook_id), ${perWebhook}) AS free
      FROM candidates c JOIN webhooks w ON w.id = c.webhook_id
    ), due AS (
      SELECT id, gone FROM ranked WHERE gone OR n <= free ORDER BY gone DESC, next_attempt_at LIMIT ${limit}
    ), cancelled AS (
      UPDATE webhook_deliveries d SET status = 'cancelled' FROM due WHERE d.id = due.id AND due.gone
    ), leased AS (
      UPDATE webhook_deliveries d
      SET lease_until = now() + ${leaseMs} * interval '1 millisecond', lease_token = ${token}::uuid,
          attempts = d.attempts + 1, last_attempt_at = now()
      FROM due WHERE d.id = due.id AND NOT due.gone
      RETURNING d.id, d.attempts, d.event_id, d.webhook_id
    )
    SELECT l.id, l.attempts, l.webhook_id AS "webhookId", w.url, w.secret, e.id AS "eventId", e.type, e.created_at AS "createdAt", e.data
    FROM leased l JOIN events e ON e.id = l.event_id JOIN webhooks w ON w.id = l.webhook_id`))
  return rows.map((row) => ({
    id: Number(row.id),
    webhookId: Number(row.webhookId),
    attempts: Number(row.attempts),
    leaseToken: token,
    url: row.url,
    secret: row.secret,
    event: { id: row.eventId, type: row.type, createdAt: new Date(row.createdAt), data: typeof row.data === 'string' ? JSON.parse(row.data) : row.data }
  }))
}

/** The receiver answered 2xx. Written only while this instance still holds the lease. */
export async function markDelivered (db: Db, delivery: LeasedDelivery, status: number): Promise<void> {
  await db.update(webhookDeliveries)
    .set({ status: 'delivered', deliveredAt: sql`now()`, leaseUntil: null, leaseToken: null, lastStatus: status, lastError: null })
    .where(and(eq(webhookDeliveries.id, delivery.id), eq(webhookDeliveries.leaseToken, delivery.leaseToken)))
}

/**
 * The attempt failed: the next one after `retryInMs`, or status failed once the retry window
 * (retry_since + retryForMs, Postgres' clock) has passed. Written only while the lease is held.
 */
export async function markAttemptFailed (db: Db, delivery: LeasedDelivery, { status, error, retryInMs, retryForMs }: { status: number | null, error: string, retryInMs: number, retryForMs: number }): Promise<void> {
  await db.execute(sql`
    UPDATE webhook_deliveries
    SET status = CASE WHEN now() >= retry_since + ${retryForMs} * interval '1 millisecond' THEN 'failed' ELSE 'pending' END,
        next_attempt_at = now() + ${retryInMs} * interval '1 millisecond',
        lease_until = NULL, lease_token = NULL, last_status = ${status}, last_error = ${error.slice(0, 500)}
    WHERE id = ${delivery.id} AND lease_token = ${delivery.leaseToken}::uuid`)
}

/** Gives a lease back untried (this instance is shutting down): another instance may take it at once. */
export async function releaseLease (db: Db, delivery: LeasedDelivery): Promise<void> {
  await db.update(webhookDeliveries).set({ leaseUntil: null, leaseToken: null, nextAttemptAt: sql`now()` })
    .where(and(eq(webhookDeliveries.id, delivery.id), eq(webhookDeliveries.leaseToken, delivery.leaseToken), eq(webhookDeliveries.status, 'pending')))
}
