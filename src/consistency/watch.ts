// The periodic consistency check of the active campaigns: what feeds the couponrush_inconsistencies gauge.
// A disagreement is logged at error level once when it is found, and once more (info) when it clears;
// the ticks in between stay quiet.
import cron, { type ScheduledTask } from 'node-cron'
import type { FastifyBaseLogger } from 'fastify'
import { checkConsistency, type ConsistencyDeps, type ConsistencyReport } from './check.js'

/**
 * Campaigns with more holders than this are left to the on-demand report (the route, npm run reconcile):
 * a check reads the holders and claims hashes and the coupon's rows whole, which every instance would do
 * every tick, in the middle of a rush.
 */
export const DEFAULT_WATCH_MAX_HOLDERS = 50_000

export class ConsistencyWatch {
  readonly #deps: ConsistencyDeps
  readonly #log: FastifyBaseLogger
  readonly #maxHolders: number
  /** coupon id -> the problems it was flagged with */
  readonly #flagged = new Map<string, string[]>()

  constructor (deps: ConsistencyDeps, log: FastifyBaseLogger, { maxHolders = DEFAULT_WATCH_MAX_HOLDERS } = {}) {
    this.#deps = deps
    this.#log = log
    this.#maxHolders = maxHolders
  }

  /** Active coupons whose books disagreed at their last check. */
  get inconsistent (): number {
    return this.#flagged.size
  }

  /** Checks every active coupon once, one after another (gentle on a busy Redis). */
  async tick (): Promise<Record<string, ConsistencyReport['status'] | 'failed' | 'skipped'>> {
    const { redis, keys } = this.#deps
    const ids = await redis.smembers(keys.activeCoupons)
    const seen: Record<string, ConsistencyReport['status'] | 'failed' | 'skipped'> = {}
    for (const id of ids) {
      let report: ConsistencyReport
      try {
        if (await redis.hlen(keys.coupon(id).holders) > this.#maxHolders) {
          seen[id] = 'skipped'
          continue
        }
        report = await checkConsistency(this.#deps, Number(id))
        // A disagreement is confirmed by a second look before it counts: an admin change in flight
        // (Redis updated, Postgres not yet committed) shows for a moment and is gone at once.
        if (report.status === 'inconsistent') report = await checkConsistency(this.#deps, Number(id))
      } catch (err) {
        seen[id] = 'failed'
        this.#log.warn({ err, couponId: Number(id) }, 'consistency check failed')
        continue
      }
      seen[id] = report.status
      if (report.status === 'inconsistent') {
        if (!this.#flagged.has(id)) {
          this.#log.error({ couponId: report.couponId, problems: report.problems, users: report.users.slice(0, 10), usersDiffering: report.usersDiffering, redis: report.redis, expected: report.expected },
            'coupon books do not balance: Redis counters disagree with Postgres plus the unpersisted entries (GET /admin/coupons/:id/consistency, npm run reconcile)')
        }
        this.#flagged.set(id, report.problems)
      } else if (this.#flagged.delete(id)) {
        this.#log.info({ couponId: report.couponId, status: report.status }, 'coupon books balance again')
      }
    }
    // A coupon that left the active set is no longer watched.
    for (const id of this.#flagged.keys()) if (!(id in seen)) this.#flagged.delete(id)
    return seen
  }

  /** Runs tick() on a node-cron schedule, never two at once. */
  schedule (expression: string): ScheduledTask {
    return cron.schedule(expression, async () => {
      await this.tick().catch((err) => { this.#log.warn({ err }, 'consistency check failed') })
    }, { noOverlap: true, name: 'consistency-watch' })
  }
}
