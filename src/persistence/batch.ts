// What one read of the consumer group holds: the entries to acknowledge once committed, the events to
// write, and the poison to park. Pure functions, no I/O (test/batch.test.ts needs no Redis).
import type { FailedEntry } from '../db/queries/issues.js'
import { decodeEntry, fieldsToObject, isEvent, type CouponEvent } from '../stream/events.js'

/** An XREADGROUP / XAUTOCLAIM reply: per stream, entries (fields null when the entry was deleted). */
export type StreamReply = [key: string, entries: [id: string, fields: string[] | null][]][]

export interface Batch {
  /** stream key -> ids to acknowledge once the batch is committed, ascending */
  ids: Map<string, string[]>
  events: CouponEvent[]
  poison: FailedEntry[]
}

export interface DecodeOptions {
  couponIdOfStream: (stream: string) => number | null
  /** an entry delivered more often than this is parked instead of written */
  maxDeliveries: number
}

/**
 * Decodes a reply into a batch. `deliveries` (entry id -> delivery count, from XPENDING) is known for
 * reclaimed entries only; a fresh read counts as the first delivery.
 */
export function toBatch (reply: StreamReply, { couponIdOfStream, maxDeliveries }: DecodeOptions, deliveries: Map<string, number> | null = null): Batch {
  const batch: Batch = { ids: new Map(), events: [], poison: [] }
  for (const [stream, entries] of reply) {
    const couponId = couponIdOfStream(stream)
    const ids: string[] = []
    for (const [id, fields] of entries) {
      ids.push(id)
      if (fields === null) continue
      const delivered = deliveries?.get(id) ?? 1
      const entry = decodeEntry(stream, couponId, id, fields)
      if (!isEvent(entry)) {
        batch.poison.push({ ...entry, deliveries: delivered })
      } else if (delivered > maxDeliveries) {
        batch.poison.push({ streamKey: stream, id, payload: fieldsToObject(fields), error: `delivered ${delivered} times without being persisted`, deliveries: delivered })
      } else {
        batch.events.push(entry)
      }
    }
    if (ids.length > 0) batch.ids.set(stream, ids)
  }
  return batch
}

/** Both batches as one (a batch read while the write of another failed is kept with it). */
export function mergeBatches (a: Batch, b: Batch): Batch {
  const ids = new Map(a.ids)
  for (const [stream, more] of b.ids) ids.set(stream, [...(ids.get(stream) ?? []), ...more])
  return { ids, events: [...a.events, ...b.events], poison: [...a.poison, ...b.poison] }
}

/** Entries of the batch's largest stream: COUNT applies per stream, so this says whether a read came back full. */
export function largestStreamShare (batch: Batch): number {
  let entries = 0
  for (const ids of batch.ids.values()) entries = Math.max(entries, ids.length)
  return entries
}

/** Adds the batch's entries per coupon id (or stream key, for a stream that names no coupon) to `into`. */
export function countPerCoupon (batch: Batch, couponIdOfStream: (stream: string) => number | null, into: Record<string, number>): Record<string, number> {
  for (const [stream, ids] of batch.ids) {
    const couponId = couponIdOfStream(stream) ?? stream
    into[couponId] = (into[couponId] ?? 0) + ids.length
  }
  return into
}
