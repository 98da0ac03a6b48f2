// The persistence path: redelivery is harmless, poison is parked before its ack, the loop keeps up.
import { consumerGroupInfo } from '../src/redis/groups.js'
import { once } from 'node:events'
import type { Redis } from 'ioredis'
import t from 'tap'
import { eq } from 'drizzle-orm'
import { couponIssues, couponRevocations, failedIssueEvents } from '../src/db/schema.js'
import { decodeEntry, eventPayload, isEvent, type CouponEvent } from '../src/stream/events.js'
import { CONSUMER_GROUP } from '../src/redis/keys.js'
import { admin, createCoupon, testApp, testConsumer, waitFor } from './helpers/env.js'
import type { FastifyInstance } from 'fastify'

const rowsOf = (app: FastifyInstance, couponId: number) => app.db.select().from(couponIssues).where(eq(couponIssues.couponId, couponId))

t.test('the running consumer persists an issue promptly, with its issuedAt, and trims the stream', async (t) => {
  const app = await testApp(t)
  const coupon = await createCoupon(app, { totalQuantity: 3 })
  const response = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'prompt' } })
  const { issuedAt } = response.json()
  const [row] = await waitFor(async () => { const rows = await rowsOf(app, coupon.id); return rows.length > 0 && rows }, { timeoutMs: 5000, what: 'the row' })
  t.equal(row!.createdAt.toISOString(), issuedAt)
  t.equal(row!.claim, 1)
  await waitFor(async () => await app.redis.xlen(app.keys.coupon(coupon.id).events) === 0, { what: 'the trim' })
  const info = (await consumerGroupInfo(app.redis, app.keys.coupon(coupon.id).events))!
  t.equal(info.pending, 0, 'nothing pending')
  t.equal(info.lag, 0, 'no lag')
})

t.test('redelivering an already persisted entry inserts nothing twice and is acked', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const k = app.keys.coupon(coupon.id)
  for (const userId of ['r1', 'r2']) await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId } })
  const entries = await app.redis.xrange(k.events, '-', '+')
  const first = testConsumer(t, app, 'first')
  // Persist, then fake a crash before the ack: read as 'first', persist through drain of another consumer.
  await app.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'crashed', 'COUNT', 10, 'STREAMS', k.events, '>')
  const second = await testConsumer(t, app, 'second').reclaim(0)
  t.same(second, { [coupon.id]: 2 })
  t.equal((await rowsOf(app, coupon.id)).length, 2)
  // The same entries delivered again (e.g. XADD replay of identical events) change nothing.
  for (const [, fields] of entries) await app.redis.xadd(k.events, '*', ...fields)
  const report = await first.drain()
  t.equal(report.stats.inserted, 0)
  t.equal(report.stats.duplicates, 2, 'counted as already persisted')
  t.equal((await rowsOf(app, coupon.id)).length, 2)
  const pending = await app.redis.xpending(k.events, CONSUMER_GROUP) as [number, ...unknown[]]
  t.equal(pending[0], 0, 'all acked')
})

t.test('poison entries in a batch of good ones: good ones land, poison is parked, then acked', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const k = app.keys.coupon(coupon.id)
  await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'good-1' } })
  await app.redis.xadd(k.events, '*', 'type', 'issue', 'couponId', String(coupon.id), 'claim', '1', 'at', String(Date.now())) // no userId
  await app.redis.xadd(k.events, '*', 'type', 'issue', 'couponId', String(coupon.id), 'userId', 'nul\u0000byte', 'claim', '1', 'at', String(Date.now()))
  await app.redis.xadd(k.events, '*', 'type', 'teleport', 'couponId', String(coupon.id), 'userId', 'x', 'at', String(Date.now()))
  await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'good-2' } })
  // A stream of a coupon that does not exist in Postgres.
  const ghost = app.keys.coupon(987654).events
  await app.redis.xgroup('CREATE', ghost, CONSUMER_GROUP, '0', 'MKSTREAM')
  await app.redis.sadd(app.keys.activeCoupons, '987654')
  await app.redis.xadd(ghost, '*', 'type', 'issue', 'couponId', '987654', 'userId', 'ghost-user', 'claim', '1', 'at', String(Date.now()))

  const report = await testConsumer(t, app, 'test-consumer').drain()
  t.equal(report.stats.inserted, 2, 'the good ones land')
  t.equal(report.stats.failed, 4, 'the bad ones are parked')
  t.same((await rowsOf(app, coupon.id)).map((r) => r.userId).sort(), ['good-1', 'good-2'])
  const failed = await app.db.select().from(failedIssueEvents)
  t.equal(failed.length, 4)
  t.ok(failed.some((f) => /userId/.test(f.error)), 'reason recorded for the missing field')
  t.ok(failed.some((f) => /does not exist/.test(f.error)), 'reason recorded for the unknown coupon')
  t.ok(failed.some((f) => (f.payload as any).userId === 'nul\\u0000byte'), 'the NUL byte is stored escaped')
  for (const stream of [k.events, ghost]) {
    const pending = await app.redis.xpending(stream, CONSUMER_GROUP) as [number]
    t.equal(pending[0], 0, 'nothing pending: poison does not block the stream')
  }

  const listed = await app.inject({ method: 'GET', url: '/admin/failed-events', headers: admin })
  t.equal(listed.statusCode, 200)
  t.equal(listed.json().items.length, 4, 'admin can list them')
  const ghostEntry = listed.json().items.find((f: any) => f.payload.couponId === '987654')
  const stillFailing = await app.inject({ method: 'POST', url: `/admin/failed-events/${ghostEntry.id}/retry`, headers: admin })
  t.equal(stillFailing.statusCode, 422)
  t.equal(stillFailing.json().code, 'FAILED_EVENT_STILL_FAILING')
  const unknown = await app.inject({ method: 'POST', url: '/admin/failed-events/999999/retry', headers: admin })
  t.equal(unknown.json().code, 'FAILED_EVENT_NOT_FOUND')
})

t.test('an admin retry persists a parked entry once its cause is fixed', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const k = app.keys.coupon(coupon.id)
  await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'crashy' } })
  // Delivered more often than allowed (a crash loop): parked without another attempt.
  await app.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'crasher', 'COUNT', 10, 'STREAMS', k.events, '>')
  const entryId = (await app.redis.xrange(k.events, '-', '+'))[0]![0]
  for (let i = 0; i < 5; i++) await (app.redis as Redis).xclaim(k.events, CONSUMER_GROUP, `crasher-${i}`, 0, entryId)
  const report = await testConsumer(t, app, 'survivor', { maxDeliveries: 5 }).reclaim(0)
  t.same(report, { [coupon.id]: 1 })
  t.equal((await rowsOf(app, coupon.id)).length, 0)
  const [parked] = await app.db.select().from(failedIssueEvents)
  t.match(parked!.error, /delivered \d+ times/)
  const retried = await app.inject({ method: 'POST', url: `/admin/failed-events/${parked!.id}/retry`, headers: admin })
  t.equal(retried.statusCode, 200)
  t.same(retried.json(), { id: parked!.id, inserted: 1 })
  t.equal((await rowsOf(app, coupon.id)).length, 1)
  const listed = await app.inject({ method: 'GET', url: '/admin/failed-events', headers: admin })
  t.equal(listed.json().items.length, 0, 'a retried entry leaves the default listing')
})

t.test('the consumer stops cleanly and a restarted one picks up where it left', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 50 })
  const consumer = testConsumer(t, app, 'loop', { blockMs: 100 })
  consumer.start()
  for (let i = 0; i < 20; i++) await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: `loop-${i}` } })
  await waitFor(async () => (await rowsOf(app, coupon.id)).length === 20, { what: '20 rows' })
  await consumer.stop()
  for (let i = 20; i < 30; i++) await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: `loop-${i}` } })
  t.equal((await rowsOf(app, coupon.id)).length, 20, 'a stopped consumer persists nothing')
  // The restarted loop's first batch holds the 10 that waited: wait for that event instead of polling Postgres.
  const batch = once(consumer, 'batch')
  consumer.start()
  const [outcome] = await batch
  t.match(outcome, { entries: 10, inserted: 10, duplicates: 0, failed: 0 }, 'the 10 issued while it was stopped, in one batch')
  t.equal((await rowsOf(app, coupon.id)).length, 30)
  await consumer.stop()
  t.equal(consumer.stats.inserted, 30)
})

t.test('an entry only the database rejects is isolated row by row; the rest of its batch lands', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const k = app.keys.coupon(coupon.id)
  await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'before' } })
  // Well-formed by every check the consumer makes, but the claim does not fit Postgres' integer.
  await app.redis.xadd(k.events, '*', 'type', 'issue', 'couponId', String(coupon.id), 'userId', 'overflow', 'claim', '99999999999', 'at', String(Date.now()))
  await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'after' } })
  const report = await testConsumer(t, app, 'test-consumer').drain()
  t.equal(report.stats.inserted, 2)
  t.equal(report.stats.failed, 1)
  t.same((await rowsOf(app, coupon.id)).map((r) => r.userId).sort(), ['after', 'before'])
  const [parked] = await app.db.select().from(failedIssueEvents)
  t.match(parked!.error, /out of range/)
})

t.test('a reclaim while the database is down claims nothing, so delivery counts do not climb', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const k = app.keys.coupon(coupon.id)
  await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'waiting' } })
  await app.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'dead', 'COUNT', 10, 'STREAMS', k.events, '>')
  const { openDatabase } = await import('../src/db/client.js')
  const unreachable = await openDatabase({ url: 'postgres://postgres@127.0.0.1:1/nowhere', dataDir: '' })
  t.teardown(() => unreachable.close())
  const consumer = testConsumer(t, app, 'cut-off', { db: unreachable.db })
  await t.rejects(consumer.reclaim(0))
  const [[, owner, , deliveries]] = await app.redis.xpending(k.events, CONSUMER_GROUP, '-', '+', 10) as [[string, string, number, number]]
  t.equal(owner, 'dead', 'still with its consumer')
  t.equal(Number(deliveries), 1, 'not counted as another delivery')
})

t.test('ended, fully persisted coupons leave the read list; a late cancel brings the stream back', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  // Open for an hour, so the issue and the first check happen inside the window on any machine; then
  // the window is set to close a moment later and the test waits for that moment to pass.
  const ended = await createCoupon(app, { totalQuantity: 5, endsAt: new Date(Date.now() + 3_600_000).toISOString() })
  const open = await createCoupon(app, { totalQuantity: 5 })
  t.equal((await app.inject({ method: 'POST', url: `/coupons/${ended.id}/issues`, payload: { userId: 'early' } })).statusCode, 201)
  const consumer = testConsumer(t, app, 'test-consumer')
  t.same(await consumer.maintenance.pruneEndedStreams(0), [], 'not while its window is open')
  const endsAt = Date.now() + 100
  const closed = await app.inject({ method: 'PATCH', url: `/coupons/${ended.id}`, headers: admin, payload: { endsAt: new Date(endsAt).toISOString() } })
  t.equal(closed.statusCode, 200)
  await waitFor(async () => Date.now() > endsAt + 10, { what: 'the window to close' })
  t.same(await consumer.maintenance.pruneEndedStreams(0), [], 'not while an event waits to be persisted')
  await consumer.drain()
  t.same(await consumer.maintenance.pruneEndedStreams(0), [String(ended.id)], 'ended and persisted: pruned')
  t.same((await app.redis.smembers(app.keys.activeCoupons)).sort(), [String(open.id)], 'the open coupon stays')
  const cancel = await app.inject({ method: 'DELETE', url: `/coupons/${ended.id}/issues/early` })
  t.equal(cancel.statusCode, 200)
  t.ok(await app.redis.sismember(app.keys.activeCoupons, String(ended.id)), 'a late cancel puts the stream back on the list')
  await consumer.drain()
  const [row] = await rowsOf(app, ended.id)
  t.equal(row!.revokedAt?.toISOString(), cancel.json().revokedAt, 'and the cancel is persisted')
})

t.test('v1 entries: malformed ones are parked with a reason; parked v1 and old-style payloads are retried or discarded whole', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const k = app.keys.coupon(coupon.id)
  const url = `/coupons/${coupon.id}/issues`
  await app.inject({ method: 'POST', url, payload: { userId: 'good-1' } })
  const [, written] = (await app.redis.xrange(k.events, '-', '+'))[0]!
  t.equal(written[0], 'e1', 'the issue script writes one e1 field')
  t.match(written[1], /^i\|good-1\|1\|\d{13}\|$/)
  const now = Date.now()
  await app.redis.xadd(k.events, '*', 'e1', `i|short|1|${now}`) // a part missing
  await app.redis.xadd(k.events, '*', 'e1', `i|nul\u0000byte|1|${now}|`) // a hostile userId
  await app.redis.xadd(k.events, '*', 'e1', `r|bad-units|0|${now}|1|`) // not a positive integer
  await app.redis.xadd(k.events, '*', 'e9', `i|future|1|${now}|`) // a format this version does not know
  await app.inject({ method: 'POST', url, payload: { userId: 'good-2' } })
  const report = await testConsumer(t, app, 'v1').drain()
  t.equal(report.stats.inserted, 2, 'the good ones land')
  t.equal(report.stats.failed, 4, 'the bad ones are parked')
  const failed = await app.db.select().from(failedIssueEvents)
  t.match(failed.map((f) => f.error).sort(), [/expected 5/, /units missing/, /unknown entry format "e9"/, /userId missing or malformed/])
  t.ok(failed.some((f) => (f.payload as any).e1 === `i|nul\\u0000byte|1|${now}|`), 'parked as its field/value object, the NUL byte escaped')
  const future = failed.find((f) => 'e9' in (f.payload as object))!
  const stillFailing = await app.inject({ method: 'POST', url: `/admin/failed-events/${future.id}/retry`, headers: admin })
  t.equal(stillFailing.statusCode, 422, 'an unknown format is not guessed at on retry either')

  // A v1 entry with a key, parked raw after too many deliveries: its retry keeps the key.
  await app.inject({ method: 'POST', url, payload: { userId: 'keyed' }, headers: { 'idempotency-key': 'order-7' } })
  await app.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'crasher', 'COUNT', 10, 'STREAMS', k.events, '>')
  const [keyedId] = (await app.redis.xrange(k.events, '-', '+')).at(-1)!
  for (let i = 0; i < 5; i++) await (app.redis as Redis).xclaim(k.events, CONSUMER_GROUP, `crasher-${i}`, 0, keyedId)
  await testConsumer(t, app, 'survivor', { maxDeliveries: 5 }).reclaim(0)
  const [parked] = await app.db.select().from(failedIssueEvents).where(eq(failedIssueEvents.streamId, keyedId))
  t.match(parked!.payload, { e1: /^i\|keyed\|1\|\d+\|order-7$/ })
  t.equal((await app.inject({ method: 'POST', url: `/admin/failed-events/${parked!.id}/retry`, headers: admin })).statusCode, 200)
  const [keyedRow] = (await rowsOf(app, coupon.id)).filter((r) => r.userId === 'keyed')
  t.equal(keyedRow!.idempotencyKey, 'order-7', 'the retried row carries the key')

  // Parked before v1: the event's own field names (idempotencyKey, upToClaim). A retry keeps both.
  const { recordFailedEvents } = await import('../src/db/queries/issues.js')
  const streamId = `${now}-99`
  await recordFailedEvents(app.db, [{
    streamKey: k.events,
    id: streamId,
    payload: { type: 'revoke', couponId: String(coupon.id), userId: 'good-2', units: '1', at: String(now + 1), upToClaim: '1', idempotencyKey: 'cancel-1' },
    error: 'coupon does not exist (then)',
    deliveries: 1
  }])
  const [oldParked] = await app.db.select().from(failedIssueEvents).where(eq(failedIssueEvents.streamId, streamId))
  t.equal((await app.inject({ method: 'POST', url: `/admin/failed-events/${oldParked!.id}/retry`, headers: admin })).statusCode, 200)
  const [fact] = await app.db.select().from(couponRevocations).where(eq(couponRevocations.streamId, streamId))
  t.match(fact, { userId: 'good-2', upToClaim: 1, units: 1, idempotencyKey: 'cancel-1' }, 'upTo and the key survive the old names')

  // An issue parked as a v0 payload (as an older version parked it) is discarded: its unit comes back.
  await app.inject({ method: 'POST', url, payload: { userId: 'given-up' } })
  const [givenUpId, givenUpFields] = (await app.redis.xrange(k.events, '-', '+')).at(-1)!
  const event = decodeEntry(k.events, coupon.id, givenUpId, givenUpFields)
  t.ok(isEvent(event))
  await recordFailedEvents(app.db, [{ streamKey: k.events, id: givenUpId, payload: eventPayload(event as CouponEvent), error: 'test', deliveries: 6 }])
  await app.redis.xdel(k.events, givenUpId)
  const stock = Number(await app.redis.get(k.stock))
  const [givenUp] = await app.db.select().from(failedIssueEvents).where(eq(failedIssueEvents.streamId, givenUpId))
  t.match(givenUp!.payload, { type: 'issue', userId: 'given-up', claim: '1' })
  const discarded = await app.inject({ method: 'POST', url: `/admin/failed-events/${givenUp!.id}/discard`, headers: admin })
  t.equal(discarded.json().unitReturned, true)
  t.equal(Number(await app.redis.get(k.stock)), stock + 1, 'the unit is back in stock')
})

t.test('a backlog is read in growing batches; after idle the loop starts small again and writes the first issue at once', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 2000 })
  const k = app.keys.coupon(coupon.id)
  await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'first' } })
  // 1,499 more entries written straight to the stream (as the script writes them): a backlog of 1,500.
  const pipeline = app.redis.pipeline()
  for (let i = 2; i <= 1500; i++) pipeline.xadd(k.events, '*', 'e1', `i|backlog-${i}|1|${Date.now()}|`)
  await pipeline.exec()
  const consumer = testConsumer(t, app, 'grower', { batchSize: 1000, lingerMs: 50, blockMs: 100 })
  const sizes: number[] = []
  consumer.on('batch', ({ entries }) => sizes.push(entries))
  consumer.start()
  await waitFor(async () => consumer.stats.inserted === 1500, { what: 'the backlog to be written' })
  t.same(sizes.slice(0, 4), [100, 200, 400, 800], 'each full read asks for twice as many')
  t.equal(sizes.reduce((a, b) => a + b, 0), 1500)
  t.ok(sizes.every((n) => n <= 1000), 'never more than CONSUMER_BATCH_SIZE')
  // Idle now: the next issue is read by a blocking read and written without a linger.
  await waitFor(async () => sizes.length > 0 && (await consumerGroupInfo(app.redis, k.events))?.pending === 0, { what: 'the backlog to be acknowledged' })
  const batch = once(consumer, 'batch')
  const response = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'after-idle' } })
  t.equal(response.statusCode, 201)
  const [outcome] = await batch
  t.match(outcome, { entries: 1, inserted: 1 }, 'the first issue after idle is a batch of its own')
  await consumer.stop()
})
