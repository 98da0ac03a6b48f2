// A cancel persisted before the issue it cancels (another consumer still held the issue) must
// still mark that issue revoked when it lands.
import t from 'tap'
import { eq } from 'drizzle-orm'
import { couponIssues, couponRevocations } from '../src/db/schema.js'
import { CONSUMER_GROUP } from '../src/redis/keys.js'
import { createCoupon, testApp, testConsumer, waitFor } from './helpers/env.js'

t.test('revocation persisted before its issue: the issue lands already revoked, a later claim stays active', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 2 })
  const k = app.keys.coupon(coupon.id)
  const url = `/coupons/${coupon.id}/issues`
  const issued = await app.inject({ method: 'POST', url, payload: { userId: 'late' } })
  // A consumer takes the issue event and dies before writing it.
  await app.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'died', 'COUNT', 1, 'STREAMS', k.events, '>')
  const cancelled = await app.inject({ method: 'DELETE', url: `${url}/late` })
  t.equal(cancelled.statusCode, 200)
  // The survivor's loop leaves entries idle for less than RECLAIM_MIN_IDLE_MS (30 s) to their consumer,
  // so it persists the revoke while the issue is still pending elsewhere.
  const consumer = testConsumer(t, app, 'survivor', { blockMs: 100 })
  consumer.start()
  await waitFor(async () => (await app.db.select().from(couponRevocations)).length === 1, { what: 'the cancel recorded as a fact' })
  t.equal((await app.db.select().from(couponIssues)).length, 0, 'the issue is not there yet')
  // The user claims again, and that event lands before the old issue is reclaimed.
  const again = await app.inject({ method: 'POST', url, payload: { userId: 'late' } })
  t.equal(again.json().claim, 2)
  await waitFor(async () => (await app.db.select().from(couponIssues)).length === 1, { what: 'the second claim' })
  await consumer.stop()
  // The dead consumer's entry is reclaimed (drain takes pending entries regardless of idle time).
  const report = await testConsumer(t, app, 'drain').drain()
  t.equal(report.stats.inserted, 1, 'the old issue lands last')
  const rows = await app.db.select().from(couponIssues).where(eq(couponIssues.couponId, coupon.id)).orderBy(couponIssues.claim)
  t.equal(rows.length, 2)
  t.equal(rows[0]!.createdAt.toISOString(), issued.json().issuedAt)
  t.equal(rows[0]!.revokedAt?.toISOString(), cancelled.json().revokedAt, 'the first claim lands revoked')
  t.equal(rows[1]!.revokedAt, null, 'the claim after the cancel stays active')
})
