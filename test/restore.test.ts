// Counters that vanish (expired, evicted, deleted, Redis restarted) are rebuilt from Postgres plus
// the events still in the stream: never from Postgres alone, never into an oversell.
import t from 'tap'
import { eq } from 'drizzle-orm'
import { couponIssues } from '../src/db/schema.js'
import { computeCounters } from '../src/issuing/restore-counters.js'
import { restoreCounters } from '../src/redis/scripts.js'
import { decodeEntry, encodeEntry, fieldsToObject } from '../src/stream/events.js'
import { createCoupon, inParallel, testApp, testConsumer } from './helpers/env.js'
import type { FastifyInstance } from 'fastify'

const issue = async (app: FastifyInstance, couponId: number, userId: string) => {
  const response = await app.inject({ method: 'POST', url: `/coupons/${couponId}/issues`, payload: { userId } })
  return response.statusCode === 201 ? 'issued' : response.json().code as string
}

t.test('counter deleted while events are half persisted: restored, no oversell, earlier users still rejected', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const k = app.keys.coupon(coupon.id)
  for (const user of ['a', 'b', 'c']) t.equal(await issue(app, coupon.id, user), 'issued')
  await testConsumer(t, app, 'test-drain').drain() // a, b, c are in Postgres
  for (const user of ['d', 'e']) t.equal(await issue(app, coupon.id, user), 'issued') // d, e only in the stream

  await app.redis.del(k.stock)
  t.equal(await issue(app, coupon.id, 'a'), 'ALREADY_ISSUED', 'a persisted holder is still rejected')
  t.equal(await app.redis.get(k.stock), '5', 'stock counts the unpersisted issues too')

  await app.redis.del(k.stock, k.holders, k.claims, k.meta)
  t.equal(await issue(app, coupon.id, 'e'), 'ALREADY_ISSUED', 'an unpersisted holder is still rejected')

  await app.redis.del(k.stock)
  const outcomes = await inParallel(50, 16, (i) => issue(app, coupon.id, `rush-${i}`))
  t.equal(outcomes.filter((o) => o === 'issued').length, 5, 'exactly the 5 units left go out')
  t.equal(outcomes.filter((o) => o === 'SOLD_OUT').length, 45)
  t.equal(await app.redis.get(k.stock), '0')

  await testConsumer(t, app, 'test-drain').drain()
  const rows = await app.db.select().from(couponIssues).where(eq(couponIssues.couponId, coupon.id))
  t.equal(rows.length, 10, 'exactly the quantity in Postgres')
  t.equal(new Set(rows.map((r) => r.userId)).size, 10, 'no user twice')
})

t.test('everything but the stream lost (Redis restarted from an old AOF): rebuilt from the stream, not Postgres alone', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 4 })
  const k = app.keys.coupon(coupon.id)
  for (const user of ['p', 'q', 'r']) t.equal(await issue(app, coupon.id, user), 'issued')
  await app.redis.del(k.stock, k.holders, k.claims, k.meta, app.keys.activeCoupons)
  const remaining = await app.inject({ method: 'GET', url: `/coupons/${coupon.id}` })
  t.equal(remaining.json().remaining, 1, 'Postgres has no rows, yet 3 units are known to be out')
  t.equal(await issue(app, coupon.id, 'q'), 'ALREADY_ISSUED')
  t.equal(await issue(app, coupon.id, 's'), 'issued')
  t.equal(await issue(app, coupon.id, 't'), 'SOLD_OUT')
  t.ok(await app.redis.sismember(app.keys.activeCoupons, String(coupon.id)), 'the stream is back on the consumer list')
  const report = await testConsumer(t, app, 'test-drain').drain()
  t.equal(report.stats.inserted, 4)
})

t.test('many requests hit a missing counter at once: the waiters get the rebuilt counters, exact result', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 20 })
  const k = app.keys.coupon(coupon.id)
  for (let i = 0; i < 10; i++) await issue(app, coupon.id, `early-${i}`)
  await app.redis.del(k.stock, k.holders)
  const outcomes = await inParallel(200, 64, (i) => issue(app, coupon.id, i < 10 ? `early-${i}` : `late-${i}`))
  t.equal(outcomes.filter((o) => o === 'issued').length, 10)
  t.equal(outcomes.slice(0, 10).filter((o) => o === 'ALREADY_ISSUED').length, 10, 'early users rejected after the rebuild')
  t.notOk(outcomes.some((o) => o === 'RESTORING' || o === 'ISSUE_SCRIPT_FAILED'), 'waiting requests saw the rebuilt counters')
  t.equal(await app.redis.get(k.stock), '0')
})

t.test('the restore script refuses when the stream moved since it was read', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 3 })
  const k = app.keys.coupon(coupon.id)
  await issue(app, coupon.id, 'x')
  await app.redis.del(k.stock)
  const code = await restoreCounters(app.redis, k, {
    group: 'persisters',
    lastEntryId: '0-1',
    values: {
      total: 3,
      perUserLimit: 1,
      startsAtMs: 0,
      endsAtMs: null,
      paused: false,
      stock: 3,
      users: new Map(),
      idempotency: new Map(),
      lastCancels: new Map(),
      codeSettings: { secret: 'x', prefix: '', length: 12, tail: '11', validForMs: null, validUntilMs: null },
      codes: new Map(),
      redemptions: new Map(),
      returnExpired: false,
      expiring: new Map()
    }
  })
  t.equal(code, 2, 'STREAM_MOVED')
  t.equal(await app.redis.exists(k.stock), 0, 'nothing written')
})

t.test('computeCounters: persisted rows plus stream events, claims and cancellations', async (t) => {
  const coupon = { id: 7, totalQuantity: 10 }
  const entry = (id: string, fields: Record<string, string | number>) =>
    [id, Object.entries({ couponId: 7, ...fields }).flat().map(String)] as [string, string[]]
  const state = computeCounters(coupon, [
    { userId: 'a', claim: 1, createdAt: new Date(1000), revokedAt: null, streamId: '1000-0', idempotencyKey: null },
    { userId: 'b', claim: 1, createdAt: new Date(1001), revokedAt: new Date(1500), streamId: '1001-0', idempotencyKey: null }
  ], [
    entry('1000-0', { type: 'issue', userId: 'a', claim: 1, at: 1000 }), // persisted already: counted once
    entry('2000-0', { type: 'issue', userId: 'b', claim: 2, at: 2000 }),
    entry('2100-0', { type: 'issue', userId: 'c', claim: 1, at: 2100 }),
    entry('2200-0', { type: 'revoke', userId: 'c', units: 1, at: 2200 }),
    entry('2300-0', { type: 'issue', userId: 'c', claim: 2, at: 2300 }),
    entry('2400-0', { type: 'issue', couponId: 8, userId: 'z', claim: 1, at: 2400 }) // not this coupon's: ignored
  ])
  t.same(Object.fromEntries(state.users), { a: [1, 1], b: [1, 2], c: [1, 2] })
  t.equal(state.stock, 7)
  // The same stream written by this version (v1 entries, no couponId: the stream names it), and half and half.
  const v1 = (id: string, event: Parameters<typeof encodeEntry>[0]) => [id, encodeEntry(event)] as [string, string[]]
  const v1Entries = [
    v1('1000-0', { type: 'issue', userId: 'a', claim: 1, at: 1000 }),
    v1('2000-0', { type: 'issue', userId: 'b', claim: 2, at: 2000 }),
    v1('2100-0', { type: 'issue', userId: 'c', claim: 1, at: 2100 }),
    v1('2200-0', { type: 'revoke', userId: 'c', units: 1, at: 2200, upToClaim: 1 }),
    v1('2300-0', { type: 'issue', userId: 'c', claim: 2, at: 2300 })
  ]
  const persisted = [
    { userId: 'a', claim: 1, createdAt: new Date(1000), revokedAt: null, streamId: '1000-0', idempotencyKey: null },
    { userId: 'b', claim: 1, createdAt: new Date(1001), revokedAt: new Date(1500), streamId: '1001-0', idempotencyKey: null }
  ]
  const held = ({ users, stock }: typeof state) => ({ users: Object.fromEntries(users), stock })
  const fromV1 = computeCounters(coupon, persisted, v1Entries)
  t.same(held(fromV1), held(state), 'v1 entries give the same counters')
  t.same(Object.fromEntries(fromV1.lastCancels), { c: [1, 2200] }, 'and the v1 cancel\'s upTo')
  t.same(held(computeCounters(coupon, persisted, [entry('1000-0', { type: 'issue', userId: 'a', claim: 1, at: 1000 }), ...v1Entries.slice(1, 3),
    entry('2200-0', { type: 'revoke', userId: 'c', units: 1, at: 2200 }), v1Entries[4]!])), held(state), 'and so does a stream of both formats')
  t.equal(computeCounters({ id: 7, totalQuantity: 1 }, [], [entry('1-0', { type: 'issue', userId: 'a', claim: 1, at: 1 }), entry('2-0', { type: 'issue', userId: 'b', claim: 1, at: 2 })]).stock, 0, 'never negative')
})

t.test('a lost holders or claims hash triggers a rebuild; parked entries still count as issued', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 3 })
  const k = app.keys.coupon(coupon.id)
  t.equal(await issue(app, coupon.id, 'h1'), 'issued')
  await app.redis.del(k.holders)
  t.equal(await issue(app, coupon.id, 'h1'), 'ALREADY_ISSUED', 'holders rebuilt, not read as empty')
  await app.redis.del(k.claims)
  t.equal(await issue(app, coupon.id, 'h2'), 'issued')
  await app.redis.del(k.claims)
  const cancel = await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/h2` })
  t.equal(cancel.statusCode, 200)
  const reclaim = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'h2' } })
  t.equal(reclaim.json().claim, 2, 'claim numbers continue after a rebuild, so the new row is not mistaken for the old one')

  // h3's event is parked (say the database rejected it); its unit is still out.
  t.equal(await issue(app, coupon.id, 'h3'), 'issued')
  const { recordFailedEvents } = await import('../src/db/queries/issues.js')
  const entries = await app.redis.xrange(k.events, '-', '+')
  const [h3Id, h3Fields] = entries.find(([id, fields]) => (decodeEntry(k.events, coupon.id, id, fields) as { userId?: string }).userId === 'h3')!
  await recordFailedEvents(app.db, [{ streamKey: k.events, id: h3Id, payload: fieldsToObject(h3Fields), error: 'test', deliveries: 1 }])
  await app.redis.xdel(k.events, h3Id)
  await app.redis.del(k.stock)
  t.equal(await issue(app, coupon.id, 'h4'), 'SOLD_OUT', 'h1, h2 and the parked h3 hold all three units')
})
