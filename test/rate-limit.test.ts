// Abuse limits: per user per coupon and per client IP, shared through Redis, 429 with Retry-After.
import t from 'tap'
import { createCoupon, testApp } from './helpers/env.js'

t.test('per user per coupon, then per IP; limited calls take nothing', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', RATE_LIMIT_PER_USER: '2', RATE_LIMIT_PER_IP: '6', RATE_LIMIT_WINDOW_MS: '60000', TRUST_PROXY: 'true' })
  const coupon = await createCoupon(app, { totalQuantity: 100 })
  const issue = (userId: string, ip = '203.0.113.7') =>
    app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: { 'x-forwarded-for': ip }, payload: { userId } })

  t.equal((await issue('bot')).statusCode, 201)
  t.equal((await issue('bot')).json().code, 'ALREADY_ISSUED')
  const limited = await issue('bot')
  t.equal(limited.statusCode, 429)
  t.equal(limited.json().code, 'RATE_LIMITED')
  t.ok(Number(limited.headers['retry-after']) > 0, 'Retry-After is set')
  t.same(Object.keys(limited.json()).sort(), ['code', 'error', 'message', 'statusCode'])

  for (const userId of ['h1', 'h2', 'h3']) t.equal((await issue(userId)).statusCode, 201)
  const ipLimited = await issue('h4')
  t.equal(ipLimited.statusCode, 429, 'the seventh call from one IP is limited whatever the user')
  t.equal((await issue('h4', '198.51.100.1')).statusCode, 201, 'another IP (behind the trusted proxy) is not')
  t.equal(await app.redis.get(app.keys.coupon(coupon.id).stock), '95', 'limited calls took nothing')
})

t.test('limits are off by default', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  for (let i = 0; i < 20; i++) {
    const response = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'same' } })
    if (response.statusCode === 429) t.fail('limited without a limit configured')
  }
  t.equal(await app.redis.get(app.keys.coupon(coupon.id).stock), '0')
})
