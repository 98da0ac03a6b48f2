// The race the product exists for, over real HTTP against real Redis and Postgres.
import t from 'tap'
import { eq } from 'drizzle-orm'
import { couponIssues } from '../src/db/schema.js'
import { createCoupon, inParallel, testApp, testConsumer } from './helpers/env.js'

t.test('1000 concurrent requests for 100 coupons: exactly 100 issued, each persisted with its issuedAt', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  const coupon = await createCoupon(app, { totalQuantity: 100 })

  const outcomes = await inParallel(1000, 32, async (i) => {
    const response = await fetch(`${base}/coupons/${coupon.id}/issues`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ userId: `user-${i}` })
    })
    return { status: response.status, body: await response.json() as any }
  })
  const issued = outcomes.filter((o) => o.status === 201)
  const soldOut = outcomes.filter((o) => o.status === 409 && o.body.code === 'SOLD_OUT')
  t.equal(issued.length, 100, 'exactly the quantity is issued')
  t.equal(soldOut.length, 900, 'everyone else is told SOLD_OUT')
  t.equal(new Set(issued.map((o) => o.body.userId)).size, 100, 'no user twice')
  t.ok(issued.every((o) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(o.body.issuedAt)), 'issuedAt is ISO 8601 with ms')

  const stock = await app.redis.get(app.keys.coupon(coupon.id).stock)
  t.equal(stock, '0', 'the counter ends at 0, never below')

  // The consumer is off: nothing can be in Postgres until the drain.
  const consumer = testConsumer(t, app, 'race-drain')
  const report = await consumer.drain()
  t.equal(report.perCoupon[String(coupon.id)], 100, 'the drain handled 100 entries')

  const rows = await app.db.select().from(couponIssues).where(eq(couponIssues.couponId, coupon.id))
  t.equal(rows.length, 100, 'exactly 100 rows after drain')
  const issuedAt = new Map(issued.map((o) => [o.body.userId, o.body.issuedAt]))
  t.ok(rows.every((row) => row.createdAt.toISOString() === issuedAt.get(row.userId)), 'every row carries the moment the response announced')
  t.equal(await app.redis.xlen(app.keys.coupon(coupon.id).events), 0, 'the stream is trimmed after persistence')
})

t.test('1000 concurrent requests by one user: exactly one issued', async (t) => {
  const app = await testApp(t)
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  const coupon = await createCoupon(app, { totalQuantity: 100 })
  const statuses = await inParallel(1000, 32, async () => {
    const response = await fetch(`${base}/coupons/${coupon.id}/issues`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ userId: 'the-same-user' })
    })
    const body = await response.json() as any
    return response.status === 201 ? 'issued' : body.code
  })
  t.equal(statuses.filter((s) => s === 'issued').length, 1)
  t.equal(statuses.filter((s) => s === 'ALREADY_ISSUED').length, 999)
  t.equal(await app.redis.get(app.keys.coupon(coupon.id).stock), '99')
})
