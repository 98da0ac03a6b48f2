// The invariants of issue 3, checked after every fault test, over the calls the test recorded.
//   I1 every 201 has exactly one row after drain (a timed-out call may or may not have issued)
//   I2 rows <= totalQuantity, the Redis counter is never negative (and agrees with Postgres once settled)
//   I3 at most one row per (coupon, user) (perUserLimit 1, no cancels)
//   I4 the group ends with nothing pending and no lag
//   I5 every failure is a 4xx/503 with a `code`; a timed-out call is reported, never silently counted
// A 503 REDIS_UNAVAILABLE counts like a timeout: when Redis dies between running the script and sending
// the reply, the issue happened but the service cannot know (the error tells the client to retry with
// the same Idempotency-Key, which then replays the 201).
import type { RedisClient } from '../../../src/redis/client.js'
import pg from 'pg'
import { createKeys } from '../../../src/redis/keys.js'
import { consumerGroupInfo } from '../../../src/redis/groups.js'
import { until } from './procs.js'

/** conn-error: refused or reset (the server was not listening or died): may or may not have issued. */
export type Outcome = 'ok' | 'rejected' | 'timed-out' | 'conn-error'

export interface Call {
  userId: string
  outcome: Outcome
  status: number | null
  code?: string
  issuedAt?: string
  /** wall time the call took, ms */
  ms: number
}

export interface IssueOptions {
  timeoutMs?: number
  idempotencyKey?: string
}

/** POST /coupons/:id/issues, recorded as ok / rejected / timed-out / conn-error. */
export async function issue (base: string, couponId: number, userId: string, { timeoutMs = 5000, idempotencyKey }: IssueOptions = {}): Promise<Call> {
  const started = Date.now()
  try {
    const response = await fetch(`${base}/coupons/${couponId}/issues`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(idempotencyKey ? { 'idempotency-key': idempotencyKey } : {}) },
      body: JSON.stringify({ userId }),
      signal: AbortSignal.timeout(timeoutMs)
    })
    const body = await response.json() as { code?: string, issuedAt?: string }
    const ms = Date.now() - started
    if (response.status === 201) return { userId, outcome: 'ok', status: 201, issuedAt: body.issuedAt, ms }
    return { userId, outcome: 'rejected', status: response.status, code: body.code, ms }
  } catch (err) {
    const outcome = (err as Error).name === 'TimeoutError' ? 'timed-out' : 'conn-error'
    return { userId, outcome, status: null, ms: Date.now() - started }
  }
}

/** Keeps issuing with `width` callers until stop() or maxCalls, recording every call. */
export function load (base: () => string, couponId: number, { width = 4, maxCalls = 2000, timeoutMs = 5000, userPrefix = 'u', maxMs = 120_000 } = {}) {
  const calls: Call[] = []
  let stopped = false
  let next = 0
  const started = Date.now()
  const done = Promise.all(Array.from({ length: width }, async () => {
    // eslint-disable-next-line no-unmodified-loop-condition -- stop() sets it while the callers await
    while (!stopped && next < maxCalls && Date.now() - started < maxMs) {
      const i = next++
      calls.push(await issue(base(), couponId, `${userPrefix}${i}`, { timeoutMs }))
    }
  }))
  return {
    calls,
    async stop () { stopped = true; await done },
    done
  }
}

export interface GroupState { pending: number, lag: number | null, length: number, lastDelivered: string, undelivered: number }

export async function groupState (redis: RedisClient, stream: string): Promise<GroupState> {
  const length = await redis.xlen(stream)
  const group = await consumerGroupInfo(redis, stream)
  if (!group) return { pending: -1, lag: null, length, lastDelivered: '', undelivered: length }
  const lastDelivered = group.lastDeliveredId
  const after = await redis.xrange(stream, `(${lastDelivered}`, '+')
  return { pending: group.pending, lag: group.lag, length, lastDelivered, undelivered: after.length }
}

/** I4: waits (bounded) until the group has nothing pending and nothing undelivered. */
export async function settled (redis: RedisClient, prefix: string, couponId: number, timeoutMs = 30_000): Promise<GroupState> {
  const stream = createKeys(prefix).coupon(couponId).events
  let state: GroupState | null = null
  await until(async () => {
    state = await groupState(redis, stream)
    return state.pending === 0 && state.undelivered === 0
  }, timeoutMs, () => `the consumer group of coupon ${couponId} to have nothing pending and no lag (last: ${JSON.stringify(state)})`)
  return state!
}

export interface Row { user_id: string, claim: number, created_at: Date }

export async function rowsOf (databaseUrl: string, couponId: number): Promise<Row[]> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    return (await client.query('SELECT user_id, claim, created_at FROM coupon_issues WHERE coupon_id = $1', [couponId])).rows
  } finally { await client.end() }
}

interface Assert {
  ok (value: any, ...rest: any[]): boolean
  equal (a: any, b: any, ...rest: any[]): boolean
  same (a: any, b: any, ...rest: any[]): boolean
}

export interface InvariantInput {
  redis: RedisClient
  prefix: string
  databaseUrl: string
  couponId: number
  total: number
  calls: Call[]
  /** false when the test killed the server mid-flight: timed-out calls are expected there */
  expectNoTimeouts?: boolean
  settleTimeoutMs?: number
}

/** Checks I1..I5 and returns a small summary for the test's own assertions. */
export async function checkInvariants (t: Assert, { redis, prefix, databaseUrl, couponId, total, calls, expectNoTimeouts = true, settleTimeoutMs = 30_000 }: InvariantInput) {
  const keys = createKeys(prefix).coupon(couponId)
  // I4 first: "after drain" means after the consumer caught up by itself.
  const state = await settled(redis, prefix, couponId, settleTimeoutMs)
  t.ok(state.lag === 0 || state.lag === null, 'I4: group lag is 0', { state })
  t.equal(state.pending, 0, 'I4: nothing pending')

  const rows = await rowsOf(databaseUrl, couponId)
  const rowsByUser = new Map<string, Row[]>()
  for (const row of rows) rowsByUser.set(row.user_id, [...(rowsByUser.get(row.user_id) ?? []), row])

  const ok = calls.filter((c) => c.outcome === 'ok')
  const timedOut = calls.filter((c) => c.outcome === 'timed-out')
  const connErrors = calls.filter((c) => c.outcome === 'conn-error')
  const rejected = calls.filter((c) => c.outcome === 'rejected')
  const okUsers = new Set(ok.map((c) => c.userId))
  const unknown = rejected.filter((c) => c.code === 'REDIS_UNAVAILABLE' || c.code === 'REPLICATION_TIMEOUT')
  const maybeUsers = new Set([...timedOut, ...connErrors, ...unknown].map((c) => c.userId))

  // I1
  const missing = ok.filter((c) => (rowsByUser.get(c.userId)?.length ?? 0) !== 1)
  t.same(missing.map((c) => c.userId), [], 'I1: every 201 has exactly one row')
  const wrongMoment = ok.filter((c) => rowsByUser.get(c.userId)?.[0]?.created_at.toISOString() !== c.issuedAt)
  t.same(wrongMoment.map((c) => c.userId), [], 'I1: each row carries the issuedAt its 201 announced')
  const unexplained = [...rowsByUser.keys()].filter((u) => !okUsers.has(u) && !maybeUsers.has(u))
  t.same(unexplained, [], 'I1: no row without a 201 (or a call with an unknown outcome: timed out, cut off, REDIS_UNAVAILABLE, REPLICATION_TIMEOUT)')

  // I2
  t.ok(rows.length <= total, `I2: rows (${rows.length}) <= totalQuantity (${total})`)
  const stock = await redis.get(keys.stock)
  if (stock !== null) {
    t.ok(Number(stock) >= 0, `I2: the counter is not negative (${stock})`)
    t.equal(Number(stock), total - rows.length, 'I2: counter agrees with Postgres once settled')
  }

  // I3
  const doubled = [...rowsByUser].filter(([, r]) => r.length > 1).map(([u]) => u)
  t.same(doubled, [], 'I3: at most one row per (coupon, user)')

  // I5
  const badFailures = rejected.filter((c) => !c.code || !(c.status === 503 || (c.status! >= 400 && c.status! < 500)))
  t.same(badFailures, [], 'I5: every failure is a 4xx/503 with a code')
  if (expectNoTimeouts) t.equal(timedOut.length, 0, 'I5: no call hung past the client timeout')

  return { rows, ok, rejected, timedOut, connErrors, stock: stock === null ? null : Number(stock) }
}
