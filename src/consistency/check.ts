// "Do the books balance?" for one coupon: the Redis counters against Postgres plus what is still on its
// way there (unacknowledged stream entries, parked entries). Read-only: nothing here writes anywhere.
//
// Events race the read: the consumer commits and acknowledges while we look. The approach:
//
//  1. Redis snapshot, atomically (MULTI): meta, stock, holders, claims, the discarded set, the stream's
//     last-generated-id (the CUTOFF), the group's last-delivered-id and its pending ids. The counters
//     reflect exactly the events up to the cutoff (a script changes the counters and appends its event
//     in one atomic step).
//  2. The unacknowledged entries up to the cutoff (entries above last-delivered, or pending), paged with
//     XRANGE after the snapshot. Entries are immutable; one acknowledged (and perhaps trimmed) since the
//     snapshot was committed before its acknowledgement, so step 3 finds it.
//  3. Postgres, after both: the coupon row, its issue rows, its recorded cancels, its parked entries,
//     each restricted to stream ids <= the cutoff (anything later happened after the snapshot, and the
//     counters do not show it yet).
//
// Every event up to the cutoff is then found at least once: still unacknowledged at step 2 (seen in
// the stream), or acknowledged, hence committed before step 3 (seen in Postgres). One seen in both (it
// was committed between 2 and 3, or committed but not yet acknowledged) is counted once: an issue is
// identified by (user, claim), a cancel by its stream id (computeCounters keys them so), so an entry
// whose row already exists counts as persisted. Whether a row is revoked is derived from the recorded
// cancels up to the cutoff, not from revoked_at, which a cancel after the snapshot may already have set.
// Cost: one MULTI (O(holders + claims) in Redis), the backlog read in pages, one coupon's rows in
// Postgres through its indexes; no scan of another coupon's data.
import type { RedisClient } from '../redis/client.js'
import type { Db } from '../db/client.js'
import { findCoupon } from '../db/queries/coupons.js'
import { issuesOfCoupon, parkedEntriesOfStream, revocationsOfCoupon } from '../db/queries/issues.js'
import { computeCounters } from '../issuing/restore-counters.js'
import { compareEntryIds } from '../redis/groups.js'
import { COMPLETE_MARKER, CONSUMER_GROUP, type CouponKeys, type Keys } from '../redis/keys.js'
import { decodeEntry, isEvent } from '../stream/events.js'
import { CouponNotFound, databaseFailure, redisFailure } from '../errors.js'

type RawEntry = [id: string, fields: string[]]

export type ConsistencyStatus = 'consistent' | 'inconsistent' | 'counters-absent'

/** One user whose units in Redis differ from what Postgres and the stream imply, or whose row claims run ahead. */
export interface UserDifference {
  userId: string
  /** units the holders hash says the user holds */
  redisHolds: number
  /** units implied by Postgres rows, recorded cancels, parked and unpersisted entries */
  expectedHolds: number
  /** issue rows of the user up to the cutoff, and those of them no recorded cancel revokes */
  rows: number
  activeRows: number
  /** unacknowledged issue entries without a row yet, and unacknowledged cancels not yet recorded */
  unpersistedIssues: number
  unpersistedRevokes: number
  /** parked issue entries neither retried nor discarded */
  parkedIssues: number
  /** the user's last claim number in Redis, and the highest claim among their rows */
  redisClaim: number
  maxRowClaim: number
}

export interface ConsistencyReport {
  couponId: number
  status: ConsistencyStatus
  checkedAt: string
  /** stream id up to which events were compared */
  cutoff: string
  postgres: { total: number, rows: number, activeRows: number, revocations: number, parked: number }
  stream: { unpersistedIssues: number, unpersistedRevokes: number, undecodable: number }
  /** null when the counters are absent */
  redis: { total: number, remaining: number, activeHolders: number } | null
  expected: { activeHolders: number, remaining: number }
  /** what disagrees, in words with the numbers */
  problems: string[]
  /** users that differ (at most MAX_LISTED_USERS of them), and how many differ in all */
  users: UserDifference[]
  usersDiffering: number
}

export const MAX_LISTED_USERS = 100
const PAGE = 1000
/** a seq above any real one, for a cutoff "everything of this millisecond" */
const MAX_SEQ = Number.MAX_SAFE_INTEGER

/** What the atomic Redis read saw. */
export interface RedisSnapshot {
  nowMs: number
  meta: Record<string, string>
  stock: string | null
  holders: Record<string, string>
  claims: Record<string, string>
  discarded: string[]
  /** the stream's last-generated-id; null when there is no stream */
  lastGeneratedId: string | null
  /** the group's last-delivered-id; null when there is no group (then every entry counts as unpersisted) */
  lastDeliveredId: string | null
  pendingIds: string[]
}

function flatToObject (flat: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  if (!Array.isArray(flat)) return out
  for (let i = 0; i + 1 < flat.length; i += 2) out[String(flat[i])] = flat[i + 1]
  return out
}

/** Step 1: one MULTI, so the counters, the cutoff and the group's position are one moment. */
export async function readRedisSnapshot (redis: RedisClient, k: CouponKeys, group = CONSUMER_GROUP): Promise<RedisSnapshot> {
  const replies = await redis.multi()
    .time()
    .hgetall(k.meta)
    .get(k.stock)
    .hgetall(k.holders)
    .hgetall(k.claims)
    .smembers(k.discarded)
    .xinfo('STREAM', k.events)
    .xinfo('GROUPS', k.events)
    .xpending(k.events, group, '-', '+', 1_000_000)
    .exec()
  if (!replies) throw new Error('the snapshot transaction was aborted')
  const value = (i: number) => {
    const [err, result] = replies[i]!
    if (err && i < 6) throw err // the counters themselves must be readable; the stream may be missing
    return err ? null : result
  }
  const [seconds, micros] = value(0) as [string, string]
  const stream = flatToObject(value(6))
  let lastDeliveredId: string | null = null
  for (const flat of (value(7) as unknown[] | null) ?? []) {
    const info = flatToObject(flat)
    if (info.name === group) lastDeliveredId = String(info['last-delivered-id'])
  }
  return {
    nowMs: Number(seconds) * 1000 + Math.floor(Number(micros) / 1000),
    meta: value(1) as Record<string, string>,
    stock: value(2) as string | null,
    holders: value(3) as Record<string, string>,
    claims: value(4) as Record<string, string>,
    discarded: value(5) as string[],
    lastGeneratedId: stream['last-generated-id'] === undefined ? null : String(stream['last-generated-id']),
    lastDeliveredId,
    pendingIds: ((value(8) as [string, ...unknown[]][] | null) ?? []).map(([id]) => id)
  }
}

/** The cutoff: events with stream ids up to it are reflected in the snapshot's counters. */
export function cutoffOf (snapshot: Pick<RedisSnapshot, 'lastGeneratedId' | 'nowMs'>): string {
  // No stream: any later event creates one with an id at or after the snapshot's millisecond.
  return snapshot.lastGeneratedId ?? `${snapshot.nowMs - 1}-${MAX_SEQ}`
}

/** Step 2: the entries up to the cutoff the group has not acknowledged (undelivered or pending), in pages. */
export async function readUnacknowledged (redis: RedisClient, events: string, snapshot: RedisSnapshot): Promise<RawEntry[]> {
  if (snapshot.lastGeneratedId === null) return []
  const cutoff = snapshot.lastGeneratedId
  const pending = new Set(snapshot.pendingIds)
  const delivered = snapshot.lastDeliveredId
  const unacknowledged = (id: string) => delivered === null || compareEntryIds(id, delivered) > 0 || pending.has(id)
  const firstPending = snapshot.pendingIds.reduce<string | null>((min, id) => min === null || compareEntryIds(id, min) < 0 ? id : min, null)
  let start = delivered === null ? '-' : firstPending ?? `(${delivered}`
  const found: RawEntry[] = []
  for (;;) {
    const page = await redis.xrange(events, start, cutoff, 'COUNT', PAGE) as RawEntry[]
    for (const entry of page) if (unacknowledged(entry[0])) found.push(entry)
    if (page.length < PAGE) return found
    start = `(${page[page.length - 1]![0]}`
  }
}

export interface PostgresView {
  total: number
  rows: { userId: string, claim: number, createdAt: Date, revokedAt: Date | null, streamId: string, idempotencyKey: string | null }[]
  revocations: Awaited<ReturnType<typeof revocationsOfCoupon>>
  parked: RawEntry[]
}

const upTo = (cutoff: string) => (streamId: string) => {
  // A stream id that is not one (hand-written rows) cannot be placed in time: count it.
  if (!/^\d+-\d+$/.test(streamId)) return true
  return compareEntryIds(streamId, cutoff) <= 0
}

/**
 * Pure: compares the snapshot with Postgres and the unacknowledged entries. `snapshot` is step 1,
 * `unacknowledged` step 2, `pg` step 3 (unfiltered: restricted to the cutoff here).
 */
export function compareBooks (couponId: number, streamKey: string, snapshot: RedisSnapshot, unacknowledged: RawEntry[], pg: PostgresView): ConsistencyReport {
  const cutoff = cutoffOf(snapshot)
  const before = upTo(cutoff)
  const discarded = new Set(snapshot.discarded)
  const rows = pg.rows.filter((r) => before(r.streamId))
  const revocations = pg.revocations.filter((r) => before(r.streamId))
  // A parked entry an admin discarded counts no more; Redis learns of a discard before Postgres does.
  const parked = pg.parked.filter(([id]) => before(id) && !discarded.has(id))
  const expected = computeCounters({ id: couponId, totalQuantity: pg.total },
    rows.map((r) => ({ ...r, revokedAt: null })), [...parked, ...unacknowledged], { streamKey, revocations })
  // Rows no recorded cancel (up to the cutoff) revokes: the same computation on Postgres alone.
  const persistedOnly = computeCounters({ id: couponId, totalQuantity: pg.total }, rows.map((r) => ({ ...r, revokedAt: null })), [], { streamKey, revocations })

  const rowKeys = new Set(rows.map((r) => `${r.userId}|${r.claim}`))
  const factIds = new Set(revocations.map((r) => r.streamId))
  const perUser = new Map<string, { issues: number, revokes: number, parked: number }>()
  const tally = (userId: string) => {
    let t = perUser.get(userId)
    if (!t) perUser.set(userId, t = { issues: 0, revokes: 0, parked: 0 })
    return t
  }
  let unpersistedIssues = 0
  let unpersistedRevokes = 0
  let undecodable = 0
  for (const [id, fields] of unacknowledged) {
    const event = decodeEntry(streamKey, couponId, id, fields)
    if (!isEvent(event)) { undecodable++; continue }
    if (event.type === 'issue' && !rowKeys.has(`${event.userId}|${event.claim}`)) { unpersistedIssues++; tally(event.userId).issues++ }
    if ((event.type === 'revoke' || event.type === 'revokeUnit') && !factIds.has(id)) { unpersistedRevokes++; tally(event.userId).revokes++ }
  }
  for (const [id, fields] of parked) {
    const event = decodeEntry(streamKey, couponId, id, fields)
    if (isEvent(event) && event.type === 'issue' && !rowKeys.has(`${event.userId}|${event.claim}`)) tally(event.userId).parked++
  }

  const expectedHolders = sum([...expected.users.values()].map(([active]) => active))
  const base = {
    couponId,
    checkedAt: new Date(snapshot.nowMs).toISOString(),
    cutoff,
    postgres: {
      total: pg.total,
      rows: rows.length,
      activeRows: sum([...persistedOnly.users.values()].map(([active]) => active)),
      revocations: revocations.length,
      parked: parked.length
    },
    stream: { unpersistedIssues, unpersistedRevokes, undecodable },
    expected: { activeHolders: expectedHolders, remaining: pg.total - expectedHolders }
  }
  const present = snapshot.meta.perUserLimit !== undefined && snapshot.meta.total !== undefined && snapshot.stock !== null &&
    snapshot.holders[COMPLETE_MARKER] !== undefined && snapshot.claims[COMPLETE_MARKER] !== undefined
  if (!present) {
    // After a wipe or an eviction the next request rebuilds them: nothing to compare, nothing wrong.
    return { ...base, status: 'counters-absent', redis: null, problems: [], users: [], usersDiffering: 0 }
  }

  const held = (userId: string) => Number(snapshot.holders[userId] ?? 0)
  const redisClaim = (userId: string) => Number(snapshot.claims[userId] ?? 0)
  const redisTotal = Number(snapshot.meta.total)
  const remaining = Number(snapshot.stock)
  const redisHolders = sum(Object.entries(snapshot.holders).filter(([f]) => f !== COMPLETE_MARKER).map(([, v]) => Number(v)))
  const problems: string[] = []
  if (redisTotal !== pg.total) problems.push(`total differs: Redis ${redisTotal}, Postgres ${pg.total}`)
  if (redisTotal !== remaining + redisHolders) {
    problems.push(`total ${redisTotal} != remaining ${remaining} + active holders ${redisHolders} (off by ${remaining + redisHolders - redisTotal})`)
  }
  if (redisHolders !== expectedHolders) {
    problems.push(`Redis holders sum to ${redisHolders}, Postgres and the stream imply ${expectedHolders}`)
  }

  const maxRowClaim = new Map<string, number>()
  const rowCount = new Map<string, number>()
  for (const r of rows) {
    maxRowClaim.set(r.userId, Math.max(maxRowClaim.get(r.userId) ?? 0, r.claim))
    rowCount.set(r.userId, (rowCount.get(r.userId) ?? 0) + 1)
  }
  const users = new Set<string>([...expected.users.keys(), ...Object.keys(snapshot.holders).filter((f) => f !== COMPLETE_MARKER)])
  const differing: UserDifference[] = []
  let claimsAhead = 0
  for (const userId of users) {
    const expectedHolds = expected.users.get(userId)?.[0] ?? 0
    const rowClaim = maxRowClaim.get(userId) ?? 0
    const claimAhead = rowClaim > redisClaim(userId)
    if (claimAhead) claimsAhead++
    if (held(userId) === expectedHolds && !claimAhead) continue
    const t = perUser.get(userId) ?? { issues: 0, revokes: 0, parked: 0 }
    differing.push({
      userId,
      redisHolds: held(userId),
      expectedHolds,
      rows: rowCount.get(userId) ?? 0,
      activeRows: persistedOnly.users.get(userId)?.[0] ?? 0,
      unpersistedIssues: t.issues,
      unpersistedRevokes: t.revokes,
      parkedIssues: t.parked,
      redisClaim: redisClaim(userId),
      maxRowClaim: rowClaim
    })
  }
  const holdsDiffer = differing.length - differing.filter((u) => u.redisHolds === u.expectedHolds).length
  if (holdsDiffer > 0) problems.push(`${holdsDiffer} user(s) hold a different number of units in Redis than Postgres and the stream imply`)
  if (claimsAhead > 0) problems.push(`${claimsAhead} user(s) have a Postgres row with a claim number above their Redis claim`)
  differing.sort((a, b) => a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0)
  return {
    ...base,
    status: problems.length === 0 ? 'consistent' : 'inconsistent',
    redis: { total: redisTotal, remaining, activeHolders: redisHolders },
    problems,
    users: differing.slice(0, MAX_LISTED_USERS),
    usersDiffering: differing.length
  }
}

function sum (values: number[]): number {
  let total = 0
  for (const v of values) total += v
  return total
}

export interface ConsistencyDeps {
  redis: RedisClient
  db: Db
  keys: Keys
}

export interface CheckOptions {
  /** runs between the Redis reads and the Postgres read (tests widen the race window with it) */
  betweenReads?: () => Promise<void>
}

/** The report for one coupon (steps 1-3 above). Throws COUPON_NOT_FOUND, REDIS_UNAVAILABLE, DATABASE_UNAVAILABLE. */
export async function checkConsistency ({ redis, db, keys }: ConsistencyDeps, couponId: number, { betweenReads }: CheckOptions = {}): Promise<ConsistencyReport> {
  const k = keys.coupon(couponId)
  const fromRedis = <T>(call: Promise<T>) => call.catch((err) => { throw redisFailure(err) })
  const fromDb = <T>(call: Promise<T>) => call.catch((err) => { throw databaseFailure(err) })
  const snapshot = await fromRedis(readRedisSnapshot(redis, k))
  const unacknowledged = await fromRedis(readUnacknowledged(redis, k.events, snapshot))
  await betweenReads?.()
  const coupon = await fromDb(findCoupon(db, couponId))
  if (!coupon) throw new CouponNotFound(couponId)
  const [rows, revocations, parked] = await fromDb(Promise.all([
    issuesOfCoupon(db, couponId), revocationsOfCoupon(db, couponId), parkedEntriesOfStream(db, k.events)
  ]))
  return compareBooks(couponId, k.events, snapshot, unacknowledged, { total: coupon.totalQuantity, rows, revocations, parked })
}
