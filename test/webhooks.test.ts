// Webhooks (issue 11): signed deliveries from the outbox, retried with backoff against a real local
// receiver, each delivery attempted by one instance at a time, never slowing issuing; the admin routes.
import t from 'tap'
import { sql } from 'drizzle-orm'
import { admin, createCoupon, inParallel, testApp, waitFor, type TestApp } from './helpers/env.js'
import { startReceiver } from './helpers/receiver.js'
import { verify } from '../src/webhooks/signature.js'
import { backoffDelay } from '../src/webhooks/delivery-loop.js'
import { eventId, recordEvents, type OutboxEvent } from '../src/events/outbox.js'
import { leaseDeliveries } from '../src/db/queries/webhooks.js'

const FAST = { WEBHOOK_POLL_MS: '20', WEBHOOK_TIMEOUT_MS: '400', WEBHOOK_BACKOFF_BASE_MS: '200', WEBHOOK_BACKOFF_MAX_MS: '5000' }

async function createWebhook (app: TestApp, url: string, events: string[] = ['issue.created', 'issue.revoked', 'coupon.sold_out']) {
  const response = await app.inject({ method: 'POST', url: '/admin/webhooks', headers: admin, payload: { url, events } })
  if (response.statusCode !== 201) throw new Error(`webhook not created: ${response.statusCode} ${response.body}`)
  return response.json() as { id: number, secret: string, url: string, events: string[] }
}

const deliveries = async (app: TestApp, webhookId: number, query = '') =>
  (await app.inject({ method: 'GET', url: `/admin/webhooks/${webhookId}/deliveries${query}`, headers: admin })).json()

const issue = (app: TestApp, couponId: number, userId: string) =>
  app.inject({ method: 'POST', url: `/coupons/${couponId}/issues`, payload: { userId } })

/** Events written straight to the outbox (as a fact's transaction would), for the loop tests. */
const syntheticEvents = (couponId: number, count: number, from = 0): OutboxEvent[] => Array.from({ length: count }, (_, i) => {
  const key = `${1700000000000 + from + i}-0`
  return { id: eventId('issue.created', couponId, key), type: 'issue.created', couponId, key, data: { couponId, userId: `u${from + i}`, claim: 1, issuedAt: new Date().toISOString() } }
})

t.test('a receiver that fails three times (500, hang past the timeout, closed socket) gets the event, signed, same id, retries spaced by the backoff', async (t) => {
  const receiver = await startReceiver(t, (n) => n === 1 ? 500 : n === 2 ? 'hang' : n === 3 ? 'close' : 200)
  const app = await testApp(t, FAST)
  const hook = await createWebhook(app, receiver.url)
  t.match(hook.secret, /^whsec_[A-Za-z0-9_-]{43}$/, 'the secret is shown at creation')
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const answer = (await issue(app, coupon.id, 'alice')).json()

  await waitFor(async () => receiver.received.length >= 4, { timeoutMs: 20_000, what: 'four attempts' })
  const attempts = receiver.received.slice(0, 4)
  t.same(new Set(attempts.map((a) => a.id)).size, 1, 'one event id across every retry')
  t.same(new Set(attempts.map((a) => a.body)).size, 1, 'the same body on every attempt')
  for (const a of attempts) t.ok(verify(hook.secret, a.signature, a.body), 'the signature verifies with the secret')
  t.notOk(verify('whsec_wrong', attempts[0]!.signature, attempts[0]!.body), 'and not with another secret')
  t.notOk(verify(hook.secret, attempts[0]!.signature, attempts[0]!.body.replace('alice', 'mallory')), 'nor for another body')
  t.match(attempts[0]!.json, { type: 'issue.created', data: { couponId: coupon.id, userId: 'alice', claim: 1, issuedAt: answer.issuedAt } })
  t.match(attempts[0]!.json.id, /^evt_[0-9a-f]{32}$/)
  t.match(attempts[0]!.json.createdAt, /^\d{4}-\d\d-\d\dT/)
  // Backoff base 200 ms, ±25 %: retry n waits at least 150·2^(n−1) ms after the previous attempt ended
  // (the hang ends at the 400 ms timeout).
  const gaps = [attempts[1]!.at - attempts[0]!.at, attempts[2]!.at - attempts[1]!.at, attempts[3]!.at - attempts[2]!.at]
  t.ok(gaps[0]! >= 150, `1st retry after >= 150 ms (${gaps[0]})`)
  t.ok(gaps[1]! >= 400 + 300, `2nd retry after the 400 ms timeout + >= 300 ms (${gaps[1]})`)
  t.ok(gaps[2]! >= 600, `3rd retry after >= 600 ms (${gaps[2]})`)

  const delivered = await waitFor(async () => {
    const page = await deliveries(app, hook.id)
    return page.items[0]?.status === 'delivered' ? page : null
  }, { what: 'the delivery marked delivered' })
  t.match(delivered.items[0], { eventId: attempts[0]!.id, eventType: 'issue.created', status: 'delivered', attempts: 4, lastStatus: 200, lastError: null, nextAttemptAt: null })
  t.equal(receiver.received.length, 4, 'nothing sent after the 2xx')

  const read = await app.inject({ method: 'GET', url: `/admin/webhooks/${hook.id}`, headers: admin })
  t.same(Object.keys(read.json()).sort(), ['createdAt', 'events', 'id', 'url'], 'a later read never shows the secret')
  const list = await app.inject({ method: 'GET', url: '/admin/webhooks', headers: admin })
  t.notOk(JSON.stringify(list.json()).includes(hook.secret), 'nor does the list')
})

t.test('backoff doubles up to the cap, with jitter within ±25 %', async (t) => {
  const o = { backoffBaseMs: 1000, backoffMaxMs: 3_600_000 }
  t.equal(backoffDelay(1, o, () => 0.5), 1000)
  t.equal(backoffDelay(4, o, () => 0.5), 8000)
  t.equal(backoffDelay(1, o, () => 0), 750)
  t.equal(backoffDelay(1, o, () => 1), 1250)
  t.equal(backoffDelay(500, o, () => 0.5), 3_600_000, 'capped, no overflow')
  // With the defaults (10 s base, 1 h cap) the 24 h window holds about 30 attempts.
  let total = 0
  let n = 0
  while (total < 24 * 3600_000) total += backoffDelay(++n, { backoffBaseMs: 10_000, backoffMaxMs: 3_600_000 }, () => 0.5)
  t.ok(n > 20 && n < 40, `${n} attempts in 24 h`)
})
