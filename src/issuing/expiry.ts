// The expiry job: campaigns with returnExpiredToStock get their expired, unredeemed units back in stock
// while they have not ended (README, "Expiry"). Every instance may run it on its own schedule
// (EXPIRY_CRON), two at once included: returnExpired.lua decides per unit, atomically with redeem.lua, and a
// unit returned once is marked so and skipped by everyone after.
//
// Finding the expired units costs no scan of the holders: issue.lua keeps, only for such campaigns, a
// sorted set of (expiresAt -> "userId|claim") in Redis, and the script reads just its due head. Postgres
// plus the unpersisted stream would have worked too, but would read rows every tick on every instance,
// lag behind Redis (where a redemption is first) and need the stream read besides; the zset is already in
// the one place that can decide, and a counter rebuild recomputes it with everything else.
import cron, { type ScheduledTask } from 'node-cron'
import type { FastifyBaseLogger } from 'fastify'
import type { RedisClient } from '../redis/client.js'
import type { Keys } from '../redis/keys.js'
import { ReturnExpiredCode } from '../redis/scripts.js'
import type { CouponStore } from './coupon-store.js'

/** Candidates one script call looks at: bounds how long Redis is busy with it. */
export const UNITS_PER_CALL = 100
/** Calls per coupon and tick: bounds one tick's work; what is left waits for the next tick. */
export const CALLS_PER_COUPON = 10

export interface ExpiryJobDeps {
  redis: RedisClient
  keys: Keys
  couponStore: Pick<CouponStore, 'returnExpired'>
  log: FastifyBaseLogger
}

export class ExpiryJob {
  readonly #redis: RedisClient
  readonly #keys: Keys
  readonly #store: Pick<CouponStore, 'returnExpired'>
  readonly #log: FastifyBaseLogger
  readonly #unitsPerCall: number
  readonly #callsPerCoupon: number

  constructor ({ redis, keys, couponStore, log }: ExpiryJobDeps, { unitsPerCall = UNITS_PER_CALL, callsPerCoupon = CALLS_PER_COUPON } = {}) {
    this.#redis = redis
    this.#keys = keys
    this.#store = couponStore
    this.#log = log
    this.#unitsPerCall = unitsPerCall
    this.#callsPerCoupon = callsPerCoupon
  }

  /**
   * One pass over the coupons the consumer reads (an ended coupon leaves that list, and returns nothing
   * anyway). Returns the units returned per coupon id (coupons that returned none are left out).
   */
  async tick (): Promise<Record<string, number>> {
    const returned: Record<string, number> = {}
    for (const id of await this.#redis.smembers(this.#keys.activeCoupons)) {
      try {
        const units = await this.returnExpiredOf(Number(id))
        if (units > 0) returned[id] = units
      } catch (err) {
        this.#log.warn({ err, couponId: Number(id) }, 'returning expired units failed; the next tick tries again')
      }
    }
    if (Object.keys(returned).length > 0) this.#log.info({ returned }, 'returned expired, unredeemed units to stock')
    return returned
  }

  /** Returns the coupon's due units, at most unitsPerCall × callsPerCoupon of them; how many were returned. */
  async returnExpiredOf (couponId: number): Promise<number> {
    let returned = 0
    for (let call = 0; call < this.#callsPerCoupon; call++) {
      const outcome = await this.#store.returnExpired(couponId, this.#unitsPerCall)
      if (outcome.code !== ReturnExpiredCode.DONE) break
      returned += outcome.returned
      if (!outcome.more) break
    }
    return returned
  }

  /** Runs tick() on a node-cron schedule, never two at once in this process. */
  schedule (expression: string): ScheduledTask {
    return cron.schedule(expression, async () => {
      await this.tick().catch((err) => { this.#log.warn({ err }, 'expiry job failed') })
    }, { noOverlap: true, name: 'expiry' })
  }
}
