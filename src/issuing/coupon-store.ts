// Where a coupon is issued: the route calls issue(), which runs src/redis/scripts/issue.lua in one
// round trip; refusals.ts maps its reply code to a catalog error. Postgres is touched only when the counters
// must be rebuilt, and by admin changes (which hold the coupon's row lock while Redis applies them).
import type { RedisClient } from '../redis/client.js'
import type { Db } from '../db/client.js'
import { findCoupon, updateCoupon as updateCouponRow, type Coupon, type CouponChanges } from '../db/queries/coupons.js'
import type { CouponKeys, Keys } from '../redis/keys.js'
import * as scripts from '../redis/scripts.js'
import { DiscardCode, IssueCode, NEEDS_RESTORE, RedemptionCode, RevokeCode, UpdateCode } from '../redis/scripts.js'
import * as errors from '../errors.js'
import { databaseFailure, redisFailure } from '../errors.js'
import { restoreCounters } from './restore-counters.js'
import { ClusterServerGuard, type CounterRoute, type ServerChangeGuard } from './server-change.js'
import type { Replication } from '../redis/replication-fence.js'
import { keySlot } from '../redis/slots.js'
import { issueRefusal, redemptionRefusal, revokeRefusal, soldOutFromMemory, type Refusal } from './refusals.js'
import { codeField, parseCode } from './codes.js'
import { SoldOutMarkers } from './sold-out-markers.js'

export interface Issued {
  couponId: number
  userId: string
  issuedAt: Date
  claim: number
  /** the unit's redeemable code (src/issuing/codes.ts) */
  code: string
  /** when the code stops being redeemable; null = never */
  expiresAt: Date | null
  entryId: string
  /** true when the outcome was replayed for a repeated Idempotency-Key */
  replayed: boolean
}

/** An issue request's outcome: the unit, or why not (losing outcomes are answers, not exceptions). */
export type IssueResult = { issued: Issued, refusal?: never } | { issued?: never, refusal: Readonly<Refusal> }

export interface Revoked {
  couponId: number
  userId: string
  revokedAt: Date
  units: number
  replayed: boolean
}

export interface FoundCode {
  couponId: number
  /** as the client should print it: upper-case */
  code: string
  unit: scripts.UnitState
}

export interface Redeemed {
  couponId: number
  code: string
  orderId: string
  userId: string
  claim: number
  /** the redemption's (or rollback's) moment */
  at: Date
  replayed: boolean
}

export interface Holding {
  /** units held now, persisted or not */
  units: number
  /** the user's last cancel as Redis knows it: claims up to `upTo` were revoked at `at` */
  lastCancel: { upTo: number, at: Date } | null
}

export interface CouponStoreOptions {
  redis: RedisClient
  db: Db
  keys: Keys
  backlogCap: number
  idempotencyTtlSeconds: number
  /** the sold-out short-circuit; absent = off */
  soldOutMarkers?: SoldOutMarkers
  /**
   * checks, after every reconnect, that Redis is still the server the counters belong to (on a cluster,
   * per primary, and the scripts then run on the primary's own connection); absent = never
   */
  serverGuard?: ServerChangeGuard | ClusterServerGuard
  /** REDIS_WAIT_REPLICAS: answer only once replicas have the write (needs serverGuard); absent = off */
  replicationFence?: Replication | null
}

const RESTORE_ATTEMPTS = 3
// Requests for a coupon id that does not exist reach Postgres (counters missing -> look it up);
// remembering the miss briefly keeps a flood of them off the database.
const UNKNOWN_COUPON_TTL_MS = 1000
const UNKNOWN_COUPON_CACHE_SIZE = 10_000
/** Key sets kept for the hot path; a bound, because coupon ids in requests are chosen by clients. */
const KEY_CACHE_LIMIT = 10_000

export class CouponStore {
  readonly #redis: RedisClient
  readonly #db: Db
  readonly #keys: Keys
  readonly #backlogCap: number
  readonly #idempotencyTtlSeconds: number
  readonly #unknownCoupons = new Map<number, number>()
  /** One rebuild per coupon per process at a time; concurrent requests share its outcome. */
  readonly #restoring = new Map<number, Promise<boolean>>()
  readonly #couponKeys = new Map<number, CouponKeys>()
  /** Coupons whose stream was reactivated, or counters rebuilt, but that could not be put on the read list (Redis failed). */
  readonly #stranded = new Set<number>()
  readonly soldOutMarkers: SoldOutMarkers
  readonly #serverGuard: ServerChangeGuard | ClusterServerGuard | undefined
  readonly #fence: Replication | null

  constructor ({ redis, db, keys, backlogCap, idempotencyTtlSeconds, soldOutMarkers = new SoldOutMarkers({ ttlMs: 0 }), serverGuard, replicationFence = null }: CouponStoreOptions) {
    if (replicationFence && !serverGuard) throw new Error('a replication fence needs the server guard (it compares the servers)')
    this.#serverGuard = serverGuard
    this.#fence = replicationFence
    this.#redis = redis
    this.#db = db
    this.#keys = keys
    this.#backlogCap = backlogCap
    this.#idempotencyTtlSeconds = idempotencyTtlSeconds
    this.soldOutMarkers = soldOutMarkers
  }

  /** The coupon's key names, built once per coupon instead of eight strings per request. */
  #keysOf (couponId: number): CouponKeys {
    let k = this.#couponKeys.get(couponId)
    if (k === undefined) {
      if (this.#couponKeys.size >= KEY_CACHE_LIMIT) this.#couponKeys.clear()
      k = this.#keys.coupon(couponId)
      this.#couponKeys.set(couponId, k)
    }
    return k
  }

  /**
   * Hands one unit of the coupon to the user, or says why not (a Refusal). Throws a catalog error only
   * when the outcome is not known or nothing could be decided (Redis, Postgres, a script failed).
   */
  async issue (couponId: number, userId: string, idempotencyKey = ''): Promise<IssueResult> {
    const markers = this.soldOutMarkers
    // A keyed request always asks Redis: its answer may have to be the replay of an earlier one.
    const unkeyed = idempotencyKey === ''
    if (unkeyed && markers.soldOut(couponId)) return { refusal: soldOutFromMemory(couponId) }
    const ticket = markers.ticket()
    const k = this.#keysOf(couponId)
    const [reply, route] = await this.#runWithRestore(couponId, (redis) => scripts.issue(redis, k, {
      userId, idempotencyKey, idempotencyTtlSeconds: this.#idempotencyTtlSeconds, backlogCap: this.#backlogCap
    }))
    if (reply.code !== IssueCode.ISSUED) {
      // For SOLD_OUT the script returns endsAt in `at` and its clock in `count` (see issue.lua).
      if (reply.code === IssueCode.SOLD_OUT && unkeyed && !reply.replayed) markers.markSoldOut(couponId, ticket, reply.at, reply.count)
      const refusal = issueRefusal(reply, couponId, userId)
      if (refusal instanceof Error) throw refusal
      return { refusal }
    }
    // A replay too: the first answer may have been REPLICATION_TIMEOUT.
    if (this.#fence) await this.#confirmReplicated(route)
    if (reply.reactivated) await this.#reactivate(couponId)
    return { issued: { couponId, userId, issuedAt: new Date(reply.at), claim: reply.count, code: reply.unitCode, expiresAt: reply.expiresAt > 0 ? new Date(reply.expiresAt) : null, entryId: reply.entryId, replayed: reply.replayed } }
  }

  /**
   * Takes back every unit the user holds and returns them to stock; refused (ALREADY_REDEEMED) while a
   * unit is redeemed, unless `force` (the route lets only an admin force).
   */
  async revoke (couponId: number, userId: string, idempotencyKey = '', force = false): Promise<Revoked> {
    const k = this.#keysOf(couponId)
    const [reply, route] = await this.#runWithRestore(couponId, (redis) =>
      scripts.revoke(redis, k, { couponId, userId, idempotencyKey, idempotencyTtlSeconds: this.#idempotencyTtlSeconds, force }), errors.CancelScriptFailed)
    if (reply.code !== RevokeCode.REVOKED) throw revokeRefusal(reply, couponId, userId)
    this.#stockMayHaveReturned(couponId)
    if (this.#fence) await this.#confirmReplicated(route)
    if (reply.reactivated) await this.#reactivate(couponId)
    return { couponId, userId, revokedAt: new Date(reply.at), units: reply.count, replayed: reply.replayed }
  }

  /**
   * The unit a code names and its state, from Redis (where every state is first). Any code that names
   * nothing, including one for a coupon that does not exist, is CODE_NOT_FOUND.
   */
  async lookupCode (code: string): Promise<FoundCode> {
    const parsed = parseCode(code)
    if (!parsed) throw new errors.CodeNotFound()
    const [reply] = await this.#runWithRestore(parsed.couponId, (redis) => scripts.lookupCode(redis, this.#keysOf(parsed.couponId), parsed.head), errors.RedeemScriptFailed)
      .catch(notFoundForUnknownCoupon)
    if (!reply.unit) throw new errors.CodeNotFound()
    return { couponId: parsed.couponId, code: code.toUpperCase(), unit: reply.unit }
  }

  /** Redeems the code for the order (exactly once), or rolls that order's redemption back. */
  async redeemOrRollback (action: 'redeem' | 'rollback', code: string, orderId: string): Promise<Redeemed> {
    const parsed = parseCode(code)
    if (!parsed) throw new errors.CodeNotFound()
    const [reply, route] = await this.#runWithRestore(parsed.couponId, (redis) =>
      scripts.redeemOrRollback(redis, this.#keysOf(parsed.couponId), action, parsed.head, orderId), errors.RedeemScriptFailed)
      .catch(notFoundForUnknownCoupon)
    if (reply.code !== RedemptionCode.DONE) throw redemptionRefusal(reply, orderId)
    // A replay too: a redemption a failover lost would let the code be redeemed for another order.
    if (this.#fence) await this.#confirmReplicated(route)
    if (reply.reactivated) await this.#reactivate(parsed.couponId)
    return { couponId: parsed.couponId, code: code.toUpperCase(), orderId, userId: reply.userId, claim: reply.claim, at: new Date(reply.at), replayed: reply.replayed }
  }

  /**
   * A script found the coupon's stream dormant (off the consumer's read list) and appended to it: put
   * it back before answering. If Redis fails right here the answer stands (the act happened); the
   * coupon is remembered for the maintenance tick, and a restarted consumer finds such streams too.
   */
  async #reactivate (couponId: number): Promise<void> {
    try {
      await this.#redis.sadd(this.#keys.activeCoupons, String(couponId))
    } catch {
      this.#stranded.add(couponId)
    }
  }

  /** Coupons whose reactivation failed, for the maintenance tick to put back (and forget). */
  takeStranded (): number[] {
    const ids = [...this.#stranded]
    this.#stranded.clear()
    return ids
  }

  /** The maintenance tick could not put these back either (Redis still failing): keep them for the next one. */
  strand (ids: number[]): void {
    for (const id of ids) this.#stranded.add(id)
  }

  /**
   * Installs the counters of a coupon just written to Postgres, unless they are there already (a replayed
   * creation whose first attempt got that far); returns the units left.
   */
  async load (coupon: Coupon): Promise<number> {
    // A request for this id a moment ago may have cached it as unknown.
    this.#unknownCoupons.delete(coupon.id)
    return await this.remaining(coupon.id)
  }

  /**
   * Applies an admin change to Postgres and the live counters as one step. The coupon's row is locked
   * for the whole change, so concurrent changes (from any instance) and counter rebuilds serialize;
   * Redis derives stock from the new total and what is out at that moment (never from a stale read),
   * and the row is committed only when Redis accepted it. A failure between the two writes leaves Redis
   * ahead of Postgres at worst; sending the same change again converges both.
   */
  async change (couponId: number, changes: CouponChanges): Promise<{ coupon: Coupon, remaining: number }> {
    const k = this.#keysOf(couponId)
    let route: CounterRoute | undefined
    for (let attempt = 0; attempt < RESTORE_ATTEMPTS; attempt++) {
      // Outside the transaction: a rebuild takes the row in share mode and would wait for us.
      await this.#ensureCounters(couponId).catch((err) => { throw asCallersFailure(err, errors.UpdateScriptFailed) })
      const result = await this.#db.transaction(async (tx) => {
        const current = await findCoupon(tx as unknown as Db, couponId, 'update')
        if (!current) throw new errors.CouponNotFound(couponId)
        const total = changes.totalQuantity ?? current.totalQuantity
        const startsAt = changes.startsAt ?? current.startsAt
        const endsAt = changes.endsAt === undefined ? current.endsAt : changes.endsAt
        const paused = changes.paused ?? current.paused
        const returnExpired = changes.returnExpiredToStock ?? current.returnExpiredToStock
        if (endsAt && endsAt.getTime() <= startsAt.getTime()) throw new errors.InvalidWindow()
        const to = route = await Promise.resolve(this.#route(couponId)).catch((err) => { throw redisFailure(err, errors.UpdateScriptFailed) })
        const { code, issued } = await scripts.updateCoupon(to.redis, k, { total, startsAtMs: startsAt.getTime(), endsAtMs: endsAt?.getTime() ?? null, paused, returnExpired })
          .catch((err) => {
            this.#refused(to, couponId, err)
            throw redisFailure(err, errors.UpdateScriptFailed)
          })
        if (code === UpdateCode.NEEDS_RESTORE) return null
        if (code === UpdateCode.STOCK_BELOW_ISSUED) throw new errors.StockBelowIssued(total, issued)
        // Discount and metadata live in Postgres only; they ride along under the same lock.
        const coupon = (await updateCouponRow(tx as unknown as Db, couponId, {
          totalQuantity: total, startsAt, endsAt, paused, returnExpiredToStock: returnExpired, discount: changes.discount, metadata: changes.metadata
        }))!
        return { coupon, remaining: total - issued, turnedOnExpiry: returnExpired && !current.returnExpiredToStock }
      }).catch((err) => { throw databaseFailure(err) })
      if (result) {
        this.#stockMayHaveReturned(couponId)
        // After the commit: Postgres holds the change either way, and a rebuild on a promoted replica
        // would take it from there; the wait only tells the caller the live counters have it too.
        if (this.#fence) await this.#confirmReplicated(route!)
        // returnExpiredToStock just turned on: the expiry job's candidates (every unit already out) are
        // added now, by the rebuild the missing zset marker asks for, instead of by the next issue. If
        // that fails, the change stands and the next issue, rollback or job run rebuilds them.
        if (result.turnedOnExpiry) await this.#restore(couponId).catch(() => {})
        return { coupon: result.coupon, remaining: result.remaining }
      }
    }
    throw new errors.Restoring(couponId)
  }

  /**
   * The expiry job's step for one coupon: returns up to `limit` expired, unredeemed units to stock
   * (returnExpired.lua), rebuilding the counters first when they are missing. Every instance may run it
   * at once: the script decides per unit, atomically with redeem.lua.
   */
  async returnExpired (couponId: number, limit: number): Promise<scripts.ReturnExpiredOutcome> {
    const [reply] = await this.#runWithRestore(couponId, (redis) => scripts.returnExpired(redis, this.#keysOf(couponId), limit))
    if (reply.returned > 0) this.#stockMayHaveReturned(couponId)
    if (reply.reactivated) await this.#reactivate(couponId)
    return reply
  }

  /** Units left, rebuilding the counters first when they are missing. */
  async remaining (couponId: number): Promise<number> {
    const k = this.#keysOf(couponId)
    try {
      const left = await this.#redis.get(k.stock)
      if (left !== null) return Number(left)
      await this.#restore(couponId)
      return Number(await this.#redis.get(k.stock) ?? 0)
    } catch (err) {
      throw redisFailure(err)
    }
  }

  /** What a user holds of a coupon right now, persisted or not, and their last cancel. */
  async holding (couponId: number, userId: string): Promise<Holding> {
    const k = this.#keysOf(couponId)
    try {
      await this.#ensureCounters(couponId)
      const [held, cancel] = await Promise.all([this.#redis.hget(k.holders, userId), this.#redis.hget(k.revoked, userId)])
      const [upTo, at] = (cancel ?? '').split('|').map(Number)
      return { units: Number(held ?? 0), lastCancel: cancel ? { upTo: upTo!, at: new Date(at!) } : null }
    } catch (err) {
      throw redisFailure(err)
    }
  }

  /**
   * Which of these claims of the user the expiry job has returned to stock (claim -> when), as Redis
   * knows it before the consumer writes it: the codes hash marks a returned unit (returnExpired.lua).
   */
  async returnedAtExpiry (couponId: number, userId: string, claims: number[]): Promise<Map<number, Date>> {
    const returned = new Map<number, Date>()
    if (claims.length === 0) return returned
    const k = this.#keysOf(couponId)
    try {
      const [secret, length] = await this.#redis.hmget(k.meta, 'codeSecret', 'codeLength')
      if (!secret || !length) return returned
      const units = await this.#redis.hmget(k.codes, ...claims.map((claim) => codeField(secret, userId, claim, Number(length))))
      claims.forEach((claim, i) => {
        const returnedAt = units[i]?.split('|')[3]
        if (returnedAt) returned.set(claim, new Date(Number(returnedAt)))
      })
      return returned
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

  /** Gives a parked issue's unit back to stock (unless a cancel did already); idempotent. */
  async discardParkedIssue (couponId: number, entry: scripts.DiscardArgs): Promise<'returned' | 'not-held'> {
    const [code, route] = await this.#runWithRestore(couponId, (redis) => scripts.discardIssue(redis, this.#keysOf(couponId), entry))
    if (code !== DiscardCode.RETURNED) return 'not-held'
    this.#stockMayHaveReturned(couponId)
    if (this.#fence) await this.#confirmReplicated(route)
    return 'returned'
  }

  /**
   * Where the coupon's scripts go now, once its counters may be used there: the one Redis, or on a
   * cluster the own connection of the primary serving its slot (ClusterServerGuard); without a guard,
   * the client as it is.
   */
  #route (couponId: number): CounterRoute | Promise<CounterRoute> {
    const guard = this.#serverGuard
    if (!guard) return { redis: this.#redis, watch: null, connection: 0, node: null }
    if (guard instanceof ClusterServerGuard) return guard.route(keySlot(this.#keysOf(couponId).stock))
    return guard.route()
  }

  /** A script on the route failed: on a cluster, a MOVED means the slot map is behind (the guard refreshes it). */
  #refused (route: CounterRoute, couponId: number, err: unknown): void {
    if (this.#serverGuard instanceof ClusterServerGuard) this.#serverGuard.refused(route, keySlot(this.#keysOf(couponId).stock), err)
  }

  /**
   * REDIS_WAIT_REPLICAS: returns once the replicas have what the script wrote on the route. Refuses
   * (REPLICATION_TIMEOUT, outcome unknown) when they did not confirm in time, or when the fence confirmed
   * on another server than the one the script ran on (a failover between the two).
   */
  async #confirmReplicated (route: CounterRoute): Promise<void> {
    const watch = route.watch!
    let fencedOn: string
    try {
      fencedOn = await this.#fence!.confirmWrites(route.node)
    } catch (err) {
      throw new errors.ReplicationTimeout({ cause: err })
    }
    if (watch.connection !== route.connection || watch.runId !== fencedOn) {
      throw new errors.ReplicationTimeout({ cause: new Error('the write and the fence reached different servers') })
    }
  }

  /**
   * This instance just gave stock back: its own marker ends now, not when the pub/sub message (published
   * by the same script, for every instance) arrives on the subscriber's socket a moment later, so the
   * caller's next request already sees the stock.
   */
  #stockMayHaveReturned (couponId: number): void {
    this.soldOutMarkers.invalidate(couponId)
  }

  async #ensureCounters (couponId: number): Promise<void> {
    const k = this.#keysOf(couponId)
    // Counters of another server (a promoted replica, a restart from disk) are dropped before any use.
    try {
      await this.#route(couponId)
    } catch (err) {
      throw redisFailure(err)
    }
    const present = await this.#redis.exists(k.stock).catch((err) => { throw redisFailure(err) })
    if (present === 0) await this.#restore(couponId)
  }

  async #restore (couponId: number): Promise<void> {
    const missUntil = this.#unknownCoupons.get(couponId)
    if (missUntil !== undefined && missUntil > Date.now()) throw new errors.CouponNotFound(couponId)
    let restoring = this.#restoring.get(couponId)
    if (!restoring) {
      restoring = restoreCounters({
        redis: this.#redis,
        db: this.#db,
        keys: this.#keys,
        idempotencyTtlSeconds: this.#idempotencyTtlSeconds,
        stranded: (id) => this.#stranded.add(id)
      }, couponId)
        .finally(() => this.#restoring.delete(couponId))
      this.#restoring.set(couponId, restoring)
    }
    if (await restoring) return
    if (this.#unknownCoupons.size >= UNKNOWN_COUPON_CACHE_SIZE) this.#unknownCoupons.clear()
    this.#unknownCoupons.set(couponId, Date.now() + UNKNOWN_COUPON_TTL_MS)
    throw new errors.CouponNotFound(couponId)
  }

  /** Runs the script on the coupon's route, rebuilding the counters when it finds them missing; the reply and the route it ran on. */
  async #runWithRestore<R extends { code: number } | number> (couponId: number, run: (redis: RedisClient) => Promise<R>, scriptFailed: errors.ScriptFailure = errors.IssueScriptFailed): Promise<[R, CounterRoute]> {
    let route: CounterRoute | undefined
    try {
      for (let attempt = 0; attempt < RESTORE_ATTEMPTS; attempt++) {
        // Counters of another server (a promoted replica, a restart from disk) are dropped before any use.
        route = await this.#route(couponId)
        const reply = await run(route.redis)
        if ((typeof reply === 'number' ? reply : reply.code) !== NEEDS_RESTORE) return [reply, route]
        await this.#restore(couponId)
      }
    } catch (err) {
      if (route) this.#refused(route, couponId, err)
      throw asCallersFailure(err, scriptFailed)
    }
    throw new errors.Restoring(couponId)
  }
}

/** A code whose coupon does not exist names nothing: the same answer as any unknown code. */
function notFoundForUnknownCoupon (err: unknown): never {
  if (err instanceof errors.CouponNotFound) throw new errors.CodeNotFound()
  throw err
}

/**
 * A counter rebuild is shared by every caller waiting for it and reports a refused script as
 * ISSUE_SCRIPT_FAILED; a cancel or a change answers with its own code (the one its route documents).
 */
function asCallersFailure (err: unknown, ScriptFailed: errors.ScriptFailure): Error {
  if (err instanceof errors.IssueScriptFailed && ScriptFailed !== errors.IssueScriptFailed) return new ScriptFailed({ cause: err })
  return redisFailure(err, ScriptFailed)
}
