// GET /admin/coupons/:id/stats: counted where the outcome is decided (scripts for units, each instance
// for rejections), added up across instances, and kept through a counter rebuild.
import t from 'tap'
import { admin, createCoupon, soldOutMarkerDropped, testApp, waitFor, type TestApp } from './helpers/env.js'

const issue = (app: TestApp, couponId: number, userId: string) =>
  app.inject({ method: 'POST', url: `/coupons/${couponId}/issues`, payload: { userId } })
const stats = async (app: TestApp, couponId: number) => {
  const r = await app.inject({ method: 'GET', url: `/admin/coupons/${couponId}/stats`, headers: admin })
  if (r.statusCode !== 200) throw new Error(`stats: ${r.statusCode} ${r.body}`)
  return r.json()
}

t.test('a small rush: units, rejections by code, sell-out moment, peak rate, persistence, across two instances', async (t) => {
  const a = await testApp(t)
  const b = await testApp(t, { REDIS_PREFIX: a.env.prefix, DATABASE_URL: a.env.databaseUrl, CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(a, { totalQuantity: 3 })
  const before = Date.now()
  t.equal((await issue(a, coupon.id, 'u1')).statusCode, 201)
  t.equal((await issue(a, coupon.id, 'u1')).json().code, 'ALREADY_ISSUED')
  t.equal((await issue(b, coupon.id, 'u2')).statusCode, 201)
  t.equal((await issue(a, coupon.id, 'u3')).statusCode, 201)
  for (const user of ['l1', 'l2', 'l3']) t.equal((await issue(a, coupon.id, user)).json().code, 'SOLD_OUT')
  for (const user of ['l4', 'l5']) t.equal((await issue(b, coupon.id, user)).json().code, 'SOLD_OUT')

  // Instance a's report includes what a counted and has not flushed yet; b's part arrives with b's flush.
  let s = await stats(a, coupon.id)
  t.equal(s.rejected.SOLD_OUT, 3, 'this instance counts at once')
  await b.campaignStats.flush()
  await a.campaignStats.flush()
  s = await stats(a, coupon.id)
  t.match(s, { couponId: coupon.id, total: 3, remaining: 0, issued: 3, revoked: 0, discarded: 0, parked: 0 })
  t.same(s.rejected, { ALREADY_ISSUED: 1, SOLD_OUT: 5 }, 'both instances, every code')
  t.ok(Date.parse(s.firstIssuedAt) >= before - 1000 && Date.parse(s.soldOutAt) >= Date.parse(s.firstIssuedAt), 'first issue, then sold out')
  t.ok(s.peakIssuesPerSecond >= 1 && s.peakIssuesPerSecond <= 3, `peak ${s.peakIssuesPerSecond}`)
  const persisted = await waitFor(async () => { const x = await stats(a, coupon.id); return x.persisted === 3 && x.unpersisted === 0 ? x : null }, { what: 'persisted 3' })
  t.same(persisted.lagMs.now, 0, 'nothing waiting')
  const worst = await waitFor(async () => { const x = await stats(a, coupon.id); return x.lagMs.worst > 0 ? x.lagMs.worst : null }, { what: 'the consumer\'s lag to be recorded' })
  t.ok(worst < 10_000, `worst persistence lag recorded by the consumer: ${worst} ms`)

  t.equal((await a.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/u1` })).statusCode, 200)
  await soldOutMarkerDropped(b, coupon.id) // b answered SOLD_OUT above; a's cancel reaches it by message
  t.equal((await issue(b, coupon.id, 'u4')).statusCode, 201, 'the returned unit goes to the next user')
  s = await stats(a, coupon.id)
  t.match(s, { issued: 4, revoked: 1, remaining: 0 }, 'a re-claim counts again; the cancel is counted')
  t.equal(new Date(s.soldOutAt).toISOString(), new Date(persisted.soldOutAt).toISOString(), 'soldOutAt is the first sell-out')

  // A counter rebuild does not touch the statistics.
  const k = a.keys.coupon(coupon.id)
  await a.redis.del(k.meta, k.stock, k.holders, k.claims)
  s = await stats(a, coupon.id)
  t.match(s, { issued: 4, revoked: 1, remaining: 0 })
})

t.test('NOT_STARTED and ENDED are counted; the route is admin-only and knows unknown coupons', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', API_KEYS: 'shop-key-0123456789' })
  const shop = { authorization: 'Bearer shop-key-0123456789' }
  const later = await createCoupon(app, { totalQuantity: 5, startsAt: new Date(Date.now() + 3_600_000).toISOString() })
  const r = await app.inject({ method: 'POST', url: `/coupons/${later.id}/issues`, headers: shop, payload: { userId: 'early' } })
  t.equal(r.json().code, 'NOT_STARTED')
  const s = await stats(app, later.id)
  t.same(s.rejected, { NOT_STARTED: 1 })
  t.same([s.firstIssuedAt, s.soldOutAt, s.issued, s.peakIssuesPerSecond], [null, null, 0, 0], 'nothing issued yet')
  t.equal((await app.inject({ method: 'GET', url: `/admin/coupons/${later.id}/stats`, headers: shop })).json().code, 'FORBIDDEN')
  t.equal((await app.inject({ method: 'GET', url: `/admin/coupons/${later.id}/stats` })).json().code, 'UNAUTHORIZED')
  t.equal((await app.inject({ method: 'GET', url: '/admin/coupons/987654321/stats', headers: admin })).json().code, 'COUPON_NOT_FOUND')
})
