// How long the outbox keeps what it announced (EVENTS_RETENTION_DAYS, pruned on EVENTS_PRUNE_CRON).
// Without it, `events` and `webhook_deliveries` grow by a row per persisted fact per webhook forever.
//
// What goes: deliveries that are settled (delivered, failed, cancelled) and older than the cutoff, then
// events older than the cutoff that no delivery row refers to any more. What stays, whatever its age: a
// pending delivery (still being retried, or redelivered by an admin) and the event it sends. So a
// retention shorter than the retry window never cuts a delivery off; a feed poller that falls further
// behind than the retention misses what was pruned (its cursor stays valid: the feed goes on from the
// next event it still has).
//
// Safe to run on every instance at once and against live traffic: each DELETE re-checks its condition on
// the rows it locks (READ COMMITTED), so a delivery an admin redelivers while it is being pruned is either
// pruned first (the redeliver answers 404) or pending again and kept; work is done in bounded batches so
// no statement holds many row locks for long.
import cron, { type ScheduledTask } from 'node-cron'
import { sql } from 'drizzle-orm'
import type { FastifyBaseLogger } from 'fastify'
import type { Db } from '../db/client.js'

export const DAY_MS = 86_400_000
const PRUNE_BATCH = 5000

export interface Pruned { deliveries: number, events: number }

const deleted = (result: any): number => Number(result.rowCount ?? result.affectedRows ?? 0)

/** Deletes settled deliveries and unreferenced events created before `before`; returns how many went. */
export async function pruneEvents (db: Db, before: Date, batchSize = PRUNE_BATCH): Promise<Pruned> {
  const pruned: Pruned = { deliveries: 0, events: 0 }
  for (;;) {
    const n = deleted(await db.execute(sql`
      DELETE FROM webhook_deliveries WHERE id IN (
        SELECT id FROM webhook_deliveries
        WHERE status <> 'pending' AND created_at < ${before.toISOString()}::timestamptz
        LIMIT ${batchSize}
      ) AND status <> 'pending'`))
    pruned.deliveries += n
    if (n < batchSize) break
  }
  for (;;) {
    const n = deleted(await db.execute(sql`
      DELETE FROM events WHERE id IN (
        SELECT e.id FROM events e
        WHERE e.created_at < ${before.toISOString()}::timestamptz
          AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)
        LIMIT ${batchSize}
      ) AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = events.id)`))
    pruned.events += n
    if (n < batchSize) break
  }
  return pruned
}

/** The periodic prune; a failed run is logged and the next tick tries again. */
export function scheduleEventPruning (db: Db, log: FastifyBaseLogger, { cronExpression, retentionDays }: { cronExpression: string, retentionDays: number }): ScheduledTask {
  return cron.schedule(cronExpression, async () => {
    try {
      const pruned = await pruneEvents(db, new Date(Date.now() - retentionDays * DAY_MS))
      if (pruned.deliveries + pruned.events > 0) log.info({ ...pruned, retentionDays }, 'pruned old events and settled webhook deliveries')
    } catch (err) {
      log.warn({ err }, 'pruning old events failed; the next tick tries again')
    }
  }, { noOverlap: true, name: 'event-pruning' })
}
