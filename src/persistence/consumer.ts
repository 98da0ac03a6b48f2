// The consumer-group loop that moves issue events from the coupons' streams into Postgres.
// read (XREADGROUP, blocking, own connection) -> persist (one statement) -> ack + trim (one script per stream).
// Reading the next batch and acknowledging the previous one overlap with writing the current one.
// Nothing is acknowledged before its commit.
import { EventEmitter } from 'node:events'
import { hostname } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import type { RedisClient } from '../redis/client.js'
import type { FastifyBaseLogger } from 'fastify'
import { pingDatabase, type Db } from '../db/client.js'
import type { FailedEntry } from '../db/queries/issues.js'
import { CONSUMER_GROUP, type Keys } from '../redis/keys.js'
import { ackAndTrim } from '../redis/scripts.js'
import { EntriesNotOnServer, StreamsNotConfirmed, type Replication } from '../redis/replication-fence.js'
import { countPerCoupon, largestStreamShare, mergeBatches, pickStreams, ReadSize, toBatch, type Batch, type StreamReply } from './batch.js'
import { StreamMaintenance } from './maintenance.js'
import { PersistBatch, type BatchOutcome } from './persist-batch.js'

export interface ConsumerOptions {
  /** connection for acks, claims and group management */
  redis: RedisClient
  /** dedicated connection for the blocking XREADGROUP */
  blockingRedis: RedisClient
  db: Db
  keys: Keys
  log: FastifyBaseLogger
  /** the largest read COUNT (per stream); the loop starts lower and grows toward it while reads come back full */
  batchSize: number
  /** the longest pause before reading again after a batch that did not fill its read; 0 = read on at once */
  lingerMs: number
  blockMs: number
  reclaimMinIdleMs: number
  maxDeliveries: number
  name?: string
  /** REDIS_WAIT_REPLICAS: a batch is committed only once the replicas have its entries; null/absent = off */
  replicationFence?: Replication | null
  /** EVENTS_ENABLED: announce persisted facts in the event outbox; absent = false */
  announceEvents?: boolean
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

const STREAM_LIST_TTL_MS = 1000
const MAX_BACKOFF_MS = 5000
/**
 * Redis Cluster: how often an idle consumer polls its streams. A cluster refuses the multi-stream
 * XREADGROUP (CROSSSLOT), so it reads one stream per call, without BLOCK: a blocking read holds its
 * node connection for the block time (delaying every other stream's read behind it), and CLIENT UNBLOCK
 * cannot name the right node's client through a Cluster client. A poll is cut short by wake() and stop().
 */
const CLUSTER_POLL_MS = 100
/** Redis Cluster: per-stream reads in flight at once (pipelined per node by the client). */
const CLUSTER_READ_WIDTH = 64
/**
 * Redis Cluster with REDIS_WAIT_REPLICAS: after a batch was committed except for the streams of a primary
 * whose replicas did not confirm, the pause before trying those again. Short and fixed (no growing
 * backoff): the other primaries' coupons are committed in every round.
 */
const PARTLY_COMMITTED_PAUSE_MS = 200

/**
 * Redis Cluster with REDIS_WAIT_REPLICAS: a batch was committed for the streams whose primary confirmed
 * replication (`committed`, to acknowledge), not for `unconfirmed` (their entries stay pending on us).
 */
class PartlyCommitted extends Error {
  override name = 'PartlyCommitted'
  constructor (readonly committed: Batch | null, readonly unconfirmed: Set<string>, readonly failure: unknown) {
    super(`committed ${committed?.ids.size ?? 0} stream(s), not ${unconfirmed.size}: ${(failure as Error)?.message ?? failure}`, { cause: failure })
  }
}
function abandonOnAbort<T> (promise: Promise<T>, signal: AbortSignal): Promise<T | null> {
  if (signal.aborted) return promise
  return new Promise((resolve, reject) => {
    const onAbort = () => setTimeout(() => resolve(null), 100)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

/** What the consumer tells listeners (metrics, tests: `await once(consumer, 'batch')`). */
export interface ConsumerEvents {
  /** a batch was committed (not yet acknowledged) */
  batch: [outcome: BatchOutcome & { entries: number, lagMsByCoupon: Map<number, number> }]
  /** entries were parked in failed_issue_events */
  parked: [entries: FailedEntry[]]
  /** a round failed; the loop waits this long and retries the same batch */
  backoff: [failure: { error: unknown, retryInMs: number, what: string }]
  /** abandoned entries were claimed and persisted (per coupon), or found deleted while pending */
  reclaimed: [reclaim: { perCoupon: Record<string, number>, deletedWhilePending: number }]
}

/** Per coupon: how long after its issue the batch's oldest event was committed (local clock against Redis's, so approximate). */
function lagByCoupon (batch: Batch): Map<number, number> {
  const now = Date.now()
  const lag = new Map<number, number>()
  for (const event of batch.events) {
    const ms = now - event.at
    if (ms > (lag.get(event.couponId) ?? -1)) lag.set(event.couponId, ms)
  }
  return lag
}

export function defaultConsumerName () {
  return `${hostname()}-${process.pid}`
}

export class IssueEventConsumer extends EventEmitter<ConsumerEvents> {
  readonly name: string
  /** which streams the loop reads, and what Redis may forget (maintenance.ts) */
  readonly maintenance: StreamMaintenance
  readonly stats: ConsumerStats = { batches: 0, inserted: 0, duplicates: 0, failed: 0, deletedWhilePending: 0 }
  readonly #o: ConsumerOptions
  readonly #persister: PersistBatch
  readonly #decoding: { couponIdOfStream: (stream: string) => number | null, maxDeliveries: number }
  readonly #size: ReadSize
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
  /** Redis Cluster: reads go one stream at a time (see CLUSTER_POLL_MS) */
  readonly #cluster: boolean
  /**
   * Redis Cluster: streams whose last read failed (its reply may have been lost with the connection, the
   * entries delivered to us): the next reads return our pending entries after this id first.
   */
  readonly #ownPendingByStream = new Map<string, string>()
  /** Redis Cluster: when the failure of a stream's read was last logged (one line per stream per minute) */
  readonly #readFailureLoggedAt = new Map<string, number>()

  constructor (options: ConsumerOptions) {
    super()
    this.#o = options
    this.maintenance = new StreamMaintenance(options, () => { this.#streamsReadAt = 0 })
    this.name = options.name ?? defaultConsumerName()
    this.#persister = new PersistBatch(options.db, { maybeSoldOut: (ids) => maybeSoldOut(options.redis, options.keys, ids), announce: options.announceEvents ?? false })
    this.#size = new ReadSize(options.batchSize, options.lingerMs)
    this.#decoding = { couponIdOfStream: options.keys.couponIdOfStream, maxDeliveries: options.maxDeliveries }
    this.#cluster = options.blockingRedis.isCluster
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
    let deletedWhilePending = 0
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
          deletedWhilePending += deleted.length
          this.#o.log.error({ stream, ids: deleted }, 'pending entries were deleted from the stream before they were persisted')
        }
      } while (cursor !== '0-0')
      for (let i = 0; i < claimed.length; i += this.#o.batchSize) {
        const entries = claimed.slice(i, i + this.#o.batchSize)
        const deliveries = await this.#deliveryCounts(stream, entries)
        const batch = toBatch([[stream, entries]], this.#decoding, deliveries)
        await this.#persistAndAck(batch)
        countPerCoupon(batch, this.#o.keys.couponIdOfStream, perCoupon)
      }
    }
    if (Object.keys(perCoupon).length > 0 || deletedWhilePending > 0) this.emit('reclaimed', { perCoupon, deletedWhilePending })
    return perCoupon
  }

  /** One-shot flush: reclaim every pending entry regardless of idle time, then read until the streams are empty. */
  async drain (): Promise<DrainReport> {
    await this.maintenance.discoverStreams()
    await this.ensureGroups()
    const perCoupon = await this.reclaim(0)
    for (;;) {
      const batch = await this.#read(null)
      if (!batch) break
      await this.#persistAndAck(batch)
      countPerCoupon(batch, this.#o.keys.couponIdOfStream, perCoupon)
    }
    return { perCoupon, stats: { ...this.stats } }
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
      this.emit('backoff', { error: err, retryInMs: delay, what })
      await sleep(delay, undefined, { signal }).catch(() => {})
    }
    while (!signal.aborted) {
      try {
        await this.maintenance.discoverStreams()
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
        // The read size decides the linger (ReadSize): each batch costs the web process a read, an insert
        // and an ack whatever its size, so a loop that keeps up waits a little to write fewer, larger ones.
        const linger = inHand.lingerMs ?? 0
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
        } else if (persisted.reason instanceof PartlyCommitted) {
          // Redis Cluster: some primaries' replicas did not confirm (a replica down, a failover). Their
          // streams' entries stay pending on us and the next reads return them first (own pending), so
          // the batch in hand is what was read meanwhile; the other primaries' coupons went through.
          const partly = persisted.reason
          if (partly.committed) ackInBackground(partly.committed)
          for (const stream of partly.unconfirmed) this.#ownPendingByStream.set(stream, '0')
          inHand = next
          if (!partly.committed) {
            await backoff(partly.failure, 'no primary confirmed the replication of the batch\'s entries; they are read again')
            continue
          }
          this.#failures = 0
          log.warn({ err: partly.failure, streams: partly.unconfirmed.size }, 'entries of some streams not confirmed by their primary\'s replicas; the rest was committed')
          this.emit('backoff', { error: partly.failure, retryInMs: PARTLY_COMMITTED_PAUSE_MS, what: 'some streams not confirmed by their replicas' })
          await sleep(PARTLY_COMMITTED_PAUSE_MS, undefined, { signal }).catch(() => {})
          continue
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
        if (err instanceof EntriesNotOnServer && inHand) {
          // Read from a master a failover replaced: the new one may never have had some of these entries
          // (never confirmed, so never answered), so retrying would spin forever. Drop the batch unacked:
          // those of its entries the new master has are pending there and get reclaimed, the others are
          // read afresh.
          log.warn({ err: (err as Error).message, entries: inHand.events.length + inHand.poison.length },
            'the batch in hand is not on the current Redis server (failover): dropped, to be reclaimed or read again there')
          inHand = null
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
    let outcome: BatchOutcome
    try {
      outcome = await this.#persist(batch)
    } catch (err) {
      if (!(err instanceof PartlyCommitted)) throw err
      // The rest stays pending on us, for the next reclaim or drain.
      if (err.committed) await this.#ack(err.committed)
      throw err.failure
    }
    await this.#ack(batch)
    return outcome
  }

  /** Commits a batch to Postgres; acknowledges nothing. */
  async #persist (batch: Batch): Promise<BatchOutcome> {
    // Committed entries a failover then loses from Redis would be rows the new master's counters do not
    // count; with a fence nothing is committed before the replicas have it (a refusal: retried later).
    if (this.#o.replicationFence) {
      try {
        await this.#o.replicationFence.confirmEntries(new Map([...batch.ids].map(([stream, ids]) => [stream, ids[ids.length - 1]!])))
      } catch (err) {
        // Redis Cluster: commit what the confirming primaries hold, and say what was left out.
        if (!(err instanceof StreamsNotConfirmed)) throw err
        const committed = err.confirmed.size > 0 ? pickStreams(batch, err.confirmed) : null
        if (committed) await this.#commit(committed)
        throw new PartlyCommitted(committed, err.unconfirmed, err.failure)
      }
    }
    return await this.#commit(batch)
  }

  async #commit (batch: Batch): Promise<BatchOutcome> {
    const outcome = await this.#persister.persist(batch.events, batch.poison)
    this.stats.batches++
    this.stats.inserted += outcome.inserted
    this.stats.duplicates += outcome.duplicates
    this.stats.failed += outcome.failed
    if (outcome.failed > 0) {
      this.#o.log.warn({ failed: outcome.failed }, 'entries parked in failed_issue_events')
      this.emit('parked', outcome.parked)
    }
    this.emit('batch', { ...outcome, entries: batch.events.length + batch.poison.length, lagMsByCoupon: lagByCoupon(batch) })
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
    const wakeUp = () => signal ? AbortSignal.any([signal, this.#idle.signal]) : this.#idle.signal
    if (streams.length === 0) {
      if (blockMs) await sleep(blockMs, undefined, { signal: wakeUp() }).catch(() => {})
      return null
    }
    if (this.#cluster) {
      // As below: while the cluster is out of reach the reads wait in the offline queue; a stop does not.
      const reading = this.#readEachStream(streams)
      const batch = signal ? await abandonOnAbort(reading, signal) : await reading
      if (batch) return batch
      // Poll instead of BLOCK (CLUSTER_POLL_MS); wake() and stop() cut the pause short.
      if (blockMs) await sleep(Math.min(blockMs, CLUSTER_POLL_MS), undefined, { signal: wakeUp() }).catch(() => {})
      return null
    }
    const conn = this.#o.blockingRedis
    if (this.#blockingClientId === null) this.#blockingClientId = Number(await conn.client('ID'))
    if (this.#ownPendingFrom) {
      const own = await this.#readOwnPending(streams, this.#ownPendingFrom)
      if (own) return own
    }
    const block = blockMs ? ['BLOCK', blockMs] : []
    const count = this.#size.count
    const read = (conn.xreadgroup as (...args: (string | number)[]) => Promise<unknown>)('GROUP', CONSUMER_GROUP, this.name,
      'COUNT', count, ...block, 'STREAMS', ...streams, ...streams.map(() => '>')) as Promise<StreamReply | null>
    // While Redis is down the read waits for the reconnect; stopping must not wait with it. Entries a
    // read abandoned this way stay pending in the group and are reclaimed.
    const reply = signal ? await abandonOnAbort(read, signal) : await read
    if (!reply) {
      this.#size.read(0)
      return null
    }
    const batch = toBatch(reply, this.#decoding)
    batch.lingerMs = this.#size.read(largestStreamShare(batch), count)
    return batch
  }

  /**
   * Redis Cluster: one non-blocking XREADGROUP per stream (a cluster refuses one over several slots),
   * CLUSTER_READ_WIDTH at a time; null when nothing arrived. A stream whose read fails (its node down,
   * failing over) is skipped this round, so one shard's trouble does not stall the others; when every
   * read fails the error is thrown (the loop backs off). After a failed read the stream's own pending
   * entries are read first: the failed reply may have delivered entries that no '>' read returns again.
   */
  async #readEachStream (streams: string[]): Promise<Batch | null> {
    const conn = this.#o.blockingRedis
    const count = this.#size.count
    const replies: StreamReply = []
    const failures: unknown[] = []
    let refused: unknown = null
    for (let i = 0; i < streams.length; i += CLUSTER_READ_WIDTH) {
      const slice = streams.slice(i, i + CLUSTER_READ_WIDTH)
      const settled = await Promise.allSettled(slice.map(async (stream) => {
        const from = this.#ownPendingByStream.get(stream)
        const reply = await (conn.xreadgroup as (...args: (string | number)[]) => Promise<unknown>)('GROUP', CONSUMER_GROUP, this.name,
          'COUNT', count, 'STREAMS', stream, from ?? '>') as StreamReply | null
        const entries = reply?.[0]?.[1] ?? []
        if (from !== undefined) {
          // Our own pending entries, page by page; none left: back to new entries.
          if (entries.length === 0) this.#ownPendingByStream.delete(stream)
          else this.#ownPendingByStream.set(stream, entries[entries.length - 1]![0])
        }
        return entries.length > 0 ? [stream, entries] as StreamReply[number] : null
      }))
      settled.forEach((result, j) => {
        const stream = slice[j]!
        if (result.status === 'fulfilled') {
          if (result.value) replies.push(result.value)
          return
        }
        failures.push(result.reason)
        // NOGROUP is for the loop (it recreates the group); anything else: this stream only, next round.
        if ((result.reason as Error)?.message?.includes('NOGROUP')) refused = result.reason
        if (!this.#ownPendingByStream.has(stream)) this.#ownPendingByStream.set(stream, '0')
        const loggedAt = this.#readFailureLoggedAt.get(stream) ?? 0
        if (Date.now() - loggedAt > 60_000) {
          this.#readFailureLoggedAt.set(stream, Date.now())
          this.#o.log.warn({ err: result.reason, stream }, 'reading a stream failed; the other streams are read on')
        }
      })
    }
    if (refused) throw refused
    if (replies.length === 0) {
      if (failures.length === streams.length) throw failures[0]
      this.#size.read(0)
      return null
    }
    const batch = toBatch(replies, this.#decoding)
    batch.lingerMs = this.#size.read(largestStreamShare(batch), count)
    return batch
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
    return toBatch(found, this.#decoding)
  }

  async #deliveryCounts (stream: string, entries: [string, unknown][]): Promise<Map<string, number>> {
    const first = entries[0]![0]
    const last = entries[entries.length - 1]![0]
    const rows = await this.#o.redis.xpending(stream, CONSUMER_GROUP, first, last, entries.length, this.name) as [string, string, number, number][]
    return new Map(rows.map(([id, , , count]) => [id, Number(count)]))
  }

  async #activeStreams (fresh = false): Promise<string[]> {
    if (fresh || Date.now() - this.#streamsReadAt > STREAM_LIST_TTL_MS) {
      let ids: string[]
      try {
        ids = await this.#o.redis.smembers(this.#o.keys.activeCoupons)
      } catch (err) {
        // Redis Cluster: the active set lives on one shard. While that shard is down, read (and reclaim)
        // the streams known from the last good read, so the other shards' coupons keep being persisted;
        // a coupon added meanwhile waits for the set to come back. One Redis: nothing else would work either.
        if (!this.#cluster || this.#streams.length === 0) throw err
        this.#o.log.warn({ err }, 'reading the active coupon set failed; reading the streams known before')
        this.#streamsReadAt = Date.now()
        return this.#streams
      }
      const known = new Set(this.#streams)
      this.#streams = ids.sort((a, b) => Number(a) - Number(b)).map((id) => this.#o.keys.coupon(id).events)
      this.#streamsReadAt = Date.now()
      const added = this.#streams.filter((s) => !known.has(s))
      if (added.length > 0 && !fresh) await this.ensureGroups(added)
    }
    return this.#streams
  }

  async #unblock (): Promise<void> {
    // A Redis Cluster consumer never blocks (it polls): aborting the idle signal is the whole wake-up.
    if (this.#cluster || this.#blockingClientId === null) return
    await this.#o.redis.client('UNBLOCK', this.#blockingClientId).catch(() => {})
  }
}

/**
 * The coupons whose Redis stock is 0 or unknown: only those can have sold out in Postgres, so only
 * those are counted for coupon.sold_out (persist-batch.ts). A Redis failure answers "all of them":
 * a wasted count, never a missed event.
 */
async function maybeSoldOut (redis: RedisClient, keys: Keys, couponIds: number[]): Promise<number[]> {
  if (redis.isCluster) {
    // A cluster refuses one pipeline over several nodes' keys; single GETs are auto-pipelined per node.
    const replies = await Promise.allSettled(couponIds.map((id) => redis.get(keys.coupon(id).stock)))
    return couponIds.filter((_, i) => {
      const reply = replies[i]!
      return reply.status === 'rejected' || reply.value === null || !(Number(reply.value) > 0)
    })
  }
  try {
    const pipeline = redis.pipeline()
    for (const id of couponIds) pipeline.get(keys.coupon(id).stock)
    const replies = (await pipeline.exec()) ?? []
    return couponIds.filter((_, i) => {
      const [err, value] = replies[i] ?? [new Error('no reply'), null]
      return err !== null || value === null || !(Number(value) > 0)
    })
  } catch {
    return couponIds
  }
}
