// The consumer-group loop that moves issue events from the coupons' streams into Postgres.
// read (XREADGROUP, blocking, own connection) -> persist (one statement) -> ack + trim (one script per stream).
// Reading the next batch and acknowledging the previous one overlap with writing the current one.
// Nothing is acknowledged before its commit.
import { hostname } from 'node:os'
import cron, { type ScheduledTask } from 'node-cron'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import type { FastifyBaseLogger } from 'fastify'
import { pingDatabase, type Db } from '../db/client.js'
import type { FailedEntry } from '../db/queries/issues.js'
import { COMPLETE_MARKER, CONSUMER_GROUP, type Keys } from '../redis/keys.js'
import { decodeEntry, fieldsToObject, isEvent, type CouponEvent } from '../stream/events.js'
import { ackAndTrim, markDormant } from '../redis/scripts.js'
import { PersistBatch, type BatchOutcome } from './persist-batch.js'

export interface ConsumerOptions {
  /** connection for acks, claims and group management */
  redis: Redis
  /** dedicated connection for the blocking XREADGROUP */
  blockingRedis: Redis
  db: Db
  keys: Keys
  log: FastifyBaseLogger
  batchSize: number
  /** pause before reading again after a batch smaller than batchSize; 0 = read on at once */
  lingerMs: number
  blockMs: number
  reclaimMinIdleMs: number
  maxDeliveries: number
  name?: string
}

export interface ConsumerStats {
  batches: number
  inserted: number
  duplicates: number
  failed: number
  /** pending entries that were deleted from the stream before they were persisted (reported by XAUTOCLAIM) */
  deletedWhilePending: number
}

export interface DrainReport {
  /** per coupon id: entries handled */
  perCoupon: Record<string, number>
  stats: ConsumerStats
}

type StreamReply = [key: string, entries: [id: string, fields: string[] | null][]][]

interface Batch {
  /** stream key -> ids to acknowledge once the batch is committed, ascending */
  ids: Map<string, string[]>
  events: CouponEvent[]
  poison: FailedEntry[]
}

const STREAM_LIST_TTL_MS = 1000
/** An ended coupon stays on the read list this long, for late cancels to be read without a detour. */
const PRUNE_GRACE_MS = 60_000
const MAX_BACKOFF_MS = 5000

function mergeBatches (a: Batch, b: Batch): Batch {
  const ids = new Map(a.ids)
  for (const [stream, more] of b.ids) ids.set(stream, [...(ids.get(stream) ?? []), ...more])
  return { ids, events: [...a.events, ...b.events], poison: [...a.poison, ...b.poison] }
}

function abandonOnAbort<T> (promise: Promise<T>, signal: AbortSignal): Promise<T | null> {
  if (signal.aborted) return promise
  return new Promise((resolve, reject) => {
    const onAbort = () => setTimeout(() => resolve(null), 100)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

const batchSize = (batch: Batch) => {
  let entries = 0
  for (const ids of batch.ids.values()) entries = Math.max(entries, ids.length)
  return entries
}

export function defaultConsumerName () {
  return `${hostname()}-${process.pid}`
}

export class IssueEventConsumer {
  readonly name: string
  readonly stats: ConsumerStats = { batches: 0, inserted: 0, duplicates: 0, failed: 0, deletedWhilePending: 0 }
  readonly #o: ConsumerOptions
  readonly #persister: PersistBatch
  #streams: string[] = []
  #streamsReadAt = 0
  #abort = new AbortController()
  #running: Promise<void> | null = null
  #blockingClientId: number | null = null
  /** consecutive failed rounds of the loop (0 while writes succeed) */
  #failures = 0
  /** while set, reads return this consumer's own pending entries (after these ids per stream) first */
  #ownPendingFrom: Map<string, string> | null = null
  /** aborted by wake() to cut short the idle wait when there is no stream yet */
  #idle = new AbortController()

  constructor (options: ConsumerOptions) {
    this.#o = options
    this.name = options.name ?? defaultConsumerName()
    this.#persister = new PersistBatch(options.db)
    // CLIENT ID belongs to one connection to one server: after a reconnect (a Redis restart numbers its
    // clients from 1 again) the old id may name somebody else's blocked client, which stop() would unblock.
    // A read whose reply was lost with the connection (Redis killed after delivering) left entries pending
    // on us that no '>' read returns again: re-read our own pending entries once the connection is back.
    options.blockingRedis.on('close', () => {
      this.#blockingClientId = null
      this.#ownPendingFrom = new Map()
    })
  }

  /** True while the loop is retrying a batch it could not write (database or Redis unwell). */
  get backingOff (): boolean {
    return this.#failures > 0
  }

  /** Reclaims what a dead consumer left behind, then runs the loop until stop(). */
  start (): void {
    if (this.#running) return
    this.#abort = new AbortController()
    // stop() aborted the idle signal; a restarted loop with no stream to read would spin on it.
    this.#idle = new AbortController()
    this.#running = this.#run(this.#abort.signal)
  }

  /** Finishes (commits and acknowledges) the batch in hand, then returns. */
  async stop (): Promise<void> {
    if (!this.#running) return
    this.#abort.abort()
    this.#idle.abort()
    await this.#unblock()
    await this.#running
    this.#running = null
  }

  /** Makes the loop see a new coupon's stream now instead of within a second. */
  async wake (): Promise<void> {
    this.#streamsReadAt = 0
    this.#idle.abort()
    this.#idle = new AbortController()
    await this.#unblock()
  }

  /** Claims entries idle longer than minIdleMs from any consumer of the group and persists them. */
  async reclaim (minIdleMs = this.#o.reclaimMinIdleMs): Promise<Record<string, number>> {
    const perCoupon: Record<string, number> = {}
    // Claiming counts as a delivery. With the database down every periodic claim would push
    // abandoned entries toward MAX_DELIVERIES and park good entries, so claim only when it answers.
    await pingDatabase(this.#o.db)
    for (const stream of await this.#activeStreams(true)) {
      // Claim everything first, persist second: a slow insert must not leave a dead consumer's later
      // entries unclaimed (and a sibling free to take them) while the first page waits on Postgres.
      const claimed: [string, string[] | null][] = []
      let cursor = '0-0'
      do {
        const reply = await this.#o.redis.xautoclaim(stream, CONSUMER_GROUP, this.name, minIdleMs, cursor, 'COUNT', this.#o.batchSize) as
          [string, [string, string[] | null][], string[]?]
        cursor = reply[0]
        claimed.push(...reply[1])
        const deleted = reply[2] ?? []
        if (deleted.length > 0) {
          this.stats.deletedWhilePending += deleted.length
          this.#o.log.error({ stream, ids: deleted }, 'pending entries were deleted from the stream before they were persisted')
        }
      } while (cursor !== '0-0')
      for (let i = 0; i < claimed.length; i += this.#o.batchSize) {
        const entries = claimed.slice(i, i + this.#o.batchSize)
        const deliveries = await this.#deliveryCounts(stream, entries)
        await this.#persistAndAck(this.#toBatch([[stream, entries]], deliveries))
        const couponId = this.#o.keys.couponIdOfStream(stream) ?? stream
        perCoupon[couponId] = (perCoupon[couponId] ?? 0) + entries.length
      }
    }
    return perCoupon
  }

  /** One-shot flush: reclaim every pending entry regardless of idle time, then read until the streams are empty. */
  async drain (): Promise<DrainReport> {
    await this.discoverStreams()
    await this.ensureGroups()
    const perCoupon = await this.reclaim(0)
    for (;;) {
      const batch = await this.#read(null)
      if (!batch) break
      await this.#persistAndAck(batch)
      for (const [stream, ids] of batch.ids) {
        const couponId = this.#o.keys.couponIdOfStream(stream) ?? stream
        perCoupon[couponId] = (perCoupon[couponId] ?? 0) + ids.length
      }
    }
    return { perCoupon, stats: { ...this.stats } }
  }

  /**
   * Drops ended coupons whose events are all persisted from the set of streams the loop reads: every
   * stream in that set is part of every XREADGROUP. The coupon leaves the set first and is then marked
   * dormant only if its stream is settled (markDormant.lua); an entry appended before the mark keeps it
   * in the set, one appended after it finds the mark and puts it back (issue.lua/revoke.lua answer
   * `reactivated`). No stream with unpersisted entries stays off the list, whatever code path wrote.
   */
  async pruneEndedStreams (graceMs = PRUNE_GRACE_MS): Promise<string[]> {
    const { redis, keys } = this.#o
    const pruned: string[] = []
    for (const id of await redis.smembers(keys.activeCoupons)) {
      const k = keys.coupon(id)
      const endsAt = Number(await redis.hget(k.meta, 'endsAt') || NaN)
      if (!(endsAt + graceMs < Date.now())) continue
      await redis.srem(keys.activeCoupons, id)
      if (await markDormant(redis, k, CONSUMER_GROUP)) pruned.push(id)
      else await redis.sadd(keys.activeCoupons, id)
    }
    if (pruned.length > 0) this.#streamsReadAt = 0
    return pruned
  }

  /**
   * Looks at every coupon stream under the prefix that is off the read list (SCAN: a full pass over the
   * keyspace, so for startup, drain and repair, not every tick): one holding entries not yet consumed
   * goes back on the list, a settled one is marked dormant so its next write puts it back. A safety net
   * under the dormant marks, for what a crash between a script and its caller's SADD, a lost active
   * set, or a stream pruned before dormant marks existed, left behind.
   */
  async discoverStreams (): Promise<string[]> {
    const { redis, keys } = this.#o
    const found: string[] = []
    const active = new Set(await redis.smembers(keys.activeCoupons))
    let cursor = '0'
    do {
      const [next, streams] = await redis.scan(cursor, 'MATCH', keys.eventStreamPattern, 'COUNT', 1000, 'TYPE', 'stream')
      cursor = next
      for (const stream of streams) {
        const couponId = keys.couponIdOfStream(stream)
        if (couponId === null || active.has(String(couponId))) continue
        if (await markDormant(redis, keys.coupon(couponId), CONSUMER_GROUP)) continue
        await redis.sadd(keys.activeCoupons, String(couponId))
        found.push(String(couponId))
      }
    } while (cursor !== '0')
    if (found.length > 0) {
      this.#streamsReadAt = 0
      this.#o.log.warn({ coupons: found }, 'found coupon streams with unpersisted entries off the read list; reading them again')
    }
    return found
  }

  /**
   * Deletes idempotency records older than the TTL from the active coupons' hashes (they carry no TTL
   * of their own, so that eviction cannot pick them first; the scripts already ignore expired ones).
   */
  async pruneIdempotency (ttlMs: number): Promise<number> {
    const { redis, keys } = this.#o
    let deleted = 0
    const oldest = Date.now() - ttlMs
    for (const id of await redis.smembers(keys.activeCoupons)) {
      const hash = keys.coupon(id).idempotency
      let cursor = '0'
      do {
        const [next, flat] = await redis.hscan(hash, cursor, 'COUNT', 1000)
        cursor = next
        const expired: string[] = []
        for (let i = 0; i + 1 < flat.length; i += 2) {
          const recorded = Number(/\|(\d+)$/.exec(flat[i + 1]!)?.[1])
          if (flat[i] !== COMPLETE_MARKER && recorded < oldest) expired.push(flat[i]!)
        }
        if (expired.length > 0) deleted += await redis.hdel(hash, ...expired)
      } while (cursor !== '0')
    }
    return deleted
  }

  /** Creates the group on every active stream (MKSTREAM), e.g. after Redis lost it. */
  async ensureGroups (streams?: string[]): Promise<void> {
    for (const stream of streams ?? await this.#activeStreams(true)) {
      await this.#o.redis.xgroup('CREATE', stream, CONSUMER_GROUP, '0', 'MKSTREAM').catch((err: Error) => {
        if (!err.message.includes('BUSYGROUP')) throw err
      })
    }
  }

  async #run (signal: AbortSignal): Promise<void> {
    const { log } = this.#o
    this.#failures = 0
    const backoff = async (err: unknown, what: string) => {
      this.#failures++
      const delay = Math.min(100 * 2 ** Math.min(this.#failures, 10), MAX_BACKOFF_MS)
      log.error({ err, retryInMs: delay }, what)
      await sleep(delay, undefined, { signal }).catch(() => {})
    }
    while (!signal.aborted) {
      try {
        await this.discoverStreams()
        await this.ensureGroups()
        await this.reclaim()
        break
      } catch (err) {
        await backoff(err, 'startup reclaim failed')
      }
    }
    let inHand: Batch | null = null
    // The acknowledgement of the last committed batch, running while the next one is written. A failed
    // ack is retried until it succeeds (Redis back) or the consumer stops: leaving it to a reclaim would
    // hold the entries for RECLAIM_MIN_IDLE_MS. Entries still unacked at a stop stay pending and are
    // reclaimed later as duplicates, never lost.
    let acking: Promise<void> = Promise.resolve()
    const ackInBackground = (batch: Batch) => {
      acking = acking.then(() => this.#ackUntilDone(batch, signal))
    }
    while (!signal.aborted || inHand) {
      try {
        if (!inHand) {
          inHand = await this.#read(this.#o.blockMs, signal)
          continue
        }
        // Persist the batch in hand while the next read (and the previous batch's ack) is on its way.
        // Only while persisting works: after a failure the batch is retried alone, so a dead database
        // does not make this consumer take more and more entries it cannot write.
        // A batch below the batch size means the consumer is keeping up: linger before the next read so
        // a steady trickle is written in fewer, larger batches (each batch costs the web process a read,
        // an insert and an ack whatever its size). A full batch means a backlog: read on at once.
        const linger = this.#o.lingerMs > 0 && batchSize(inHand) < this.#o.batchSize ? this.#o.lingerMs : 0
        const readAhead = signal.aborted || this.#failures > 0
          ? Promise.resolve(null)
          : (linger > 0 ? sleep(linger, undefined, { signal }).catch(() => {}) : Promise.resolve()).then(() => this.#read(0, signal))
        const [persisted, read] = await Promise.allSettled([this.#persist(inHand), readAhead])
        const next = read.status === 'fulfilled' ? read.value : null
        // A batch read while the write failed is already delivered to us: keep it, or it would sit
        // pending until a reclaim (RECLAIM_MIN_IDLE_MS) instead of being written when the database returns.
        if (persisted.status === 'fulfilled') {
          ackInBackground(inHand)
          inHand = next
          this.#failures = 0
        } else if (next) {
          inHand = mergeBatches(inHand, next)
        }
        if (persisted.status === 'rejected') throw persisted.reason
        if (read.status === 'rejected') throw read.reason
      } catch (err) {
        if ((err as Error).message?.includes('NOGROUP')) {
          log.warn('consumer group missing (Redis lost it?): recreating it')
          this.#streamsReadAt = 0
          await this.ensureGroups().catch(() => {})
          // Bounded: when the group cannot be recreated (stream no longer active) do not spin.
          if (this.#failures > 0) await backoff(err, 'consumer group still missing')
          else this.#failures++
          continue
        }
        if (signal.aborted && inHand) {
          // Shutting down and the batch cannot be committed: leave it pending for the next start.
          log.warn({ err, entries: inHand.events.length }, 'stopping with an uncommitted batch; it stays pending and will be reclaimed')
          break
        }
        await backoff(err, 'persisting issue events failed; retrying the same batch')
      }
    }
    await acking
  }

  async #persistAndAck (batch: Batch): Promise<BatchOutcome> {
    const outcome = await this.#persist(batch)
    await this.#ack(batch)
    return outcome
  }

  /** Commits a batch to Postgres; acknowledges nothing. */
  async #persist (batch: Batch): Promise<BatchOutcome> {
    const outcome = await this.#persister.persist(batch.events, batch.poison)
    this.stats.batches++
    this.stats.inserted += outcome.inserted
    this.stats.duplicates += outcome.duplicates
    this.stats.failed += outcome.failed
    if (outcome.failed > 0) this.#o.log.warn({ failed: outcome.failed }, 'entries parked in failed_issue_events')
    return outcome
  }

  async #ackUntilDone (batch: Batch, signal: AbortSignal): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.#ack(batch)
        return
      } catch (err) {
        if (signal.aborted) {
          this.#o.log.warn({ err, entries: batch.events.length }, 'stopping with a committed batch not acknowledged; its entries stay pending and will be reclaimed')
          return
        }
        if (attempt === 0) this.#o.log.warn({ err }, 'acknowledging a committed batch failed; retrying')
        await sleep(Math.min(100 * 2 ** attempt, 2000), undefined, { signal }).catch(() => {})
      }
    }
  }

  /** Acknowledges and trims a committed batch: one script call per stream, all pipelined. */
  async #ack (batch: Batch): Promise<void> {
    await Promise.all([...batch.ids].map(([stream, ids]) => ackAndTrim(this.#o.redis, stream, CONSUMER_GROUP, ids)))
  }

  /** One XREADGROUP over every active stream; null when nothing arrived. blockMs null = do not block. */
  async #read (blockMs: number | null, signal?: AbortSignal): Promise<Batch | null> {
    const streams = await this.#activeStreams()
    if (streams.length === 0) {
      const wakeUp = signal ? AbortSignal.any([signal, this.#idle.signal]) : this.#idle.signal
      if (blockMs) await sleep(blockMs, undefined, { signal: wakeUp }).catch(() => {})
      return null
    }
    const conn = this.#o.blockingRedis
    if (this.#blockingClientId === null) this.#blockingClientId = Number(await conn.client('ID'))
    if (this.#ownPendingFrom) {
      const own = await this.#readOwnPending(streams, this.#ownPendingFrom)
      if (own) return own
    }
    const block = blockMs ? ['BLOCK', blockMs] : []
    const read = (conn.xreadgroup as (...args: (string | number)[]) => Promise<unknown>)('GROUP', CONSUMER_GROUP, this.name,
      'COUNT', this.#o.batchSize, ...block, 'STREAMS', ...streams, ...streams.map(() => '>')) as Promise<StreamReply | null>
    // While Redis is down the read waits for the reconnect; stopping must not wait with it. Entries a
    // read abandoned this way stay pending in the group and are reclaimed.
    const reply = signal ? await abandonOnAbort(read, signal) : await read
    if (!reply) return null
    return this.#toBatch(reply, null)
  }

  /** One page of our own pending entries (history read, never blocks); null once there are none left. */
  async #readOwnPending (streams: string[], from: Map<string, string>): Promise<Batch | null> {
    const reply = await (this.#o.blockingRedis.xreadgroup as (...args: (string | number)[]) => Promise<unknown>)('GROUP', CONSUMER_GROUP, this.name,
      'COUNT', this.#o.batchSize, 'STREAMS', ...streams, ...streams.map((s) => from.get(s) ?? '0')) as StreamReply | null
    const found = (reply ?? []).filter(([, entries]) => entries.length > 0)
    if (found.length === 0) {
      this.#ownPendingFrom = null
      return null
    }
    for (const [stream, entries] of found) from.set(stream, entries[entries.length - 1]![0])
    return this.#toBatch(found, null)
  }

  #toBatch (reply: StreamReply, deliveries: Map<string, number> | null): Batch {
    const batch: Batch = { ids: new Map(), events: [], poison: [] }
    for (const [stream, entries] of reply) {
      const couponId = this.#o.keys.couponIdOfStream(stream)
      const ids: string[] = []
      for (const [id, fields] of entries) {
        ids.push(id)
        if (fields === null) continue
        const delivered = deliveries?.get(id) ?? 1
        const entry = decodeEntry(stream, couponId, id, fields)
        if (!isEvent(entry)) {
          batch.poison.push({ ...entry, deliveries: delivered })
        } else if (delivered > this.#o.maxDeliveries) {
          batch.poison.push({ streamKey: stream, id, payload: fieldsToObject(fields), error: `delivered ${delivered} times without being persisted`, deliveries: delivered })
        } else {
          batch.events.push(entry)
        }
      }
      if (ids.length > 0) batch.ids.set(stream, ids)
    }
    return batch
  }

  async #deliveryCounts (stream: string, entries: [string, unknown][]): Promise<Map<string, number>> {
    const first = entries[0]![0]
    const last = entries[entries.length - 1]![0]
    const rows = await this.#o.redis.xpending(stream, CONSUMER_GROUP, first, last, entries.length, this.name) as [string, string, number, number][]
    return new Map(rows.map(([id, , , count]) => [id, Number(count)]))
  }

  async #activeStreams (fresh = false): Promise<string[]> {
    if (fresh || Date.now() - this.#streamsReadAt > STREAM_LIST_TTL_MS) {
      const ids = await this.#o.redis.smembers(this.#o.keys.activeCoupons)
      const known = new Set(this.#streams)
      this.#streams = ids.sort((a, b) => Number(a) - Number(b)).map((id) => this.#o.keys.coupon(id).events)
      this.#streamsReadAt = Date.now()
      const added = this.#streams.filter((s) => !known.has(s))
      if (added.length > 0 && !fresh) await this.ensureGroups(added)
    }
    return this.#streams
  }

  async #unblock (): Promise<void> {
    if (this.#blockingClientId === null) return
    await this.#o.redis.client('UNBLOCK', this.#blockingClientId).catch(() => {})
  }
}

/** Runs consumer.reclaim() on a node-cron schedule (the web process and `npm run consume` alike). */
export interface MaintenanceOptions {
  /** coupons whose stream this process reactivated but could not put back on the read list */
  strandedCoupons?: () => number[]
  /** idempotency records older than this are pruned */
  idempotencyTtlMs?: number
}

export function schedulePeriodicReclaim (consumer: IssueEventConsumer, expression: string, log: FastifyBaseLogger,
  { strandedCoupons = () => [], idempotencyTtlMs }: MaintenanceOptions = {}): ScheduledTask {
  return cron.schedule(expression, async () => {
    // A reactivated stream whose SADD failed in this process: look for every such stream once.
    if (strandedCoupons().length > 0) await consumer.discoverStreams().catch((err) => { log.error({ err }, 'looking for unread streams failed') })
    // While our own writes fail, a reclaim cannot write either; it would only claim entries again
    // (our own batch in hand included) and push their delivery count past MAX_DELIVERIES, so that good
    // entries get parked as poison once the database is back.
    if (consumer.backingOff) return
    const perCoupon = await consumer.reclaim().catch((err) => { log.error({ err }, 'periodic reclaim failed') })
    if (perCoupon && Object.keys(perCoupon).length > 0) log.info({ perCoupon }, 'reclaimed abandoned entries')
    const pruned = await consumer.pruneEndedStreams().catch((err) => { log.error({ err }, 'pruning ended coupons failed') })
    if (pruned && pruned.length > 0) log.info({ coupons: pruned }, 'stopped reading the streams of ended, fully persisted coupons')
    if (idempotencyTtlMs !== undefined) await consumer.pruneIdempotency(idempotencyTtlMs).catch((err) => { log.error({ err }, 'pruning idempotency records failed') })
  }, { noOverlap: true, name: 'reclaim-pending-issue-events' })
}
