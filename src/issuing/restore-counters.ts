// Rebuilding a coupon's Redis counters when they are missing (expired, evicted, Redis restarted).
// The truth is Postgres PLUS the events still in the stream: restoring from Postgres alone would hand
// out again every unit whose event is not persisted yet.
import type { Redis } from 'ioredis'
import { findCoupon, type Coupon } from '../db/queries/coupons.js'
import { issuesOfCoupon, parkedEntriesOfStream, type PersistedIssue } from '../db/queries/issues.js'
import type { Db } from '../db/client.js'
import { CONSUMER_GROUP, type Keys } from '../redis/keys.js'
import { decodeEntry, isEvent } from '../stream/events.js'
import { DatabaseUnavailable, Restoring } from '../errors.js'

export interface CounterState {
  stock: number
  /** userId -> [units held now, last claim number] */
  users: Map<string, [number, number]>
}

type RawEntry = [id: string, fields: string[]]

/** Pure: the counters implied by persisted issues and the stream's entries (in stream order). */
export function computeCounters (coupon: Pick<Coupon, 'id' | 'totalQuantity'>, persisted: PersistedIssue[], entries: RawEntry[], streamKey = ''): CounterState {
  const claimsByUser = new Map<string, Map<number, { at: number, revoked: boolean }>>()
  const claimsOf = (userId: string) => {
    let claims = claimsByUser.get(userId)
    if (!claims) claimsByUser.set(userId, claims = new Map())
    return claims
  }
  for (const row of persisted) {
    claimsOf(row.userId).set(row.claim, { at: row.createdAt.getTime(), revoked: row.revokedAt !== null })
  }
  for (const [id, fields] of entries) {
    const event = decodeEntry(streamKey, coupon.id, id, fields)
    if (!isEvent(event)) continue
    const claims = claimsOf(event.userId)
    if (event.type === 'issue') {
      if (!claims.has(event.claim)) claims.set(event.claim, { at: event.at, revoked: false })
    } else {
      for (const claim of claims.values()) if (claim.at <= event.at) claim.revoked = true
    }
  }
  const users = new Map<string, [number, number]>()
  let held = 0
  for (const [userId, claims] of claimsByUser) {
    let active = 0
    let last = 0
    for (const [number, claim] of claims) {
      if (!claim.revoked) active++
      if (number > last) last = number
    }
    held += active
    users.set(userId, [active, last])
  }
  return { stock: Math.max(0, coupon.totalQuantity - held), users }
}

const fromDb = <T>(query: Promise<T>): Promise<T> => query.catch((err) => { throw new DatabaseUnavailable({ cause: err }) })
const byStreamId = ([a]: RawEntry, [b]: RawEntry) => {
  const [aMs, aSeq] = a.split('-').map(Number)
  const [bMs, bSeq] = b.split('-').map(Number)
  return aMs! - bMs! || aSeq! - bSeq!
}
const msOrEmpty = (date: Date | null) => date === null ? '' : String(date.getTime())

export interface RestoreDeps {
  redis: Redis
  db: Db
  keys: Keys
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

async function rebuild ({ redis, db, keys }: RestoreDeps, couponId: number): Promise<boolean> {
  const k = keys.coupon(couponId)
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const coupon = await fromDb(findCoupon(db, couponId))
    if (!coupon) return false
    // Stream first, Postgres second: an entry persisted and trimmed in between is then in Postgres.
    const entries = await redis.xrange(k.events, '-', '+') as RawEntry[]
    const lastId = entries.length > 0 ? entries[entries.length - 1]![0] : ''
    const persisted = await fromDb(issuesOfCoupon(db, couponId))
    // A parked entry's unit went out with a 201 and may be retried into a row later: count it.
    const parked = await fromDb(parkedEntriesOfStream(db, k.events))
    const state = computeCounters(coupon, persisted, [...parked, ...entries].sort(byStreamId), k.events)
    const args: (string | number)[] = [k.meta, k.stock, k.holders, k.claims, k.events, CONSUMER_GROUP, lastId,
      coupon.totalQuantity, coupon.perUserLimit, coupon.startsAt.getTime(), msOrEmpty(coupon.endsAt), state.stock]
    for (const [userId, [held, last]] of state.users) args.push(userId, held, last)
    const code = await redis.restoreCoupon(args)
    if (code !== 2) {
      await redis.sadd(keys.activeCoupons, String(couponId))
      return true
    }
  }
  throw new Restoring(couponId)
}
