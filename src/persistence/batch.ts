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
  /** how long the loop waits before its next read, set by a fresh read (ReadSize in consumer.ts); absent = none */
  lingerMs?: number
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

/** The part of the batch that came from these streams (Redis Cluster: the streams whose primary confirmed replication). */
export function pickStreams (batch: Batch, streams: Set<string>): Batch {
  return {
    ids: new Map([...batch.ids].filter(([stream]) => streams.has(stream))),
    events: batch.events.filter((event) => streams.has(event.streamKey)),
    poison: batch.poison.filter((entry) => streams.has(entry.streamKey))
  }
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

/** The read COUNT after idle (batchSize when that is smaller); see ReadSize. */
export const FIRST_READ_COUNT = 100

/**
 * How many entries the loop asks for, and whether it lingers before asking again. No fixed batch size:
 *   - COUNT starts at FIRST_READ_COUNT after idle and doubles each time a read comes back full (a
 *     backlog), up to batchSize (CONSUMER_BATCH_SIZE). A backlog is thus written in batches that grow to
 *     the largest (cheapest per entry) size within a few reads, while the first rows of a rush that
 *     starts after idle go out in small statements instead of waiting behind a large one.
 *   - A read that comes back empty means idle: COUNT drops back to the start, and the next read blocks.
 *     Nothing lingers before the first batch after idle, so an issue at idle reaches Postgres at once.
 *   - After a batch that did not fill its read (small, but not empty: the loop keeps up), the next read
 *     waits lingerMs (CONSUMER_LINGER_MS), overlapping the write, so a steady rush is written in fewer,
 *     larger batches. After a full batch there is a backlog: read on at once (and with a larger COUNT).
 * Entries stay pending in the group while they wait either way; nothing here decides what is acknowledged.
 */
export class ReadSize {
  readonly #first: number
  readonly #max: number
  readonly #lingerMs: number
  #count: number

  constructor (maxCount: number, lingerMs: number) {
    this.#max = maxCount
    this.#first = Math.min(FIRST_READ_COUNT, maxCount)
    this.#count = this.#first
    this.#lingerMs = lingerMs
  }

  /** the COUNT of the next read */
  get count (): number {
    return this.#count
  }

  /**
   * Takes in what a read of `count` returned (entries of its largest stream, as COUNT applies per
   * stream; 0 = nothing) and says how long to wait before the next read.
   */
  read (largestShare: number, count: number = this.#count): number {
    if (largestShare === 0) {
      this.#count = this.#first
      return 0
    }
    if (largestShare >= count) {
      this.#count = Math.min(this.#max, Math.max(this.#count, count * 2))
      return 0
    }
    return this.#lingerMs
  }
}
