// Pause and resume (issue 11): a switch for the claims only. While paused every issue answers 409 PAUSED
// (one flag read inside issue.lua); cancels and persistence go on; the switch survives a counter
// rebuild, ends every sold-out marker, and is never remembered under an Idempotency-Key.
import t from 'tap'
import { admin, createCoupon, testApp, waitFor, type TestApp } from './helpers/env.js'

const issue = (app: TestApp, couponId: number, userId: string, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url: `/coupons/${couponId}/issues`, headers, payload: { userId } })
const toggle = (app: TestApp, couponId: number, action: 'pause' | 'resume', headers: Record<string, string> = admin) =>
  app.inject({ method: 'POST', url: `/coupons/${couponId}/${action}`, headers })

t.test('pause stops claims with PAUSED; cancels and reads go on; resume opens them again', async (t) => {
  const app = await testApp(t)
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  t.equal((await issue(app, coupon.id, 'early')).statusCode, 201)

  const paused = await toggle(app, coupon.id, 'pause')
  t.equal(paused.statusCode, 200)
  t.equal(paused.json().paused, true)
  t.equal(paused.json().remaining, 4)
  t.equal((await toggle(app, coupon.id, 'pause')).statusCode, 200, 'pausing twice is harmless')

  const refused = await issue(app, coupon.id, 'late')
  t.equal(refused.statusCode, 409)
  t.same(refused.json(), { statusCode: 409, code: 'PAUSED', error: 'Conflict', message: `Coupon ${coupon.id} is paused. Retry after it resumes.` })
  t.equal((await app.inject({ method: 'GET', url: `/coupons/${coupon.id}` })).json().paused, true)
  t.equal((await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/early` })).statusCode, 200, 'a cancel goes on while paused')

  const resumed = await toggle(app, coupon.id, 'resume')
  t.equal(resumed.statusCode, 200)
  t.equal(resumed.json().paused, false)
  t.equal((await issue(app, coupon.id, 'late')).statusCode, 201, 'claims open again')
})

t.test('Idempotency-Key: a 201 from before the pause replays; PAUSED is not remembered', async (t) => {
  const app = await testApp(t)
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const first = await issue(app, coupon.id, 'keyed', { 'idempotency-key': 'before' })
  await toggle(app, coupon.id, 'pause')
  const replay = await issue(app, coupon.id, 'keyed', { 'idempotency-key': 'before' })
  t.equal(replay.statusCode, 201)
  t.equal(replay.json().issuedAt, first.json().issuedAt, 'the replay is the first answer')
  t.equal((await issue(app, coupon.id, 'other', { 'idempotency-key': 'during' })).json().code, 'PAUSED')
  await toggle(app, coupon.id, 'resume')
  const retried = await issue(app, coupon.id, 'other', { 'idempotency-key': 'during' })
  t.equal(retried.statusCode, 201, 'the same key wins after the resume')
  t.notOk(retried.headers['idempotent-replayed'])
})

t.test('the pause survives a counter rebuild, and ends a sold-out marker at once', async (t) => {
  const app = await testApp(t, { SOLD_OUT_MARKER_TTL_MS: '60000' })
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  t.equal((await issue(app, coupon.id, 'winner')).statusCode, 201)
  t.equal((await issue(app, coupon.id, 'l1')).json().code, 'SOLD_OUT')
  t.equal((await issue(app, coupon.id, 'l2')).json().code, 'SOLD_OUT')
  await toggle(app, coupon.id, 'pause')
  t.equal((await issue(app, coupon.id, 'l3')).json().code, 'PAUSED', 'not SOLD_OUT from a marker')

  const k = app.keys.coupon(coupon.id)
  await app.redis.del(k.meta, k.stock, k.holders, k.claims)
  t.equal((await issue(app, coupon.id, 'l4')).json().code, 'PAUSED', 'rebuilt from Postgres, still paused')
  await toggle(app, coupon.id, 'resume')
  t.equal((await issue(app, coupon.id, 'l5')).json().code, 'SOLD_OUT')
})

t.test('a pause racing a burst of claims: nothing is issued after its answer, and the books balance', async (t) => {
  const app = await testApp(t)
  const total = 100_000
  const coupon = await createCoupon(app, { totalQuantity: total })
  // Claims keep coming until 20 have started after the pause answered, however long the pause takes
  // (it waits for the coupon row, which the consumer's writes hold a moment): the race always happens.
  let pausedAt = 0
  let startedAfterPause = 0
  let next = 0
  const answers: { status: number, code: string | undefined, started: number }[] = []
  const pausing = (async () => {
    await waitFor(async () => next >= 60, { what: '60 claims under way' })
    const r = await toggle(app, coupon.id, 'pause')
    pausedAt = Date.now()
    return r.statusCode
  })()
  await Promise.all(Array.from({ length: 50 }, async () => {
    // pausedAt is set by the pause task while these loops await their claims.
    // eslint-disable-next-line no-unmodified-loop-condition
    while (!(pausedAt > 0 && startedAfterPause >= 20) && next < 20_000) {
      const i = next++
      const started = Date.now()
      if (pausedAt > 0) startedAfterPause++
      const r = await issue(app, coupon.id, `u${i}`)
      answers.push({ status: r.statusCode, code: r.json().code as string | undefined, started })
    }
  }))
  t.equal(await pausing, 200, 'the pause answered')
  const won = answers.filter((a) => a.status === 201).length
  t.ok(answers.some((a) => a.code === 'PAUSED'), 'some claims met the pause')
  t.notOk(answers.some((a) => a.status === 201 && a.started > pausedAt), 'no claim started after the pause answered was issued')
  t.ok(answers.every((a) => a.status === 201 || a.code === 'PAUSED'), 'only 201 or PAUSED')
  t.equal(Number(await app.redis.get(app.keys.coupon(coupon.id).stock)), total - won, 'stock = total - what was issued')
})

t.test('pause and resume are admin-only and answer 404 for an unknown coupon', async (t) => {
  const app = await testApp(t, { API_KEYS: 'shop-key-0123456789' })
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  t.equal((await toggle(app, coupon.id, 'pause', {})).json().code, 'UNAUTHORIZED')
  t.equal((await toggle(app, coupon.id, 'pause', { authorization: 'Bearer shop-key-0123456789' })).json().code, 'FORBIDDEN')
  t.equal((await toggle(app, 987654321, 'resume')).json().code, 'COUPON_NOT_FOUND')
  t.equal((await app.inject({ method: 'POST', url: '/coupons/abc/pause', headers: admin })).json().code, 'INVALID_REQUEST')
})
