// The consumer's housekeeping, beside the loop (as platformatic/job-queue keeps its reaper beside its
// consumer): which streams the loop reads, and what Redis may forget. The periodic tick also runs the
// consumer's reclaim of abandoned entries. Runs on a node-cron schedule in the web process and in
// `npm run consume` alike.
import cron, { type ScheduledTask } from 'node-cron'
import type { FastifyBaseLogger } from 'fastify'
import { COMPLETE_MARKER, CONSUMER_GROUP, type Keys } from '../redis/keys.js'
import { markDormant } from '../redis/scripts.js'
import { scanEveryPrimary, type RedisClient } from '../redis/client.js'
import type { IssueEventConsumer } from './consumer.js'

/** An ended coupon stays on the read list this long, for late cancels to be read without a detour. */
export const PRUNE_GRACE_MS = 60_000

export interface MaintenanceDeps {
  redis: RedisClient
  keys: Keys
  log: FastifyBaseLogger
}

export class StreamMaintenance {
  readonly #redis: RedisClient
  readonly #keys: Keys
  readonly #log: FastifyBaseLogger
  /** the read list changed: the consumer reads it again instead of within a second */
  readonly #listChanged: () => void

  constructor ({ redis, keys, log }: MaintenanceDeps, listChanged: () => void = () => {}) {
    this.#redis = redis
    this.#keys = keys
    this.#log = log
    this.#listChanged = listChanged
  }

  /**
   * Drops ended coupons whose events are all persisted from the set of streams the loop reads: every
   * stream in that set is part of every XREADGROUP. The coupon leaves the set first and is then marked
   * dormant only if its stream is settled (markDormant.lua); an entry appended before the mark keeps it
   * in the set, one appended after it finds the mark and puts it back (issue.lua/revoke.lua answer
   * `reactivated`). No stream with unpersisted entries stays off the list, whatever code path wrote.
   */
  async pruneEndedStreams (graceMs = PRUNE_GRACE_MS): Promise<string[]> {
    const redis = this.#redis
    const pruned: string[] = []
    for (const id of await redis.smembers(this.#keys.activeCoupons)) {
      const k = this.#keys.coupon(id)
      const endsAt = Number(await redis.hget(k.meta, 'endsAt') || NaN)
      if (!(endsAt + graceMs < Date.now())) continue
      await redis.srem(this.#keys.activeCoupons, id)
      if (await markDormant(redis, k, CONSUMER_GROUP)) pruned.push(id)
      else await redis.sadd(this.#keys.activeCoupons, id)
    }
    if (pruned.length > 0) this.#listChanged()
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
    const redis = this.#redis
    const found: string[] = []
    const active = new Set(await redis.smembers(this.#keys.activeCoupons))
    // Every primary of a cluster (SCAN on a Cluster client would see one node's keys only).
    for await (const streams of scanEveryPrimary(redis, this.#keys.eventStreamPattern, 'stream')) {
      for (const stream of streams) {
        const couponId = this.#keys.couponIdOfStream(stream)
        if (couponId === null || active.has(String(couponId))) continue
        if (await markDormant(redis, this.#keys.coupon(couponId), CONSUMER_GROUP)) continue
        await redis.sadd(this.#keys.activeCoupons, String(couponId))
        found.push(String(couponId))
      }
    }
    if (found.length > 0) {
      this.#listChanged()
      this.#log.warn({ coupons: found }, 'found coupon streams with unpersisted entries off the read list; reading them again')
    }
    return found
  }

  /**
   * Deletes idempotency records older than the TTL from the active coupons' hashes (they carry no TTL
   * of their own, so that eviction cannot pick them first; the scripts already ignore expired ones).
   */
  async pruneIdempotency (ttlMs: number): Promise<number> {
    const redis = this.#redis
    let deleted = 0
    const oldest = Date.now() - ttlMs
    for (const id of await redis.smembers(this.#keys.activeCoupons)) {
      const hash = this.#keys.coupon(id).idempotency
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
}

export interface MaintenanceOptions {
  /** coupons whose stream this process reactivated but could not put back on the read list */
  strandedCoupons?: () => number[]
  /** hands coupons back that strandedCoupons() gave out when the tick could not put them back either */
  strandedAgain?: (couponIds: number[]) => void
  /** idempotency records older than this are pruned */
  idempotencyTtlMs?: number
}

/** One maintenance pass: what the cron runs, and what tests and the fuzzer call directly. */
export async function maintenanceTick (consumer: IssueEventConsumer, log: FastifyBaseLogger, { strandedCoupons = () => [], strandedAgain = () => {}, idempotencyTtlMs }: MaintenanceOptions = {}): Promise<void> {
  const { maintenance } = consumer
  // A reactivated stream whose SADD failed in this process: look for every such stream once. When that
  // fails too (on a cluster, the active set's shard may still be down), try again at the next tick.
  const stranded = strandedCoupons()
  if (stranded.length > 0) {
    await maintenance.discoverStreams().catch((err) => {
      strandedAgain(stranded)
      log.error({ err }, 'looking for unread streams failed')
    })
  }
  // While our own writes fail, a reclaim cannot write either; it would only claim entries again
  // (our own batch in hand included) and push their delivery count past MAX_DELIVERIES, so that good
  // entries get parked as poison once the database is back.
  if (consumer.backingOff) return
  const perCoupon = await consumer.reclaim().catch((err) => { log.error({ err }, 'periodic reclaim failed') })
  if (perCoupon && Object.keys(perCoupon).length > 0) log.info({ perCoupon }, 'reclaimed abandoned entries')
  const pruned = await maintenance.pruneEndedStreams().catch((err) => { log.error({ err }, 'pruning ended coupons failed') })
  if (pruned && pruned.length > 0) log.info({ coupons: pruned }, 'stopped reading the streams of ended, fully persisted coupons')
  if (idempotencyTtlMs !== undefined) await maintenance.pruneIdempotency(idempotencyTtlMs).catch((err) => { log.error({ err }, 'pruning idempotency records failed') })
}

/** Runs maintenanceTick on a node-cron schedule, never two at once. */
export function scheduleMaintenance (consumer: IssueEventConsumer, expression: string, log: FastifyBaseLogger, options: MaintenanceOptions = {}): ScheduledTask {
  return cron.schedule(expression, () => maintenanceTick(consumer, log, options), { noOverlap: true, name: 'consumer-maintenance' })
}
