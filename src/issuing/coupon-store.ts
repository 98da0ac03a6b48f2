// Where a coupon is issued: the route calls issue(), which runs src/redis/scripts/issue.lua in one
// round trip and maps its return code to a typed error. Postgres is touched only when the counters
// must be rebuilt.
import type { Redis } from 'ioredis'
import type { Db } from '../db/client.js'
import type { Coupon } from '../db/queries/coupons.js'
import type { CouponKeys, Keys } from '../redis/keys.js'
import * as errors from '../errors.js'
import { restoreCounters } from './restore-counters.js'

export interface Issued {
  couponId: number
  userId: string
  issuedAt: Date
  claim: number
  entryId: string
  /** true when the outcome was replayed for a repeated Idempotency-Key */
  replayed: boolean
}

export interface Revoked {
  couponId: number
  userId: string
  revokedAt: Date
  units: number
  replayed: boolean
}

export interface CouponStoreOptions {
  redis: Redis
  db: Db
  keys: Keys
  backlogCap: number
  idempotencyTtlSeconds: number
}

type ScriptReply = [code: number, at: number, count: number, entryId: string, replayed: number]

const NEEDS_RESTORE = 1
const RESTORE_ATTEMPTS = 3
// Requests for a coupon id that does not exist reach Postgres (counters missing -> look it up);
// remembering the miss briefly keeps a flood of them off the database.
const UNKNOWN_COUPON_TTL_MS = 1000
const UNKNOWN_COUPON_CACHE_SIZE = 10_000
/** Key sets kept for the hot path; a bound, because coupon ids in requests are chosen by clients. */
const KEY_CACHE_LIMIT = 10_000

/** Any Redis failure that is not one of our codes becomes a 503 the client can act on. */
function redisFailure (err: unknown): Error {
  if (errors.isCatalogError(err)) return err
  if ((err as Error)?.name === 'ReplyError') return new errors.IssueScriptFailed({ cause: err })
  return new errors.RedisUnavailable({ cause: err })
}

export class CouponStore {
  readonly #redis: Redis
  readonly #db: Db
  readonly #keys: Keys
  readonly #backlogCap: string
  readonly #idempotencyTtl: string
  readonly #unknownCoupons = new Map<number, number>()
  /** One rebuild per coupon per process at a time; concurrent requests share its outcome. */
  readonly #restoring = new Map<number, Promise<boolean>>()
  readonly #couponKeys = new Map<number, CouponKeys>()

  constructor ({ redis, db, keys, backlogCap, idempotencyTtlSeconds }: CouponStoreOptions) {
    this.#redis = redis
    this.#db = db
    this.#keys = keys
    this.#backlogCap = String(backlogCap)
    this.#idempotencyTtl = String(idempotencyTtlSeconds)
  }

  /** The coupon's key names, built once per coupon instead of six strings per request. */
  #keysOf (couponId: number): CouponKeys {
    let k = this.#couponKeys.get(couponId)
    if (k === undefined) {
      if (this.#couponKeys.size >= KEY_CACHE_LIMIT) this.#couponKeys.clear()
      k = this.#keys.coupon(couponId)
      this.#couponKeys.set(couponId, k)
    }
    return k
  }

  /** Hands one unit of the coupon to the user or throws a catalog error saying why not. */
  async issue (couponId: number, userId: string, idempotencyKey = ''): Promise<Issued> {
    const k = this.#keysOf(couponId)
    const idem = idempotencyKey === '' ? k.meta : this.#keys.idempotency(couponId, 'issue', idempotencyKey)
    const reply = await this.#runWithRestore(couponId, () => this.#redis.issueCoupon(
      k.meta, k.stock, k.holders, k.claims, k.events, idem,
      couponId, userId, idempotencyKey, this.#idempotencyTtl, this.#backlogCap))
    const [code, at, claim, entryId, replayed] = reply
    switch (code) {
      case 0: return { couponId, userId, issuedAt: new Date(at), claim, entryId, replayed: replayed === 1 }
      case 2: throw new errors.AlreadyIssued(userId, couponId, at)
      case 3: throw new errors.SoldOut(couponId)
      case 4: throw new errors.NotStarted(couponId, new Date(at).toISOString())
      case 5: throw new errors.Ended(couponId, new Date(at).toISOString())
      case 6: throw new errors.BacklogFull(couponId)
      case 7: throw new errors.IdempotencyKeyReused()
      default: throw new errors.IssueScriptFailed()
    }
  }

  /** Takes back every unit the user holds and returns them to stock. */
  async revoke (couponId: number, userId: string, idempotencyKey = ''): Promise<Revoked> {
    const k = this.#keys.coupon(couponId)
    const idem = idempotencyKey === '' ? k.meta : this.#keys.idempotency(couponId, 'revoke', idempotencyKey)
    const [code, at, units, , replayed] = await this.#runWithRestore(couponId, () => this.#redis.revokeCoupon(
      k.meta, k.stock, k.holders, k.events, idem, couponId, userId, idempotencyKey, this.#idempotencyTtl))
    switch (code) {
      case 0:
        // A cancel may come after the coupon ended and its stream left the consumer's read list.
        await this.#redis.sadd(this.#keys.activeCoupons, String(couponId)).catch((err) => { throw redisFailure(err) })
        return { couponId, userId, revokedAt: new Date(at), units, replayed: replayed === 1 }
      case 2: throw new errors.IssueNotFound(userId, couponId)
      case 7: throw new errors.IdempotencyKeyReused()
      default: throw new errors.IssueScriptFailed()
    }
  }

  /** Installs the counters of a coupon just written to Postgres. */
  async load (coupon: Coupon): Promise<void> {
    await this.#restore(coupon.id)
  }

  /** Applies a changed window or added stock to live counters (missing counters pick it up on restore). */
  async update (coupon: Coupon, addedUnits: number): Promise<void> {
    const k = this.#keys.coupon(coupon.id)
    try {
      await this.#redis.updateCoupon(k.meta, k.stock, coupon.totalQuantity, coupon.startsAt.getTime(),
        coupon.endsAt === null ? '' : coupon.endsAt.getTime(), addedUnits)
    } catch (err) {
      throw redisFailure(err)
    }
  }

  /** Units left, rebuilding the counters first when they are missing. */
  async remaining (couponId: number): Promise<number> {
    const k = this.#keys.coupon(couponId)
    try {
      const left = await this.#redis.get(k.stock)
      if (left !== null) return Number(left)
      await this.#restore(couponId)
      return Number(await this.#redis.get(k.stock) ?? 0)
    } catch (err) {
      throw redisFailure(err)
    }
  }

  /** What a user holds of a coupon right now, persisted or not: [units held, last claim]. */
  async holding (couponId: number, userId: string): Promise<number> {
    const k = this.#keys.coupon(couponId)
    try {
      if (await this.#redis.exists(k.stock) === 0) await this.#restore(couponId)
      return Number(await this.#redis.hget(k.holders, userId) ?? 0)
    } catch (err) {
      throw redisFailure(err)
    }
  }

  /** Coupons (among the active ones) where Redis says the user holds something. */
  async couponsHeldInRedis (userId: string): Promise<number[]> {
    try {
      const ids = await this.#redis.smembers(this.#keys.activeCoupons)
      const held = await Promise.all(ids.map((id) => this.#redis.hget(this.#keys.coupon(id).holders, userId)))
      return ids.filter((_, i) => Number(held[i] ?? 0) > 0).map(Number)
    } catch (err) {
      throw redisFailure(err)
    }
  }

  async #restore (couponId: number): Promise<void> {
    const missUntil = this.#unknownCoupons.get(couponId)
    if (missUntil !== undefined && missUntil > Date.now()) throw new errors.CouponNotFound(couponId)
    let restoring = this.#restoring.get(couponId)
    if (!restoring) {
      restoring = restoreCounters({ redis: this.#redis, db: this.#db, keys: this.#keys }, couponId)
        .finally(() => this.#restoring.delete(couponId))
      this.#restoring.set(couponId, restoring)
    }
    if (await restoring) return
    if (this.#unknownCoupons.size >= UNKNOWN_COUPON_CACHE_SIZE) this.#unknownCoupons.clear()
    this.#unknownCoupons.set(couponId, Date.now() + UNKNOWN_COUPON_TTL_MS)
    throw new errors.CouponNotFound(couponId)
  }

  async #runWithRestore (couponId: number, run: () => Promise<ScriptReply>): Promise<ScriptReply> {
    try {
      for (let attempt = 0; attempt < RESTORE_ATTEMPTS; attempt++) {
        const reply = await run()
        if (reply[0] !== NEEDS_RESTORE) return reply
        await this.#restore(couponId)
      }
    } catch (err) {
      throw redisFailure(err)
    }
    throw new errors.Restoring(couponId)
  }
}
