// What a shop integrating the service needs: keys, cancel, listings, lifecycle, idempotency.
import t from 'tap'
import { eq } from 'drizzle-orm'
import { couponIssues } from '../src/db/schema.js'
import { COMPLETE_MARKER } from '../src/redis/keys.js'
import { admin, createCoupon, inParallel, testApp, testConsumer } from './helpers/env.js'

const SHOP_KEY = 'shop-key-abcdef123456'
const shop = { authorization: `Bearer ${SHOP_KEY}` }

t.test('API keys: shop routes need a key once any is configured; admin routes need the admin token', async (t) => {
  const app = await testApp(t, { API_KEYS: `other-key-0000000000, ${SHOP_KEY}`, CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 3 })
  const issue = (headers: Record<string, string>) => app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, headers, payload: { userId: 'keyed' } })
  t.equal((await issue({})).json().code, 'UNAUTHORIZED')
  t.equal((await issue({ authorization: 'Bearer wrong-key' })).statusCode, 401)
  t.equal((await issue({ authorization: SHOP_KEY })).statusCode, 401, 'the Bearer scheme is required')
  t.equal(await app.redis.get(app.keys.coupon(coupon.id).stock), '3', 'rejected calls took nothing')
  t.equal((await issue(shop)).statusCode, 201)
  t.equal((await app.inject({ method: 'GET', url: `/coupons/${coupon.id}`, headers: shop })).statusCode, 200)
  const asShop = await app.inject({ method: 'POST', url: '/coupons', headers: shop, payload: { name: 'x', totalQuantity: 1 } })
  t.equal(asShop.statusCode, 403)
  t.equal(asShop.json().code, 'FORBIDDEN')
  t.equal((await app.inject({ method: 'GET', url: '/coupons', headers: shop })).statusCode, 403)
  t.equal((await app.inject({ method: 'GET', url: '/coupons' })).statusCode, 401)
})

t.test('cancel: units go back to stock, the user may claim again, Postgres keeps the history', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  const url = `/coupons/${coupon.id}/issues`
  const first = await app.inject({ method: 'POST', url, payload: { userId: 'buyer' } })
  t.equal(first.statusCode, 201)
  t.equal((await app.inject({ method: 'POST', url, payload: { userId: 'other' } })).json().code, 'SOLD_OUT')
  const cancelled = await app.inject({ method: 'DELETE', url: `${url}/buyer` })
  t.equal(cancelled.statusCode, 200)
  t.equal(cancelled.json().units, 1)
  const again = await app.inject({ method: 'DELETE', url: `${url}/buyer` })
  t.equal(again.statusCode, 404, 'a repeated cancel changes nothing')
  t.equal(again.json().code, 'ISSUE_NOT_FOUND')
  t.equal(await app.redis.get(app.keys.coupon(coupon.id).stock), '1')

  const held = await app.inject({ method: 'GET', url: `${url}/buyer` })
  t.equal(held.json().code, 'ISSUE_NOT_FOUND', 'nothing held and nothing persisted yet')
  const reclaimed = await app.inject({ method: 'POST', url, payload: { userId: 'buyer' } })
  t.equal(reclaimed.statusCode, 201, 'the user may claim again')
  t.equal(reclaimed.json().claim, 2, 'as their second claim')
  await testConsumer(t, app, 'shop-drain').drain()
  const rows = await app.db.select().from(couponIssues).where(eq(couponIssues.couponId, coupon.id)).orderBy(couponIssues.claim)
  t.equal(rows.length, 2, 'history is kept, not deleted')
  t.equal(rows[0]!.revokedAt?.toISOString(), cancelled.json().revokedAt, 'the first claim is marked revoked')
  t.equal(rows[1]!.revokedAt, null, 'the second claim is active')
  const view = await app.inject({ method: 'GET', url: `${url}/buyer` })
  t.equal(view.json().units, 1)
  t.equal(view.json().issues.length, 2)
})

t.test('a rush of issues and cancels never exceeds quantity and ends with Redis and Postgres agreeing', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 20 })
  const url = `/coupons/${coupon.id}/issues`
  let maxHeld = 0
  await inParallel(600, 32, async (i) => {
    const userId = `churn-${i % 60}`
    if (i % 3 === 2) await app.inject({ method: 'DELETE', url: `${url}/${userId}` })
    else await app.inject({ method: 'POST', url, payload: { userId } })
    const stock = Number(await app.redis.get(app.keys.coupon(coupon.id).stock))
    maxHeld = Math.max(maxHeld, 20 - stock)
    if (stock < 0) t.fail('stock went negative')
  })
  t.ok(maxHeld <= 20, 'never more out than the quantity')
  const { [COMPLETE_MARKER]: _complete, ...holders } = await app.redis.hgetall(app.keys.coupon(coupon.id).holders)
  const heldInRedis = Object.values(holders).reduce((n, v) => n + Number(v), 0)
  t.equal(heldInRedis + Number(await app.redis.get(app.keys.coupon(coupon.id).stock)), 20, 'held + stock = quantity')
  await testConsumer(t, app, 'shop-drain').drain()
  const active = await app.db.select().from(couponIssues).where(eq(couponIssues.couponId, coupon.id))
  const activeRows = active.filter((r) => r.revokedAt === null)
  t.equal(activeRows.length, heldInRedis, 'Postgres agrees with Redis on what is held')
  t.same(new Set(activeRows.map((r) => r.userId)), new Set(Object.keys(holders).filter((u) => Number(holders[u]) > 0)))
})

t.test('perUserLimit lets a user hold several units, still exactly up to the quantity', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10, perUserLimit: 3 })
  const outcomes = await inParallel(40, 16, async (i) => {
    const response = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: `multi-${i % 4}` } })
    return response.statusCode === 201 ? 'issued' : response.json().code
  })
  t.equal(outcomes.filter((o) => o === 'issued').length, 10)
  const holders = await app.redis.hgetall(app.keys.coupon(coupon.id).holders)
  t.ok(Object.values(holders).every((v) => Number(v) <= 3), 'no user beyond the limit')
  await testConsumer(t, app, 'shop-drain').drain()
  const rows = await app.db.select().from(couponIssues).where(eq(couponIssues.couponId, coupon.id))
  t.equal(rows.length, 10)
})

t.test('listings: a user\'s coupons include issues not yet persisted', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const a = await createCoupon(app, { totalQuantity: 5 })
  const b = await createCoupon(app, { totalQuantity: 5 })
  await app.inject({ method: 'POST', url: `/coupons/${a.id}/issues`, payload: { userId: 'lister' } })
  await testConsumer(t, app, 'shop-drain').drain()
  await app.inject({ method: 'POST', url: `/coupons/${b.id}/issues`, payload: { userId: 'lister' } })
  const listing = await app.inject({ method: 'GET', url: '/users/lister/coupons' })
  t.equal(listing.statusCode, 200)
  t.same(listing.json().coupons.map((c: any) => [c.couponId, c.units, c.issues.length]), [[a.id, 1, 1], [b.id, 1, 0]])
  t.equal((await app.inject({ method: 'GET', url: `/coupons/${a.id}/issues/nobody` })).json().code, 'ISSUE_NOT_FOUND')
  t.equal((await app.inject({ method: 'GET', url: '/users/nobody/coupons' })).json().coupons.length, 0)

  const page1 = await app.inject({ method: 'GET', url: '/coupons?limit=1', headers: admin })
  t.equal(page1.json().items.length, 1)
  t.equal(page1.json().items[0].persistedIssued, 1)
  t.equal(page1.json().items[0].remaining, 4)
  const page2 = await app.inject({ method: 'GET', url: `/coupons?limit=1&after=${page1.json().next}`, headers: admin })
  t.equal(page2.json().items[0].id, b.id)
  t.equal(page2.json().items[0].persistedIssued, 0, 'persisted counts lag, remaining does not')
  t.equal(page2.json().items[0].remaining, 4)
})

t.test('lifecycle: stock can be raised, never lowered below what went out; the window moves live', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 2 })
  const url = `/coupons/${coupon.id}`
  for (const userId of ['l1', 'l2']) await app.inject({ method: 'POST', url: `${url}/issues`, payload: { userId } })
  t.equal((await app.inject({ method: 'POST', url: `${url}/issues`, payload: { userId: 'l3' } })).json().code, 'SOLD_OUT')
  const raised = await app.inject({ method: 'PATCH', url, headers: admin, payload: { totalQuantity: 3 } })
  t.equal(raised.statusCode, 200)
  t.equal(raised.json().remaining, 1)
  t.equal((await app.inject({ method: 'POST', url: `${url}/issues`, payload: { userId: 'l3' } })).statusCode, 201)
  const lowered = await app.inject({ method: 'PATCH', url, headers: admin, payload: { totalQuantity: 2 } })
  t.equal(lowered.statusCode, 409)
  t.equal(lowered.json().code, 'STOCK_BELOW_ISSUED')
  const closed = await app.inject({ method: 'PATCH', url, headers: admin, payload: { totalQuantity: 5, endsAt: new Date(Date.now() - 1000 + 1000).toISOString(), startsAt: new Date(Date.now() - 60_000).toISOString() } })
  t.equal(closed.statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: `${url}/issues`, payload: { userId: 'l4' } })).json().code, 'ENDED')
  t.equal((await app.inject({ method: 'PATCH', url, headers: admin, payload: {} })).statusCode, 400, 'an empty change is rejected')
  t.equal((await app.inject({ method: 'PATCH', url: '/coupons/777777', headers: admin, payload: { totalQuantity: 9 } })).json().code, 'COUPON_NOT_FOUND')
  t.equal((await app.inject({ method: 'PATCH', url, payload: { totalQuantity: 9 } })).statusCode, 401)
  t.equal((await app.inject({ method: 'PATCH', url, headers: admin, payload: { endsAt: '2000-01-01T00:00:00Z' } })).json().code, 'INVALID_WINDOW')
})

t.test('Idempotency-Key: a retry replays the first outcome; the same key with another body is 422', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const send = (userId: string, key: string) => app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: { 'idempotency-key': key }, payload: { userId } })
  const [one, two] = await Promise.all([send('idem-user', 'key-1'), send('idem-user', 'key-1')])
  t.equal(one!.statusCode, 201)
  t.equal(two!.statusCode, 201, 'the concurrent duplicate replays the success')
  t.equal(one!.json().issuedAt, two!.json().issuedAt, 'same issuedAt')
  const later = await send('idem-user', 'key-1')
  t.equal(later.json().issuedAt, one!.json().issuedAt)
  t.equal(later.headers['idempotent-replayed'], 'true')
  const other = await send('someone-else', 'key-1')
  t.equal(other.statusCode, 422)
  t.equal(other.json().code, 'IDEMPOTENCY_KEY_REUSED')
  const withoutKey = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'idem-user' } })
  t.equal(withoutKey.json().code, 'ALREADY_ISSUED', 'without the key a retry is a new claim')
  t.equal(await app.redis.get(app.keys.coupon(coupon.id).stock), '4', 'one unit out')
  const cancel1 = await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/idem-user`, headers: { 'idempotency-key': 'cancel-1' } })
  const cancel2 = await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/idem-user`, headers: { 'idempotency-key': 'cancel-1' } })
  t.equal(cancel1.statusCode, 200)
  t.same(cancel2.json(), cancel1.json(), 'a retried cancel replays')
})

t.test('a cancel or a change that Redis refuses answers its own 503 code and changes nothing', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const k = app.keys.coupon(coupon.id)
  const url = `/coupons/${coupon.id}`
  t.equal((await app.inject({ method: 'POST', url: `${url}/issues`, payload: { userId: 'r1' } })).statusCode, 201)
  // A key of the wrong type makes the script fail (WRONGTYPE) before its first write.
  const breakKey = async (key: string) => {
    await app.redis.rename(key, `${key}:saved`)
    await app.redis.set(key, 'not what the script expects')
    return async () => { await app.redis.del(key); await app.redis.rename(`${key}:saved`, key) }
  }

  let repair = await breakKey(k.events)
  const cancel = { method: 'DELETE', url: `${url}/issues/r1`, headers: { 'idempotency-key': 'cancel-r1' } } as const
  const refused = await app.inject(cancel)
  t.equal(refused.statusCode, 503)
  t.equal(refused.json().code, 'CANCEL_SCRIPT_FAILED')
  t.equal(await app.redis.hget(k.holders, 'r1'), '1', 'the user still holds the unit')
  t.equal(await app.redis.get(k.stock), '4', 'stock unchanged')
  await repair()
  const retried = await app.inject(cancel)
  t.equal(retried.statusCode, 200, 'the retry with the same key cancels')
  t.equal(retried.headers['idempotent-replayed'], undefined, 'it is the first cancel that happened, not a replay')

  repair = await breakKey(k.meta)
  const change = await app.inject({ method: 'PATCH', url, headers: admin, payload: { totalQuantity: 9 } })
  t.equal(change.statusCode, 503)
  t.equal(change.json().code, 'UPDATE_SCRIPT_FAILED')
  await repair()
  const read = (await app.inject({ method: 'GET', url })).json()
  t.same([read.totalQuantity, read.remaining], [5, 5], 'neither Postgres nor Redis took the new total')
  t.equal((await app.inject({ method: 'PATCH', url, headers: admin, payload: { totalQuantity: 9 } })).json().remaining, 9, 'the retry applies it')

  // Counters missing and the rebuild's script refused (the discarded set has the wrong type): the cancel
  // and the change still answer their own codes, not the issue's.
  await app.redis.del(k.stock)
  await app.redis.set(k.discarded, 'not a set')
  t.equal((await app.inject({ method: 'DELETE', url: `${url}/issues/r1` })).json().code, 'CANCEL_SCRIPT_FAILED')
  t.equal((await app.inject({ method: 'PATCH', url, headers: admin, payload: { totalQuantity: 8 } })).json().code, 'UPDATE_SCRIPT_FAILED')
  t.equal((await app.inject({ method: 'POST', url: `${url}/issues`, payload: { userId: 'r2' } })).json().code, 'ISSUE_SCRIPT_FAILED')
  await app.redis.del(k.discarded)
  t.equal((await app.inject({ method: 'PATCH', url, headers: admin, payload: { totalQuantity: 8 } })).statusCode, 200, 'rebuilt and applied once the key is repaired')
})

t.test('POST /coupons with an Idempotency-Key: a retry after a 503 that came after the commit finds the campaign instead of making a second', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const create = (body: Record<string, unknown>, key?: string) => app.inject({
    method: 'POST', url: '/coupons', headers: { ...admin, ...(key ? { 'idempotency-key': key } : {}) }, payload: { name: 'launch', totalQuantity: 50, ...body }
  })
  // The first campaign of this fresh database gets id 1; a key of the wrong type where its stock goes makes
  // the counters fail to build after the row committed.
  const stockKey = `${app.env.prefix}coupon:{1}:stock`
  await app.redis.hset(stockKey, 'not', 'a counter')
  const failed = await create({ metadata: { b: 1, a: 2 } }, 'launch-2026')
  t.equal(failed.statusCode, 503, 'the first attempt fails after its row committed')
  t.ok(failed.json().code, 'with a code')
  await app.redis.del(stockKey)

  const retried = await create({ metadata: { a: 2, b: 1 } }, 'launch-2026')
  t.equal(retried.statusCode, 201, 'the retry with the same key (and the same body, keys in another order) answers 201')
  t.equal(retried.headers['idempotent-replayed'], 'true', 'as a replay')
  t.equal(retried.json().id, 1, 'of the campaign the first attempt created')
  t.equal(retried.json().remaining, 50, 'whose counters the retry built')
  t.notOk('creationKey' in retried.json(), 'the key is not shown')
  t.equal((await app.inject({ method: 'POST', url: '/coupons/1/issues', payload: { userId: 'first-buyer' } })).statusCode, 201, 'the campaign issues')

  const list = (await app.inject({ method: 'GET', url: '/coupons', headers: admin })).json()
  t.equal((list.items ?? list).length, 1, 'one campaign, not two')

  const reused = await create({ totalQuantity: 51 }, 'launch-2026')
  t.equal(reused.statusCode, 422, 'the same key with another body is refused')
  t.equal(reused.json().code, 'IDEMPOTENCY_KEY_REUSED')

  const twins = await Promise.all(Array.from({ length: 8 }, () => create({ name: 'twins' }, 'twins-1')))
  t.same(twins.map((r) => r.statusCode), Array(8).fill(201), 'eight concurrent creations with one key all answer 201')
  t.equal(new Set(twins.map((r) => r.json().id)).size, 1, 'with one campaign')
  t.equal(twins.filter((r) => r.headers['idempotent-replayed'] !== 'true').length, 1, 'created once, replayed seven times')

  const unkeyed = await Promise.all([create({ name: 'plain' }), create({ name: 'plain' })])
  t.not(unkeyed[0]!.json().id, unkeyed[1]!.json().id, 'without a key every request creates a campaign, as before')
  t.equal((await create({}, 'x'.repeat(256))).statusCode, 400, 'an overlong key is a 400')
})
