// Bad input of every kind gets its 4xx with a code, and changes nothing.
import t from 'tap'
import { couponIssues } from '../src/db/schema.js'
import { admin, createCoupon, testApp, waitFor } from './helpers/env.js'

t.test('bad input is rejected and leaves stock, users and stream untouched', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const k = app.keys.coupon(coupon.id)
  const snapshot = async () => ({
    stock: await app.redis.get(k.stock),
    holders: await app.redis.hgetall(k.holders),
    events: await app.redis.xlen(k.events),
    rows: (await app.db.select().from(couponIssues)).length
  })
  const before = await snapshot()

  const issue = (url: string, payload: unknown, headers: Record<string, string> = {}) =>
    app.inject({ method: 'POST', url, payload: payload as any, headers: { 'content-type': 'application/json', ...headers } })
  const cases: [string, () => ReturnType<typeof issue>, number, string][] = [
    ['missing userId', () => issue(`/coupons/${coupon.id}/issues`, {}), 400, 'INVALID_REQUEST'],
    ['empty userId', () => issue(`/coupons/${coupon.id}/issues`, { userId: '' }), 400, 'INVALID_REQUEST'],
    ['userId of 129 characters', () => issue(`/coupons/${coupon.id}/issues`, { userId: 'u'.repeat(129) }), 400, 'INVALID_REQUEST'],
    ['numeric userId (no coercion)', () => issue(`/coupons/${coupon.id}/issues`, { userId: 12345 }), 400, 'INVALID_REQUEST'],
    ['userId with a space', () => issue(`/coupons/${coupon.id}/issues`, { userId: 'a b' }), 400, 'INVALID_REQUEST'],
    ['userId with a NUL byte', () => issue(`/coupons/${coupon.id}/issues`, { userId: 'a\u0000b' }), 400, 'INVALID_REQUEST'],
    ['extra property', () => issue(`/coupons/${coupon.id}/issues`, { userId: 'u1', admin: true }), 400, 'INVALID_REQUEST'],
    ['array body', () => issue(`/coupons/${coupon.id}/issues`, [{ userId: 'u1' }]), 400, 'INVALID_REQUEST'],
    ['malformed JSON', () => issue(`/coupons/${coupon.id}/issues`, '{"userId": "u1"'), 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    ['coupon id 0', () => issue('/coupons/0/issues', { userId: 'u1' }), 400, 'INVALID_REQUEST'],
    ['negative coupon id', () => issue('/coupons/-3/issues', { userId: 'u1' }), 400, 'INVALID_REQUEST'],
    ['non-numeric coupon id', () => issue('/coupons/abc/issues', { userId: 'u1' }), 400, 'INVALID_REQUEST'],
    ['fractional coupon id', () => issue('/coupons/1.5/issues', { userId: 'u1' }), 400, 'INVALID_REQUEST'],
    ['unknown coupon', () => issue('/coupons/999999/issues', { userId: 'u1' }), 404, 'COUPON_NOT_FOUND'],
    ['body over the limit', () => issue(`/coupons/${coupon.id}/issues`, { userId: 'u1', pad: 'x'.repeat(10_000) }), 413, 'FST_ERR_CTP_BODY_TOO_LARGE'],
    ['bad Idempotency-Key', () => issue(`/coupons/${coupon.id}/issues`, { userId: 'u1' }, { 'idempotency-key': 'has space' }), 400, 'INVALID_REQUEST'],
    ['no admin token on create', () => app.inject({ method: 'POST', url: '/coupons', payload: { name: 'x', totalQuantity: 1 } }), 401, 'UNAUTHORIZED'],
    ['wrong admin token on create', () => app.inject({ method: 'POST', url: '/coupons', headers: { authorization: 'Bearer nope' }, payload: { name: 'x', totalQuantity: 1 } }), 401, 'UNAUTHORIZED'],
    ['zero quantity', () => app.inject({ method: 'POST', url: '/coupons', headers: admin, payload: { name: 'x', totalQuantity: 0 } }), 400, 'INVALID_REQUEST'],
    ['quantity as string', () => app.inject({ method: 'POST', url: '/coupons', headers: admin, payload: { name: 'x', totalQuantity: '10' } }), 400, 'INVALID_REQUEST'],
    ['window ends before it starts', () => app.inject({ method: 'POST', url: '/coupons', headers: admin, payload: { name: 'x', totalQuantity: 1, startsAt: '2030-01-02T00:00:00Z', endsAt: '2030-01-01T00:00:00Z' } }), 400, 'INVALID_WINDOW'],
    ['startsAt not a date', () => app.inject({ method: 'POST', url: '/coupons', headers: admin, payload: { name: 'x', totalQuantity: 1, startsAt: 'tomorrow' } }), 400, 'INVALID_REQUEST'],
    ['unknown coupon read', () => app.inject({ method: 'GET', url: '/coupons/424242' }), 404, 'COUPON_NOT_FOUND'],
    ['unknown route', () => app.inject({ method: 'GET', url: '/nope' }), 404, 'ROUTE_NOT_FOUND']
  ]
  for (const [name, send, status, code] of cases) {
    const response = await send()
    const body = response.json()
    t.equal(response.statusCode, status, `${name}: status ${status}`)
    t.equal(body.code, code, `${name}: code ${code}`)
    t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'], `${name}: error body shape`)
  }
  t.same(await snapshot(), before, 'nothing changed in Redis or Postgres')
  const couponsAfter = await app.inject({ method: 'GET', url: '/coupons', headers: admin })
  t.equal(couponsAfter.json().items.length, 1, 'no coupon was created by the rejected requests')
})

t.test('the coupon window is enforced with Redis time', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const future = await createCoupon(app, { totalQuantity: 5, startsAt: new Date(Date.now() + 3_600_000).toISOString() })
  const early = await app.inject({ method: 'POST', url: `/coupons/${future.id}/issues`, payload: { userId: 'early-bird' } })
  t.equal(early.statusCode, 409)
  t.equal(early.json().code, 'NOT_STARTED')

  // The window is open while the first request is served however slow the machine, then set to close
  // a moment later: the request after that moment is refused by the clock alone.
  const closing = await createCoupon(app, { totalQuantity: 5, endsAt: new Date(Date.now() + 3_600_000).toISOString() })
  const inTime = await app.inject({ method: 'POST', url: `/coupons/${closing.id}/issues`, payload: { userId: 'on-time' } })
  t.equal(inTime.statusCode, 201)
  const endsAt = Date.now() + 100
  const closed = await app.inject({ method: 'PATCH', url: `/coupons/${closing.id}`, headers: admin, payload: { endsAt: new Date(endsAt).toISOString() } })
  t.equal(closed.statusCode, 200)
  await waitFor(async () => Date.now() > endsAt + 20, { what: 'the coupon window to close' })
  const late = await app.inject({ method: 'POST', url: `/coupons/${closing.id}/issues`, payload: { userId: 'too-late' } })
  t.equal(late.statusCode, 409)
  t.equal(late.json().code, 'ENDED')
  t.equal(await app.redis.get(app.keys.coupon(closing.id).stock), '4', 'the late request took nothing')
})

t.test('a flood of requests for a coupon that does not exist: every one gets 404, none waits for a rebuild', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const { inParallel } = await import('./helpers/env.js')
  const codes = await inParallel(300, 64, async (i) => {
    const response = await app.inject({ method: 'POST', url: '/coupons/55555/issues', payload: { userId: `u${i}` } })
    return response.json().code
  })
  t.same([...new Set(codes)], ['COUPON_NOT_FOUND'])
  const created = await createCoupon(app, { totalQuantity: 1 })
  const first = await app.inject({ method: 'POST', url: `/coupons/${created.id}/issues`, payload: { userId: 'right-after' } })
  t.equal(first.statusCode, 201, 'a coupon created right after a miss is served at once')
})
