// Faults 5, 6 and 7 and a lost consumer group: trimming vs. unacknowledged entries, poison entries in
// a batch of good ones, a forced duplicate delivery. In-process against the shared Redis (own prefix)
// and Postgres (own database).
import t from 'tap'
import type { Redis } from 'ioredis'
import { createCoupon, inParallel, waitFor, admin } from '../helpers/env.js'
import { CONSUMER_GROUP } from '../../src/redis/keys.js'
import { groupState, issue, rowsOf, type Call } from './helpers/invariants.js'
import { extraConsumer, inProcessScenario, lockTable, lockWaits, requestLock } from './helpers/inprocess.js'

const pendingIds = async (app: any, stream: string, consumer?: string) =>
  (await app.redis.xpending(stream, CONSUMER_GROUP, '-', '+', 1000, ...(consumer ? [consumer] : [])) as [string, string, number, number][])

t.test('trimming never drops an unacknowledged entry; a pending entry deleted from the stream is counted', async (t) => {
  const { app, base, coupon, stream, check } = await inProcessScenario(t, { CONSUMER_ENABLED: 'false' }, 100)
  const calls: Call[] = []
  for (let i = 1; i <= 3; i++) calls.push(await issue(base, coupon.id, `u${i}`))
  // A consumer that takes two entries and dies without acknowledging them.
  const ghost = await app.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'ghost', 'COUNT', 2, 'STREAMS', stream, '>') as [string, [string, string[]][]][]
  const ghostIds = ghost[0]![1].map(([id]) => id)
  for (let i = 4; i <= 6; i++) calls.push(await issue(base, coupon.id, `u${i}`))

  const live = extraConsumer(t, app, 'live', { reclaimMinIdleMs: 600_000 })
  live.start()
  await waitFor(async () => (await rowsOf(app.env.databaseUrl, coupon.id)).length === 4, { what: 'the live consumer to persist u3..u6' })
  await waitFor(async () => (await groupState(app.redis, stream)).pending === 2, { what: 'the live consumer to ack its entries' })
  const left = (await app.redis.xrange(stream, '-', '+')).map(([id]) => id)
  t.same(left.slice(0, 2), ghostIds, 'the stream was trimmed only up to the oldest pending entry: the ghost\'s entries are still there')
  t.same((await pendingIds(app, stream)).map(([id]) => id), ghostIds, 'and still pending')

  await live.stop()
  const reclaimed = await live.reclaim(0)
  t.equal(reclaimed[String(coupon.id)], 2, 'a reclaim picks the ghost\'s entries up')
  await check(t, calls)

  // An entry deleted while pending cannot be persisted any more; it must be counted and reported.
  await issue(base, coupon.id, 'u7')
  const [[, [[lostId]]]] = await app.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'ghost', 'COUNT', 1, 'STREAMS', stream, '>') as any
  await app.redis.xdel(stream, lostId)
  const report = await live.drain()
  t.equal(report.stats.deletedWhilePending, 1, 'XAUTOCLAIM\'s deleted id is counted in the drain report')
  t.equal((await groupState(app.redis, stream)).pending, 0, 'and it no longer sits in the pending list')
})

t.test('poison entries in a batch of good ones: good ones land, bad ones are parked before the ack, admin can retry', async (t) => {
  const { app, base, coupon, stream, check } = await inProcessScenario(t, { CONSUMER_ENABLED: 'false' }, 100)
  const calls: Call[] = []
  for (let i = 0; i < 5; i++) calls.push(await issue(base, coupon.id, `good-${i}`))
  const now = String(Date.now())
  await app.redis.xadd(stream, '*', 'type', 'issue', 'couponId', String(coupon.id))
  await app.redis.xadd(stream, '*', 'type', 'issue', 'couponId', String(coupon.id), 'userId', 'nul\0byte', 'claim', '1', 'at', now)
  await app.redis.xadd(stream, '*', 'type', 'issue', 'couponId', String(coupon.id + 1), 'userId', 'other', 'claim', '1', 'at', now)
  // The same kinds of damage in the v1 (compact) format: a part missing, a format this version does not know.
  await app.redis.xadd(stream, '*', 'e1', `i|short|1|${now}`)
  await app.redis.xadd(stream, '*', 'e2', `i|later|1|${now}|`)
  for (let i = 5; i < 10; i++) calls.push(await issue(base, coupon.id, `good-${i}`))
  // A stream of a coupon Postgres does not know (the next id to be created).
  const unknownId = coupon.id + 1
  const unknownStream = app.keys.coupon(unknownId).events
  await app.redis.xadd(unknownStream, '*', 'type', 'issue', 'couponId', String(unknownId), 'userId', 'early-bird', 'claim', '1', 'at', now)
  await app.redis.sadd(app.keys.activeCoupons, String(unknownId))

  // Parking is blocked: the good rows may commit, but nothing may be acknowledged before the bad ones are written.
  const lock = await lockTable(t, app.env.databaseUrl, 'failed_issue_events', 'ACCESS EXCLUSIVE')
  const consumer = extraConsumer(t, app, 'poison-test', { reclaimMinIdleMs: 600_000 })
  consumer.start()
  await waitFor(async () => (await rowsOf(app.env.databaseUrl, coupon.id)).length === 10, { what: 'the good entries to land' })
  t.equal((await groupState(app.redis, stream)).pending, 15, 'the whole batch stays pending while its bad entries cannot be parked')
  await lock.release()

  await check(t, calls)
  const unknownState = await waitFor(async () => { const s = await groupState(app.redis, unknownStream); return s.pending === 0 && s.undelivered === 0 && s }, { what: 'the unknown coupon stream to settle' })
  t.equal(unknownState.length, 0, 'the unknown coupon\'s stream is acked and trimmed')

  const list = await app.inject({ method: 'GET', url: '/admin/failed-events', headers: admin })
  t.equal(list.statusCode, 200)
  const items = list.json().items as { id: number, streamKey: string, payload: Record<string, string>, error: string }[]
  t.equal(items.length, 6, 'six entries parked')
  t.match(items.map((i) => i.error).sort(), [/coupon \d+ does not exist/, /couponId \d+ does not match/, /issue entry has 4 .* expected 5/, /unknown entry format "e2"/, /userId missing or malformed/, /userId missing or malformed/])
  t.ok(items.some((i) => i.payload.userId === 'nul\\u0000byte'), 'the NUL byte is stored escaped')
  t.equal((await app.inject({ method: 'GET', url: '/admin/failed-events', headers: { authorization: 'Bearer nope-nope-nope' } })).statusCode, 401)

  const nul = items.find((i) => i.payload.userId?.startsWith('nul'))!
  const stillBad = await app.inject({ method: 'POST', url: `/admin/failed-events/${nul.id}/retry`, headers: admin })
  t.equal(stillBad.statusCode, 422)
  t.equal(stillBad.json().code, 'FAILED_EVENT_STILL_FAILING')
  t.equal((await app.inject({ method: 'POST', url: '/admin/failed-events/999999/retry', headers: admin })).json().code, 'FAILED_EVENT_NOT_FOUND')

  // Fix the cause of the unknown coupon (create it), then retry: the row lands.
  const created = await createCoupon(app, { totalQuantity: 5 })
  t.equal(created.id, unknownId)
  const early = items.find((i) => i.streamKey === unknownStream)!
  const retried = await app.inject({ method: 'POST', url: `/admin/failed-events/${early.id}/retry`, headers: admin })
  t.equal(retried.statusCode, 200)
  t.same(retried.json(), { id: early.id, inserted: 1 })
  t.same((await rowsOf(app.env.databaseUrl, unknownId)).map((r) => r.user_id), ['early-bird'])
  const after = (await app.inject({ method: 'GET', url: '/admin/failed-events', headers: admin })).json().items
  t.equal(after.length, 5, 'a retried entry leaves the default list')
  const all = (await app.inject({ method: 'GET', url: '/admin/failed-events?includeRetried=true', headers: admin })).json().items
  t.equal(all.length, 6, 'but stays in the full list')
})

t.test('a duplicate delivery forced with XCLAIM while the consumer works: no extra row, acked', async (t) => {
  // Two explicit consumers and Postgres' lock queue fix who writes when; the app's own consumer stays off.
  const { app, base, coupon, stream, check } = await inProcessScenario(t, { CONSUMER_ENABLED: 'false' }, 100)
  const db = app.env.databaseUrl
  const calls = await inParallel(20, 4, (i) => issue(base, coupon.id, `u${i}`))

  // The worker takes all 20 entries in one read; its insert waits behind the gate.
  const gate = await lockTable(t, db, 'coupon_issues')
  const worker = extraConsumer(t, app, 'worker', { reclaimMinIdleMs: 600_000 })
  worker.start()
  const held = await waitFor(async () => { const p = await pendingIds(app, stream, 'worker'); return p.length === 20 && p }, { what: 'the worker to take the 20 entries' })
  await waitFor(async () => (await lockWaits(db, 'coupon_issues')).join() === 'RowExclusiveLock', { what: 'the worker\'s insert to wait on the lock' })
  // A SHARE request queued behind the worker's insert: granted once the worker has committed, it then
  // holds back every insert queued after it until the test lets go.
  const turnstile = await requestLock(t, db, 'coupon_issues')
  await waitFor(async () => (await lockWaits(db, 'coupon_issues')).join() === 'RowExclusiveLock,ShareLock', { what: 'the turnstile to queue behind the worker' })

  // While the worker is in the middle of its insert, its entries are forced onto another consumer.
  const ids = held.map(([id]) => id)
  await (app.redis as Redis).xclaim(stream, CONSUMER_GROUP, 'intruder', 0, ...ids)
  const intruder = extraConsumer(t, app, 'intruder', { reclaimMinIdleMs: 600_000 })
  const second = intruder.reclaim(0)
  // The intruder has claimed everything (a reclaim claims before it persists) and its insert is queued.
  await waitFor(async () => (await lockWaits(db, 'coupon_issues')).join() === 'RowExclusiveLock,RowExclusiveLock,ShareLock', { what: 'the intruder\'s insert to queue behind the turnstile' })
  t.same((await pendingIds(app, stream, 'intruder')).map(([id]) => id), ids, 'the intruder holds exactly the forced entries')

  await gate.release()
  await turnstile.granted
  await waitFor(async () => worker.stats.batches === 1, { what: 'the worker to finish its write' })
  t.same(worker.stats, { batches: 1, inserted: 20, duplicates: 0, failed: 0, deletedWhilePending: 0 }, 'the worker wrote the 20 rows first')
  await turnstile.release()
  const reclaimed = await second
  t.same(reclaimed, { [coupon.id]: ids.length }, 'the intruder persisted exactly the entries forced on it')
  t.same(intruder.stats, { batches: 1, inserted: 0, duplicates: 20, failed: 0, deletedWhilePending: 0 }, 'and each of them was a duplicate')

  const summary = await check(t, calls, { databaseUrl: db })
  t.equal(summary.rows.length, 20, 'no extra row from the duplicate delivery')
  t.equal(worker.stats.duplicates + intruder.stats.duplicates, ids.length, 'the second write of each entry was recognised as a duplicate')
})

t.test('the consumer group destroyed while entries wait: recreated (NOGROUP), everything persisted once', async (t) => {
  const { app, base, coupon, stream, check } = await inProcessScenario(t, { RECLAIM_MIN_IDLE_MS: '600000' }, 100)
  const lock = await lockTable(t, app.env.databaseUrl, 'coupon_issues')
  const calls = await inParallel(20, 4, (i) => issue(base, coupon.id, `u${i}`))
  await waitFor(async () => (await pendingIds(app, stream)).length > 0, { what: 'the consumer to take a batch' })
  await app.redis.xgroup('DESTROY', stream, CONSUMER_GROUP)
  await lock.release()
  calls.push(...await inParallel(20, 4, (i) => issue(base, coupon.id, `v${i}`)))
  const summary = await check(t, calls)
  t.equal(summary.rows.length, 40)
})
