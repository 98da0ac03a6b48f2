// A userId may have up to 128 characters (README): one that long can be issued, looked up, listed and
// cancelled. The router's default maxParamLength (100) used to answer the three path routes with 414.
import t from 'tap'
import { createCoupon, testApp } from './helpers/env.js'

const userIds = [
  'u'.repeat(101),
  'x'.repeat(128),
  // every allowed character, 128 of them; ':' and '@' may also come percent-encoded in a path
  ('Az09._:@-'.repeat(15)).slice(0, 128)
]

t.test('a userId of 101-128 characters works on every route that takes one', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  for (const userId of userIds) {
    t.equal(userId.length >= 101 && userId.length <= 128, true, `userId of ${userId.length} characters`)
    for (const inPath of [userId, encodeURIComponent(userId)]) {
      const label = `${userId.slice(0, 12)}… (${inPath.length} characters in the path)`
      const issued = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId } })
      t.equal(issued.statusCode, 201, `${label}: issued`)
      t.equal(issued.json().userId, userId)

      const held = await app.inject({ method: 'GET', url: `/coupons/${coupon.id}/issues/${inPath}` })
      t.equal(held.statusCode, 200, `${label}: looked up (${held.body.slice(0, 120)})`)
      t.equal(held.json().userId, userId)
      t.equal(held.json().units, 1, `${label}: holds one unit`)

      const listed = await app.inject({ method: 'GET', url: `/users/${inPath}/coupons` })
      t.equal(listed.statusCode, 200, `${label}: listed (${listed.body.slice(0, 120)})`)
      t.same(listed.json().coupons.map((c: { couponId: number }) => c.couponId), [coupon.id])

      const cancelled = await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/${inPath}` })
      t.equal(cancelled.statusCode, 200, `${label}: cancelled (${cancelled.body.slice(0, 120)})`)
      t.equal(cancelled.json().units, 1)
      // (the consumer is off: nothing persisted, so a user holding nothing is not found)
      const after = await app.inject({ method: 'GET', url: `/coupons/${coupon.id}/issues/${inPath}` })
      t.equal(after.json().code, 'ISSUE_NOT_FOUND', `${label}: holds nothing after the cancel`)
    }
  }
})

t.test('129 characters is a 400 INVALID_REQUEST in the path as in the body; a path segment over 1024 is still 414', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  const tooLong = 'u'.repeat(129)
  for (const [method, url] of [['GET', `/coupons/${coupon.id}/issues/${tooLong}`], ['DELETE', `/coupons/${coupon.id}/issues/${tooLong}`], ['GET', `/users/${tooLong}/coupons`]] as const) {
    const response = await app.inject({ method, url })
    t.equal(response.statusCode, 400, `${method} ${url.slice(0, 30)}…: 400`)
    t.equal(response.json().code, 'INVALID_REQUEST')
  }
  const huge = 'u'.repeat(1025)
  for (const [method, url] of [['GET', `/coupons/${coupon.id}/issues/${huge}`], ['DELETE', `/coupons/${coupon.id}/issues/${huge}`], ['GET', `/users/${huge}/coupons`], ['GET', `/coupons/${'9'.repeat(1025)}`]] as const) {
    const response = await app.inject({ method, url })
    t.equal(response.statusCode, 414, `${method} ${url.slice(0, 30)}…: 414 (its body: test/framework-errors.test.ts)`)
  }
})
