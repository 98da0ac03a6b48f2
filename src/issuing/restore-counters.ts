// Rebuilding a coupon's Redis counters when they are missing (expired, evicted, Redis restarted).
// The truth is Postgres PLUS the events still in the stream: restoring from Postgres alone would hand
// out again every unit whose event is not persisted yet.
import type { RedisClient } from '../redis/client.js'
import { findCoupon, type Coupon } from '../db/queries/coupons.js'
import { issuesOfCoupon, parkedEntriesOfStream, redemptionsOfCoupon, revocationsOfCoupon, type PersistedIssue, type PersistedRedemption, type PersistedRevocation } from '../db/queries/issues.js'
import type { Db } from '../db/client.js'
import { CONSUMER_GROUP, type Keys } from '../redis/keys.js'
import { compareEntryIds } from '../redis/groups.js'
import { RestoreCode, restoreCounters as installCounters, type CounterValues } from '../redis/scripts.js'
import { decodeEntry, isEvent, isRedemption } from '../stream/events.js'
import { databaseFailure, redisFailure, Restoring } from '../errors.js'
import { codeField, codeTail } from './codes.js'
import { expiresAt, parseValidFor } from './validity.js'

export type CounterState = Pick<CounterValues, 'stock' | 'users' | 'idempotency' | 'lastCancels' | 'codes' | 'redemptions' | 'expiring'>

type RawEntry = [id: string, fields: string[]]

interface Claim { at: number, revoked: boolean, entryId: string, idempotencyKey: string | null, returnedAt?: number }
/** A unit's last redemption fact so far: which one is last is decided by stream id. */
interface Redemption { kind: 'd' | 'u', orderId: string, at: number, entryId: string }
interface Cancel { upTo: number | null, at: number, units: number, entryId: string, idempotencyKey: string | null }

/** The idempotency record of an outcome, as includes/outcomes.lua writes it (recorded at the moment of the act). */
const record = (userId: string, at: number, count: number, entryId: string) => `${userId}|0|${at}|${count}|${entryId}|${at}`

/**
 * Pure: the counters implied by persisted issues, recorded cancels and the stream's entries. A cancel
 * revokes the user's claims numbered up to its `upTo`, whatever their moments; only a cancel written
 * before `upTo` existed (legacy) falls back to comparing moments. Order does not matter.
 * Idempotency records are rebuilt for issues and cancels made with a key within `idempotencyTtlMs` of `nowMs`.
 * With the coupon's codeSecret, every unit's code field too (revoked ones included: their codes still answer),
 * and the redemption state: each unit's last redemption fact (by stream id) from Postgres and the stream,
 * and per user the units redeemed now (not revoked), as includes/units.lua keeps them.
 * A one-unit revoke (the expiry job returned that claim; a fact with `claim`, or an 'x' entry) revokes
 * exactly its claim and marks its code returned. With returnExpiredToStock, the expiry job's candidates:
 * every active, unredeemed unit that expires.
 */
export function computeCounters (coupon: Pick<Coupon, 'id' | 'totalQuantity'> & Partial<Pick<Coupon, 'codeSecret' | 'codeLength' | 'validFor' | 'validUntil' | 'returnExpiredToStock'>>,
  persisted: PersistedIssue[], entries: RawEntry[],
  { streamKey = '', revocations = [], redemptions: redemptionFacts = [], idempotencyTtlMs = Infinity, nowMs = Date.now() }:
  { streamKey?: string, revocations?: PersistedRevocation[], redemptions?: PersistedRedemption[], idempotencyTtlMs?: number, nowMs?: number } = {}): CounterState {
  const claimsByUser = new Map<string, Map<number, Claim>>()
  const cancelsByUser = new Map<string, Map<string, Cancel>>()
  const of = <T>(map: Map<string, Map<any, T>>, userId: string) => {
    let inner = map.get(userId)
    if (!inner) map.set(userId, inner = new Map())
    return inner
  }
  /** "userId|claim" -> when the expiry job returned the unit */
  const returned = new Map<string, number>()
  const lastRedemption = new Map<string, Redemption>()
  const noteRedemption = (userId: string, claim: number, r: Redemption) => {
    const unit = `${userId}|${claim}`
    const seen = lastRedemption.get(unit)
    if (!seen || compareEntryIds(r.entryId, seen.entryId) > 0) lastRedemption.set(unit, r)
  }
  for (const fact of redemptionFacts) noteRedemption(fact.userId, fact.claim, { kind: fact.kind === 'redeem' ? 'd' : 'u', orderId: fact.orderId, at: fact.at.getTime(), entryId: fact.streamId })
  for (const row of persisted) {
    of(claimsByUser, row.userId).set(row.claim, { at: row.createdAt.getTime(), revoked: row.revokedAt !== null, entryId: row.streamId, idempotencyKey: row.idempotencyKey })
  }
  for (const fact of revocations) {
    if (fact.claim != null) {
      returned.set(`${fact.userId}|${fact.claim}`, fact.revokedAt.getTime())
      continue
    }
    of(cancelsByUser, fact.userId).set(fact.streamId, { upTo: fact.upToClaim, at: fact.revokedAt.getTime(), units: fact.units ?? 0, entryId: fact.streamId, idempotencyKey: fact.idempotencyKey })
  }
  for (const [id, fields] of entries) {
    const event = decodeEntry(streamKey, coupon.id, id, fields)
    if (!isEvent(event)) continue
    if (isRedemption(event)) {
      noteRedemption(event.userId, event.claim, { kind: event.type === 'redeem' ? 'd' : 'u', orderId: event.orderId, at: event.at, entryId: id })
    } else if (event.type === 'revokeUnit') {
      returned.set(`${event.userId}|${event.claim}`, event.at)
    } else if (event.type === 'issue') {
      const claims = of(claimsByUser, event.userId)
      if (!claims.has(event.claim)) claims.set(event.claim, { at: event.at, revoked: false, entryId: id, idempotencyKey: event.idempotencyKey ?? null })
    } else {
      of(cancelsByUser, event.userId).set(id, { upTo: event.upToClaim ?? null, at: event.at, units: event.units, entryId: id, idempotencyKey: event.idempotencyKey ?? null })
    }
  }
  const users = new Map<string, [number, number]>()
  const idempotency = new Map<string, string>()
  const lastCancels = new Map<string, [number, number]>()
  const codes = new Map<string, string>()
  const redemptions = new Map<string, string>()
  const expiring = new Map<string, number>()
  const { codeSecret, codeLength } = coupon
  const validity = { validForMs: coupon.validFor == null ? null : parseValidFor(coupon.validFor), validUntil: coupon.validUntil ?? null }
  const tracksExpiry = coupon.returnExpiredToStock === true
  const fresh = (at: number) => at + idempotencyTtlMs > nowMs
  let held = 0
  for (const userId of new Set([...claimsByUser.keys(), ...cancelsByUser.keys()])) {
    const claims = claimsByUser.get(userId) ?? new Map<number, Claim>()
    for (const cancel of cancelsByUser.get(userId)?.values() ?? []) {
      for (const [number, claim] of claims) {
        if (cancel.upTo !== null ? number <= cancel.upTo : claim.at <= cancel.at) claim.revoked = true
      }
      if (cancel.upTo !== null) {
        const last = lastCancels.get(userId)
        if (!last || cancel.upTo > last[0] || (cancel.upTo === last[0] && cancel.at > last[1])) lastCancels.set(userId, [cancel.upTo, cancel.at])
      }
      if (cancel.idempotencyKey && fresh(cancel.at)) idempotency.set(`revoke:${cancel.idempotencyKey}`, record(userId, cancel.at, cancel.units, cancel.entryId))
    }
    let active = 0
    let last = 0
    for (const [number, claim] of claims) {
      const returnedAt = returned.get(`${userId}|${number}`)
      if (returnedAt !== undefined) {
        claim.revoked = true
        claim.returnedAt = returnedAt
      }
      if (!claim.revoked) active++
      if (number > last) last = number
      if (claim.idempotencyKey && fresh(claim.at)) idempotency.set(`issue:${claim.idempotencyKey}`, record(userId, claim.at, number, claim.entryId))
      if (codeSecret === undefined || codeLength === undefined) continue
      const field = codeField(codeSecret, userId, number, codeLength)
      codes.set(field, `${userId}|${number}|${claim.at}${claim.returnedAt === undefined ? '' : `|${claim.returnedAt}`}`)
      const redemption = lastRedemption.get(`${userId}|${number}`)
      const expires = expiresAt(claim.at, validity)
      if (tracksExpiry && expires !== null && !claim.revoked && redemption?.kind !== 'd') expiring.set(`${userId}|${number}`, expires.getTime())
      if (!redemption) continue
      redemptions.set(field, `${redemption.kind}|${redemption.orderId}|${redemption.at}`)
      if (redemption.kind === 'd' && !claim.revoked) redemptions.set(`@${userId}`, String(Number(redemptions.get(`@${userId}`) ?? 0) + 1))
    }
    held += active
    users.set(userId, [active, last])
  }
  return { stock: Math.max(0, coupon.totalQuantity - held), users, idempotency, lastCancels, codes, redemptions, expiring }
}

const fromRedis = <T>(call: Promise<T>): Promise<T> => call.catch((err) => { throw redisFailure(err) })
const byStreamId = ([a]: RawEntry, [b]: RawEntry) => compareEntryIds(a, b)

export interface RestoreDeps {
  redis: RedisClient
  db: Db
  keys: Keys
  idempotencyTtlSeconds: number
  /**
   * The counters were installed but the coupon could not be put on the consumer's read list (Redis
   * failed right then; on a cluster the list's shard may be down while the coupon's is up): remember it
   * for the maintenance tick instead of failing the request. Absent: the failure is thrown.
   */
  stranded?: (couponId: number) => void
}

const MAX_ATTEMPTS = 5
const LOCK_TTL_MS = 10_000
const WAIT_FOR_OTHER_MS = 3_000
const POLL_MS = 20

/**
 * Installs the coupon's counters if they are missing. Returns false when the coupon does not exist.
 * Only one caller rebuilds at a time (a short lock); the others wait for its result, and take the
 * lock themselves if it is released without counters (e.g. the coupon does not exist).
 */
export async function restoreCounters (deps: RestoreDeps, couponId: number): Promise<boolean> {
  const { redis, keys } = deps
  const k = keys.coupon(couponId)
  const deadline = Date.now() + WAIT_FOR_OTHER_MS
  for (;;) {
    if (await redis.set(k.restoreLock, String(process.pid), 'PX', LOCK_TTL_MS, 'NX') === 'OK') {
      try {
        return await rebuild(deps, couponId)
      } finally {
        await redis.del(k.restoreLock).catch(() => {})
      }
    }
    if (Date.now() > deadline) throw new Restoring(couponId)
    await new Promise((resolve) => setTimeout(resolve, POLL_MS))
    if (await redis.exists(k.stock) === 1) return true
  }
}

async function rebuild ({ redis, db, keys, idempotencyTtlSeconds, stranded }: RestoreDeps, couponId: number): Promise<boolean> {
  const k = keys.coupon(couponId)
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    // The coupon row stays share-locked until the counters are installed: an admin change (which takes
    // the row for update) waits for the rebuild and then applies on top of it, instead of landing in
    // Postgres between our read and our install and being overwritten in Redis by the older values.
    const code = await db.transaction(async (tx) => {
      const coupon = await findCoupon(tx as unknown as Db, couponId, 'share')
      if (!coupon) return null
      // Stream first, Postgres second: an entry persisted and trimmed in between is then in Postgres.
      const entries = await fromRedis(redis.xrange(k.events, '-', '+')) as RawEntry[]
      const lastEntryId = entries.length > 0 ? entries[entries.length - 1]![0] : ''
      const persisted = await issuesOfCoupon(tx as unknown as Db, couponId)
      const revocations = await revocationsOfCoupon(tx as unknown as Db, couponId)
      const redemptions = await redemptionsOfCoupon(tx as unknown as Db, couponId)
      // A parked entry's unit went out with a 201 and may be retried into a row later: count it.
      const parked = await parkedEntriesOfStream(tx as unknown as Db, k.events)
      const state = computeCounters(coupon, persisted, [...parked, ...entries].sort(byStreamId),
        { streamKey: k.events, revocations, redemptions, idempotencyTtlMs: idempotencyTtlSeconds * 1000 })
      return await fromRedis(installCounters(redis, k, {
        group: CONSUMER_GROUP,
        lastEntryId,
        values: {
          total: coupon.totalQuantity,
          perUserLimit: coupon.perUserLimit,
          startsAtMs: coupon.startsAt.getTime(),
          endsAtMs: coupon.endsAt?.getTime() ?? null,
          paused: coupon.paused,
          codeSettings: {
            secret: coupon.codeSecret,
            prefix: coupon.codePrefix,
            length: coupon.codeLength,
            tail: codeTail(coupon.id),
            validForMs: coupon.validFor === null ? null : parseValidFor(coupon.validFor),
            validUntilMs: coupon.validUntil?.getTime() ?? null
          },
          returnExpired: coupon.returnExpiredToStock,
          ...state
        }
      }))
    }).catch((err) => { throw databaseFailure(err) })
    if (code === null) return false
    if (code !== RestoreCode.STREAM_MOVED) {
      // Best effort: the hashes of an older version are read by nothing any more (keys.ts).
      await redis.unlink(...k.legacyCodeKeys).catch(() => {})
      await redis.sadd(keys.activeCoupons, String(couponId)).catch((err) => {
        if (!stranded) throw err
        stranded(couponId)
      })
      return true
    }
  }
  throw new Restoring(couponId)
}
