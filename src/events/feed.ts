// GET /admin/events: the outbox as a pull feed, in an order in which no event can appear behind a
// poller's cursor after the poller passed it.
//
// Why not order by seq (or created_at): both are assigned when the row is written, not when it commits.
// Transaction A writes seq 10, transaction B writes seq 11 and commits first; a poller reads 11 and
// moves its cursor past 10; A commits; 10 is never served. The same holds for ordering by transaction
// id alone.
//
// The scheme: every event carries the id of the transaction that wrote it (tx_id = pg_current_xact_id(),
// xid8, never wraps) and the feed serves, in (tx_id, seq) order, only events whose tx_id is below the
// current snapshot's xmin (pg_snapshot_xmin(pg_current_snapshot())): every transaction with an id below
// xmin has ended, so no event can still commit below that line; a transaction still running (or one
// that starts later) has an id >= xmin and so sorts after everything served so far. The cost: an event
// is served only once every older writing transaction in the cluster has ended, so a long-running write
// transaction (not a read-only one: those take no transaction id) delays the feed, never reorders it.
// The alternative, positions assigned in one serialized step after commit, needs a second writer pass
// and a lock every persisting transaction would queue on.
import { sql } from 'drizzle-orm'
import type { Db } from '../db/client.js'

export interface FeedCursor { txId: bigint, seq: number }

export interface FeedEvent {
  id: string
  type: string
  createdAt: Date
  data: unknown
  cursor: FeedCursor
}

const XID8_MAX = (1n << 64n) - 1n

/** Opaque to clients: base64url of "<txId>.<seq>". */
export const encodeFeedCursor = (c: FeedCursor) => Buffer.from(`${c.txId}.${c.seq}`).toString('base64url')

/** The cursor, or null when `text` is not one this feed gave out in canonical form. */
export function decodeFeedCursor (text: string): FeedCursor | null {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(text)) return null
  const decoded = Buffer.from(text, 'base64url').toString('latin1')
  const match = /^(0|[1-9]\d{0,19})\.([1-9]\d{0,15})$/.exec(decoded)
  if (!match) return null
  const txId = BigInt(match[1]!)
  const seq = Number(match[2])
  // Exactly the bytes the feed would have written: no padding tricks, no second spelling of one cursor.
  if (txId > XID8_MAX || !Number.isSafeInteger(seq) || encodeFeedCursor({ txId, seq }) !== text) return null
  return { txId, seq }
}

/**
 * Up to `limit` events after `after` (from the start without it) in commit-safe order, and the
 * horizon: the xmin below which this page looked. `beyondHorizon` is true when the cursor lies at or
 * above the horizon, which no page ever hands out (so the cursor was not ours).
 */
export async function eventsPage (db: Db, { after, limit }: { after?: FeedCursor, limit: number }): Promise<{ items: FeedEvent[], beyondHorizon: boolean }> {
  const result: any = await db.execute(sql`
    WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
    SELECT e.id, e.type, e.created_at AS "createdAt", e.data, e.tx_id::text AS "txId", e.seq, h.xmin::text AS xmin
    FROM horizon h
    LEFT JOIN LATERAL (
      SELECT * FROM events
      WHERE tx_id < h.xmin
        ${after === undefined ? sql`` : sql`AND (tx_id, seq) > (${after.txId.toString()}::xid8, ${after.seq}::bigint)`}
      ORDER BY tx_id, seq
      LIMIT ${limit}
    ) e ON true`)
  const rows = (result.rows ?? result) as any[]
  const xmin = BigInt(rows[0]!.xmin)
  const items = rows.filter((row) => row.id !== null).map((row) => ({
    id: row.id,
    type: row.type,
    createdAt: new Date(row.createdAt),
    data: typeof row.data === 'string' ? JSON.parse(row.data) : row.data,
    cursor: { txId: BigInt(row.txId), seq: Number(row.seq) }
  }))
  return { items, beyondHorizon: after !== undefined && after.txId >= xmin }
}
