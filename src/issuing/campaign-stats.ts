// Campaign statistics, cheap enough to poll every second during a rush. What decides an issue is never
// read or counted here twice:
// - issue.lua, revoke.lua, discardIssue.lua and returnExpired.lua keep issued/revoked/discarded/returned units, firstIssuedAt and
//   soldOutAt in the coupon's stats hash inside the scripts they already run (no extra round trip);
// - each instance counts rejections (most of them never reach Redis: the sold-out markers answer
//   them), issues per second and the persistence lag it sees in memory, and adds them to the stats hash
//   once a second (recordStats.lua; additive, so instances never overwrite each other);
// - a report reads that hash, the stock, the stream's group state and two indexed counts in Postgres.
import type { RedisClient } from '../redis/client.js'
import { and, count, eq, isNull } from 'drizzle-orm'
import type { Db } from '../db/client.js'
import { couponIssues, failedIssueEvents } from '../db/schema.js'
import { oldestUnacknowledgedMs } from '../persistence/lag.js'
import { consumerGroupInfo } from '../redis/groups.js'
import type { Keys } from '../redis/keys.js'
import { recordStats, type StatsDelta } from '../redis/scripts.js'

/** Coupons tracked between two flushes at most (ids of rate-limited requests come from clients). */
const MAX_TRACKED = 10_000

export class CampaignStats {
  readonly #redis: RedisClient
  readonly #keys: Keys
  #pending = new Map<number, StatsDelta>()

  constructor (redis: RedisClient, keys: Keys) {
    this.#redis = redis
    this.#keys = keys
  }

  #delta (couponId: number): StatsDelta | undefined {
    let delta = this.#pending.get(couponId)
    if (delta === undefined) {
      if (this.#pending.size >= MAX_TRACKED) return undefined
      this.#pending.set(couponId, delta = { rejected: new Map(), issuedPerSecond: new Map(), lagMs: 0 })
    }
    return delta
  }

  /** An issue request answered with this code (SOLD_OUT, ALREADY_ISSUED, RATE_LIMITED, BACKLOG_FULL, …). */
  countRejection (couponId: number, code: string): void {
    const rejected = this.#delta(couponId)?.rejected
    rejected?.set(code, (rejected.get(code) ?? 0) + 1)
  }

  /** A fresh 201, issued at `atMs` on Redis's clock. */
  countIssued (couponId: number, atMs: number): void {
    const perSecond = this.#delta(couponId)?.issuedPerSecond
    const second = Math.floor(atMs / 1000)
    perSecond?.set(second, (perSecond.get(second) ?? 0) + 1)
  }

  /** An entry of this coupon reached Postgres this long after it was issued. */
  noteLag (couponId: number, lagMs: number): void {
    const delta = this.#delta(couponId)
    if (delta && lagMs > delta.lagMs) delta.lagMs = lagMs
  }

  /** What this instance counted and has not flushed yet (a report adds it, so it never lags behind itself). */
  unflushedRejections (couponId: number): Map<string, number> {
    return this.#pending.get(couponId)?.rejected ?? new Map()
  }

  /** Adds everything counted since the last flush to Redis; what fails is kept for the next flush. */
  async flush (): Promise<void> {
    const flushing = this.#pending
    this.#pending = new Map()
    await Promise.all([...flushing].map(async ([couponId, delta]) => {
      try {
        await recordStats(this.#redis, this.#keys.coupon(couponId), delta)
      } catch {
        this.#mergeBack(couponId, delta)
      }
    }))
  }

  #mergeBack (couponId: number, failed: StatsDelta): void {
    const delta = this.#delta(couponId)
    if (!delta) return
    for (const [code, n] of failed.rejected) delta.rejected.set(code, (delta.rejected.get(code) ?? 0) + n)
    for (const [s, n] of failed.issuedPerSecond) delta.issuedPerSecond.set(s, (delta.issuedPerSecond.get(s) ?? 0) + n)
    delta.lagMs = Math.max(delta.lagMs, failed.lagMs)
  }
}

export interface CampaignStatsReport {
  couponId: number
  total: number
  remaining: number
  /** units handed out since the campaign started (a re-claim after a cancel counts again) */
  issued: number
  /** units given back by cancels */
  revoked: number
  /** units returned to stock by discarding parked entries */
  discarded: number
  /** expired, unredeemed units the expiry job returned to stock (returnExpiredToStock) */
  returned: number
  /** issue rows in Postgres (revoked ones included): issued minus what is on its way */
  persisted: number
  /** stream entries (issues and cancels) not yet acknowledged by the consumer group */
  unpersisted: number
  /** entries parked in failed_issue_events, neither retried nor discarded */
  parked: number
  rejected: Record<string, number>
  firstIssuedAt: Date | null
  /** the first moment the stock reached 0 */
  soldOutAt: Date | null
  peakIssuesPerSecond: number
  lagMs: { now: number, worst: number }
}

const ms = (value: string | undefined) => value === undefined ? null : new Date(Number(value))

/**
 * The statistics of one coupon (its counters must exist: the caller made sure, e.g. with `remaining()`).
 * Postgres is read with two counts on indexed columns of this coupon only.
 */
export async function campaignStats (db: Db, redis: RedisClient, keys: Keys, stats: CampaignStats, couponId: number, total: number): Promise<CampaignStatsReport> {
  const k = keys.coupon(couponId)
  const [[persisted], [parked], [stock, fields, time], group, oldest] = await Promise.all([
    db.select({ n: count() }).from(couponIssues).where(eq(couponIssues.couponId, couponId)),
    db.select({ n: count() }).from(failedIssueEvents)
      .where(and(eq(failedIssueEvents.streamKey, k.events), isNull(failedIssueEvents.retriedAt), isNull(failedIssueEvents.discardedAt))),
    redis.multi().get(k.stock).hgetall(k.stats).time().exec()
      .then((replies) => (replies ?? []).map(([err, value]) => { if (err) throw err; return value })),
    consumerGroupInfo(redis, k.events),
    oldestUnacknowledgedMs(redis, k.events)
  ])
  const h = fields as Record<string, string>
  const rejected: Record<string, number> = {}
  for (const [field, n] of Object.entries(h)) if (field.startsWith('rejected:')) rejected[field.slice('rejected:'.length)] = Number(n)
  for (const [code, n] of stats.unflushedRejections(couponId)) rejected[code] = (rejected[code] ?? 0) + n
  const unpersisted = group ? (group.lag ?? 0) + group.pending : 0
  // How far persistence is behind right now: the age of the oldest entry not yet acknowledged.
  const [seconds, micros] = time as [string, string]
  const redisNow = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000)
  const lagNow = oldest === null ? 0 : Math.max(0, redisNow - oldest)
  return {
    couponId,
    total,
    remaining: Number(stock ?? 0),
    issued: Number(h.issued ?? 0),
    revoked: Number(h.revoked ?? 0),
    discarded: Number(h.discarded ?? 0),
    returned: Number(h.returned ?? 0),
    persisted: persisted!.n,
    unpersisted,
    parked: parked!.n,
    rejected,
    firstIssuedAt: ms(h.firstIssuedAt),
    soldOutAt: ms(h.soldOutAt),
    peakIssuesPerSecond: Number(h.peakPerSecond ?? 0),
    lagMs: { now: lagNow, worst: Math.max(lagNow, Number(h.lagWorstMs ?? 0)) }
  }
}
