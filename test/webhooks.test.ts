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

const FAST = { EVENTS_ENABLED: 'true', WEBHOOK_POLL_MS: '20', WEBHOOK_TIMEOUT_MS: '400', WEBHOOK_BACKOFF_BASE_MS: '200', WEBHOOK_BACKOFF_MAX_MS: '5000' }

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
  // The count follows the recorded answer (the row is committed a moment before the counter moves): polled.
  const metrics = await waitFor(async () => {
    const body = (await app.inject({ method: 'GET', url: '/metrics' })).body
    return /couponrush_webhook_attempts_total\{outcome="delivered"\} 1/.test(body) ? body : null
  }, { what: 'the delivered attempt counted' })
  t.match(metrics, /couponrush_webhook_attempts_total\{outcome="failed"\} 3/)
  t.match(metrics, /couponrush_webhook_attempts_total\{outcome="delivered"\} 1/)
  t.match(metrics, /couponrush_webhook_deliveries_pending 0/)

  const read = await app.inject({ method: 'GET', url: `/admin/webhooks/${hook.id}`, headers: admin })
  t.same(Object.keys(read.json()).sort(), ['createdAt', 'events', 'id', 'url'], 'a later read never shows the secret')
  const list = await app.inject({ method: 'GET', url: '/admin/webhooks', headers: admin })
  t.notOk(JSON.stringify(list.json()).includes(hook.secret), 'nor does the list')
})

t.test('WEBHOOK_* settings reach child servers (bench, load test) unchanged', async (t) => {
  const { loadConfig } = await import('../src/config.js')
  const { configEnv } = await import('../scripts/lib/server.js')
  const config = loadConfig({ ADMIN_TOKEN: 'x'.repeat(32), WEBHOOKS_ENABLED: 'false', WEBHOOK_CONCURRENCY: '3', WEBHOOK_TIMEOUT_MS: '1500', WEBHOOK_POLL_MS: '250', WEBHOOK_BACKOFF_BASE_MS: '99', WEBHOOK_BACKOFF_MAX_MS: '7777', WEBHOOK_RETRY_FOR_MS: '123456' })
  t.same(config.webhooks, { enabled: false, concurrency: 3, timeoutMs: 1500, pollMs: 250, backoffBaseMs: 99, backoffMaxMs: 7777, retryForMs: 123456 })
  t.same(loadConfig(configEnv(config)).webhooks, config.webhooks)
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

t.test('a redelivered stream batch, written twice or by two writers at once, makes no second event', async (t) => {
  const receiver = await startReceiver(t)
  const app = await testApp(t, { ...FAST, CONSUMER_ENABLED: 'false' })
  const hook = await createWebhook(app, receiver.url)
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const { persistEvents } = await import('../src/db/queries/issues.js')
  const streamKey = app.keys.coupon(coupon.id).events
  const issues = Array.from({ length: 5 }, (_, i) => ({ type: 'issue' as const, streamKey, id: `${1700000000000 + i}-0`, couponId: coupon.id, userId: `r${i}`, claim: 1, at: 1700000000000 + i }))
  const revokes = [{ type: 'revoke' as const, streamKey, id: '1700000000010-0', couponId: coupon.id, userId: 'r0', units: 1, at: 1700000000010, upToClaim: 1 }]
  await Promise.all([persistEvents(app.db, issues, revokes), persistEvents(app.db, issues, revokes)])
  await persistEvents(app.db, issues, revokes)
  await persistEvents(app.db, issues.slice(1, 3), [])
  const rows: any = await app.db.execute(sql`SELECT type, count(*)::int AS n, count(DISTINCT id)::int AS ids FROM events GROUP BY type ORDER BY type`)
  t.same((rows.rows ?? rows), [{ type: 'issue.created', n: 5, ids: 5 }, { type: 'issue.revoked', n: 1, ids: 1 }], 'one event per fact')
  const ids: any = await app.db.execute(sql`SELECT id FROM events WHERE type = 'issue.created' ORDER BY id`)
  t.same((ids.rows ?? ids).map((r: any) => r.id), issues.map((e) => eventId('issue.created', coupon.id, e.id)).sort(), 'ids derived from the stream entries')
  const d: any = await app.db.execute(sql`SELECT count(*)::int AS n FROM webhook_deliveries WHERE webhook_id = ${hook.id}`)
  t.equal((d.rows ?? d)[0].n, 6, 'one delivery per event and webhook')
  await waitFor(async () => receiver.received.length >= 6, { what: 'six deliveries' })
  t.equal(new Set(receiver.received.map((r) => r.id)).size, 6)

  // An issue whose (coupon, user, claim) already has a row from another entry is no new fact: no event.
  await persistEvents(app.db, [{ ...issues[0]!, id: '1700000000099-0' }], [])
  const again: any = await app.db.execute(sql`SELECT count(*)::int AS n FROM events`)
  t.equal((again.rows ?? again)[0].n, 6, 'a refused row announces nothing')
})

t.test('issue.created, coupon.sold_out once per sell-out, issue.revoked, through the real issue path and consumer', async (t) => {
  const app = await testApp(t, FAST)
  const coupon = await createCoupon(app, { totalQuantity: 2 })
  const feed = async () => (await app.inject({ method: 'GET', url: '/admin/events?limit=1000', headers: admin })).json().items as any[]
  const types = async () => (await feed()).filter((e) => e.data.couponId === coupon.id).map((e) => e.type)
  for (const userId of ['s1', 's2']) t.equal((await issue(app, coupon.id, userId)).statusCode, 201)
  await waitFor(async () => (await types()).includes('coupon.sold_out'), { what: 'coupon.sold_out' })
  t.equal((await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/s1` })).statusCode, 200)
  await waitFor(async () => (await types()).includes('issue.revoked'), { what: 'issue.revoked' })
  t.equal((await issue(app, coupon.id, 's3')).statusCode, 201, 'the returned unit goes to s3')
  await waitFor(async () => (await types()).filter((x) => x === 'coupon.sold_out').length === 2, { what: 'the second sell-out' })
  const events = (await feed()).filter((e) => e.data.couponId === coupon.id)
  t.same(events.map((e) => e.type).sort(), ['coupon.sold_out', 'coupon.sold_out', 'issue.created', 'issue.created', 'issue.created', 'issue.revoked'])
  t.match(events.find((e) => e.type === 'issue.revoked'), { data: { couponId: coupon.id, userId: 's1', units: 1, upToClaim: 1, revokedAt: String } })
  t.match(events.find((e) => e.type === 'coupon.sold_out'), { data: { couponId: coupon.id, totalQuantity: 2 } })
  const { recordSoldOut } = await import('../src/events/outbox.js')
  t.equal(await recordSoldOut(app.db, [coupon.id]), 0, 'checking the same sold-out state again makes nothing new')
})

t.test('two instances on one database: every delivery sent once, never two attempts of one at a time; an expired lease is taken over', async (t) => {
  const receiver = await startReceiver(t, () => ({ status: 200, delayMs: 30 }))
  const one = await testApp(t, { ...FAST, WEBHOOK_CONCURRENCY: '3', WEBHOOKS_ENABLED: 'false' })
  const hook = await createWebhook(one, receiver.url)
  const coupon = await createCoupon(one, { totalQuantity: 10 })
  // A killed instance's lease: taken, never finished, expiring shortly.
  await recordEvents(one.db, syntheticEvents(coupon.id, 1, 999))
  const [stranded] = await leaseDeliveries(one.db, { limit: 1, leaseMs: 300, token: '00000000-0000-4000-8000-000000000001' })
  t.ok(stranded, 'a delivery leased by an instance that then died')
  await recordEvents(one.db, syntheticEvents(coupon.id, 60))

  const env = { ...FAST, WEBHOOK_CONCURRENCY: '3', DATABASE_URL: one.env.databaseUrl, REDIS_PREFIX: one.env.prefix, CONSUMER_ENABLED: 'false' }
  const a = await testApp(t, env)
  const b = await testApp(t, env)
  await waitFor(async () => new Set(receiver.received.map((r) => r.id)).size === 61, { timeoutMs: 20_000, what: 'all 61 events delivered' })
  await waitFor(async () => (await deliveries(one, hook.id, '?status=delivered&limit=500')).items.length === 61, { what: 'all marked delivered' })
  t.equal(receiver.maxConcurrentPerEvent, 1, 'no event was ever sent twice at once')
  t.equal(receiver.received.length, 61, 'each delivery sent exactly once (every receiver answer was 2xx)')
  t.ok(a.deliveryLoop!.stats.delivered > 0 && b.deliveryLoop!.stats.delivered > 0, `both instances delivered (${a.deliveryLoop!.stats.delivered} + ${b.deliveryLoop!.stats.delivered})`)
  t.equal(a.deliveryLoop!.stats.delivered + b.deliveryLoop!.stats.delivered, 61)
  const strandedRow = (await deliveries(one, hook.id, '?limit=500')).items.find((d: any) => d.id === stranded!.id)
  t.match(strandedRow, { status: 'delivered', attempts: 2 }, 'the dead instance\'s attempt counted, the lease expired, another instance delivered it')
})

t.test('a dead receiver does not slow issuing or persisting, nor starve another webhook', async (t) => {
  const hanging = await startReceiver(t, () => 'hang')
  const healthy = await startReceiver(t)
  const app = await testApp(t, { ...FAST, WEBHOOK_TIMEOUT_MS: '30000', WEBHOOK_CONCURRENCY: '4' })
  const N = 300
  const rush = async (couponId: number) => {
    const started = performance.now()
    const codes = await inParallel(N, 20, async (i) => (await issue(app, couponId, `user-${i}`)).statusCode)
    const ms = performance.now() - started
    t.ok(codes.every((c) => c === 201), `${N} issued`)
    return ms
  }
  const persisted = async (couponId: number) => {
    const r: any = await app.db.execute(sql`SELECT count(*)::int AS n FROM coupon_issues WHERE coupon_id = ${couponId}`)
    return (r.rows ?? r)[0].n === N
  }
  const quiet = await createCoupon(app, { totalQuantity: N })
  const baseline = await rush(quiet.id)
  await waitFor(() => persisted(quiet.id), { what: 'the first rush persisted' })

  await createWebhook(app, hanging.url)
  await createWebhook(app, healthy.url, ['issue.created'])
  const loud = await createCoupon(app, { totalQuantity: N })
  const withDeadReceiver = await rush(loud.id)
  await waitFor(() => persisted(loud.id), { what: 'the second rush persisted while deliveries hang' })
  await waitFor(async () => healthy.received.length >= N, { timeoutMs: 30_000, what: () => `the healthy webhook's ${N} deliveries (${healthy.received.length})` })
  t.equal(hanging.open(), 2, 'the dead receiver holds half the slots (concurrency 4), no more')
  t.ok(withDeadReceiver < baseline * 3 + 500, `issuing with a dead receiver: ${withDeadReceiver.toFixed(0)} ms vs ${baseline.toFixed(0)} ms without (coarse bound: 3x + 500 ms)`)
  const r: any = await app.db.execute(sql`SELECT count(*)::int AS n FROM events WHERE coupon_id = ${loud.id} AND type = 'issue.created'`)
  t.equal((r.rows ?? r)[0].n, N, 'every issue has its event, waiting for the receiver')
})

t.test('gives up after the retry window (failed), redeliver sends it again with the same id; delete cancels what waits', async (t) => {
  let accept = false
  const receiver = await startReceiver(t, () => accept ? 200 : 503)
  const app = await testApp(t, { ...FAST, WEBHOOK_BACKOFF_BASE_MS: '50', WEBHOOK_RETRY_FOR_MS: '400' })
  const hook = await createWebhook(app, receiver.url, ['issue.created'])
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  t.equal((await issue(app, coupon.id, 'gina')).statusCode, 201)
  const failed = await waitFor(async () => (await deliveries(app, hook.id)).items.find((d: any) => d.status === 'failed'), { what: 'the delivery marked failed' })
  t.ok(failed.attempts >= 2, `retried before giving up (${failed.attempts} attempts)`)
  t.match(failed, { lastStatus: 503, lastError: 'HTTP 503', nextAttemptAt: null })
  const sent = receiver.received.length

  accept = true
  const redeliver = await app.inject({ method: 'POST', url: `/admin/webhooks/${hook.id}/deliveries/${failed.id}/redeliver`, headers: admin })
  t.equal(redeliver.statusCode, 202)
  t.match(redeliver.json(), { id: failed.id, status: 'pending' })
  await waitFor(async () => (await deliveries(app, hook.id)).items[0].status === 'delivered', { what: 'delivered after the redeliver' })
  t.equal(receiver.received.length, sent + 1)
  t.equal(receiver.received.at(-1)!.id, receiver.received[0]!.id, 'the same event id as the failed attempts')
  // Delivered ones may be sent again too (a receiver that lost it): receivers de-duplicate on the id.
  t.equal((await app.inject({ method: 'POST', url: `/admin/webhooks/${hook.id}/deliveries/${failed.id}/redeliver`, headers: admin })).statusCode, 202)
  await waitFor(async () => receiver.received.length === sent + 2, { what: 'the second redelivery' })

  // In flight (leased by some instance): refused, so two attempts never overlap.
  accept = false
  t.equal((await issue(app, coupon.id, 'hank')).statusCode, 201)
  const pending = await waitFor(async () => (await deliveries(app, hook.id, '?status=pending')).items.find((d: any) => d.id !== failed.id), { what: "hank's pending delivery" })
  await app.deliveryLoop!.stop()
  await app.db.execute(sql`UPDATE webhook_deliveries SET lease_until = now() + interval '1 minute' WHERE id = ${pending.id}`)
  t.equal((await app.inject({ method: 'POST', url: `/admin/webhooks/${hook.id}/deliveries/${pending.id}/redeliver`, headers: admin })).json().code, 'DELIVERY_IN_FLIGHT')

  t.equal((await app.inject({ method: 'DELETE', url: `/admin/webhooks/${hook.id}`, headers: admin })).statusCode, 204)
  const rows: any = await app.db.execute(sql`SELECT status FROM webhook_deliveries WHERE id = ${pending.id}`)
  t.equal((rows.rows ?? rows)[0].status, 'cancelled', 'what waited is cancelled')
  t.equal((await app.inject({ method: 'GET', url: `/admin/webhooks/${hook.id}`, headers: admin })).json().code, 'WEBHOOK_NOT_FOUND')
  t.equal((await app.inject({ method: 'DELETE', url: `/admin/webhooks/${hook.id}`, headers: admin })).json().code, 'WEBHOOK_NOT_FOUND')
  t.equal((await issue(app, coupon.id, 'ivan')).statusCode, 201)
  await waitFor(async () => {
    const r: any = await app.db.execute(sql`SELECT count(*)::int AS n FROM events WHERE type = 'issue.created' AND coupon_id = ${coupon.id}`)
    return (r.rows ?? r)[0].n === 3
  }, { what: "ivan's event" })
  const after: any = await app.db.execute(sql`SELECT count(*)::int AS n FROM webhook_deliveries WHERE webhook_id = ${hook.id}`)
  t.equal((after.rows ?? after)[0].n, 2, 'a deleted webhook gets no new deliveries')
})

t.test('hostile webhook input: 4xx with a code', async (t) => {
  const app = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false', API_KEYS: 'shop-key-0123456789' })
  const post = (payload: unknown, headers: Record<string, string> = admin) => app.inject({ method: 'POST', url: '/admin/webhooks', headers, payload: payload as object })
  const badUrls = [
    'not a url', 'example.com/hook', 'ftp://example.com/hook', 'javascript:alert(1)', 'file:///etc/passwd', 'data:text/plain,x',
    'http://user:pass@example.com/hook', 'https://token@example.com/', 'http://example.com/hook#frag', 'http:///nohost', 'http:\\\\example.com/', 'https:example.com',
    'https://example.com/' + 'a'.repeat(2100), 'http://exa mple.com/', 'http://example.com/\u0000', ' http://example.com/'
  ]
  for (const url of badUrls) {
    const r = await post({ url, events: ['issue.created'] })
    t.equal(r.statusCode, 400, `url ${JSON.stringify(url.slice(0, 40))}`)
    t.ok(['INVALID_WEBHOOK_URL', 'INVALID_REQUEST'].includes(r.json().code), r.json().code)
  }
  for (const events of [[], ['issue.exploded'], ['issue.created', 'issue.created'], 'issue.created', [1]]) {
    t.equal((await post({ url: 'http://127.0.0.1:9/x', events })).json().code, 'INVALID_REQUEST', `events ${JSON.stringify(events)}`)
  }
  t.equal((await post({ url: 'http://127.0.0.1:9/x', events: ['issue.created'], secret: 'mine' })).json().code, 'INVALID_REQUEST', 'no extra fields')
  t.equal((await post({ url: 'http://127.0.0.1:9/x', events: ['issue.created'] }, {})).json().code, 'UNAUTHORIZED')
  t.equal((await post({ url: 'http://127.0.0.1:9/x', events: ['issue.created'] }, { authorization: 'Bearer shop-key-0123456789' })).json().code, 'FORBIDDEN')
  for (const url of ['http://127.0.0.1:9/x', 'https://10.0.0.7:8443/hooks?shop=1', 'http://[::1]:8080/', 'http://localhost/']) {
    t.equal((await post({ url, events: ['coupon.sold_out'] })).statusCode, 201, `loopback and private hosts allowed: ${url}`)
  }
  for (const url of ['/admin/webhooks/0', '/admin/webhooks/abc', '/admin/webhooks/99999999999999999999', '/admin/webhooks/1/deliveries?limit=0',
    '/admin/webhooks/1/deliveries?limit=501', '/admin/webhooks/1/deliveries?status=lost', '/admin/webhooks/1/deliveries?after=zz',
    `/admin/webhooks/1/deliveries?after=${Buffer.from('-1').toString('base64url')}`, `/admin/webhooks/1/deliveries?after=${Buffer.from('01').toString('base64url')}`]) {
    t.equal((await app.inject({ method: 'GET', url, headers: admin })).json().code, 'INVALID_REQUEST', url)
  }
  t.equal((await app.inject({ method: 'GET', url: '/admin/webhooks/424242', headers: admin })).json().code, 'WEBHOOK_NOT_FOUND')
  t.equal((await app.inject({ method: 'GET', url: '/admin/webhooks/424242/deliveries', headers: admin })).json().code, 'WEBHOOK_NOT_FOUND')
  t.equal((await app.inject({ method: 'POST', url: '/admin/webhooks/424242/deliveries/1/redeliver', headers: admin })).json().code, 'WEBHOOK_NOT_FOUND')
  t.equal((await app.inject({ method: 'POST', url: '/admin/webhooks/1/deliveries/424242/redeliver', headers: admin })).json().code, 'DELIVERY_NOT_FOUND')
  // A bounded fan-out: every event is written once per subscribed webhook.
  const { MAX_WEBHOOKS } = await import('../src/routes/webhooks.js')
  const have = (await app.inject({ method: 'GET', url: '/admin/webhooks', headers: admin })).json().items.length
  for (let i = have; i < MAX_WEBHOOKS; i++) t.equal((await post({ url: `http://127.0.0.1:9/${i}`, events: ['issue.created'] })).statusCode, 201)
  t.equal((await post({ url: 'http://127.0.0.1:9/one-too-many', events: ['issue.created'] })).json().code, 'TOO_MANY_WEBHOOKS')
})

t.test('leasing: a webhook at its cap gets nothing more, a deleted webhook\'s late delivery is cancelled, a held lease is skipped', async (t) => {
  const app = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false' })
  const first = await createWebhook(app, 'http://127.0.0.1:9/first', ['issue.created'])
  const second = await createWebhook(app, 'http://127.0.0.1:9/second', ['issue.created'])
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  await recordEvents(app.db, syntheticEvents(coupon.id, 6))
  const token = (n: number) => `00000000-0000-4000-8000-00000000000${n}`
  const capped = await leaseDeliveries(app.db, { limit: 10, leaseMs: 60_000, token: token(1), perWebhook: 2 })
  t.same(capped.map((d) => d.webhookId).sort(), [first.id, first.id, second.id, second.id].sort(), 'at most 2 per webhook in one lease')
  const more = await leaseDeliveries(app.db, { limit: 10, leaseMs: 60_000, token: token(2), perWebhook: 2, room: new Map([[first.id, 0], [second.id, 1]]) })
  t.same(more.map((d) => d.webhookId), [second.id], 'a webhook with no room left gets none; one with room 1 gets one')
  t.notOk(more.some((d) => capped.some((c) => c.id === d.id)), 'leased deliveries are not leased again')

  // The consumer's statement read the webhook before its delete committed: a pending delivery of a deleted webhook.
  await app.db.execute(sql`UPDATE webhooks SET deleted_at = now() WHERE id = ${first.id}`)
  await app.db.execute(sql`UPDATE webhook_deliveries SET lease_until = NULL, lease_token = NULL WHERE webhook_id = ${first.id}`)
  const after = await leaseDeliveries(app.db, { limit: 10, leaseMs: 60_000, token: token(3) })
  t.notOk(after.some((d) => d.webhookId === first.id), 'nothing sent to a deleted webhook')
  const statuses: any = await app.db.execute(sql`SELECT DISTINCT status FROM webhook_deliveries WHERE webhook_id = ${first.id}`)
  t.same((statuses.rows ?? statuses).map((r: any) => r.status), ['cancelled'], 'its deliveries are cancelled')
})

t.test('a parked entry retried into a row is announced once, with the id its stream entry gives', async (t) => {
  const app = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 3 })
  const { recordFailedEvents } = await import('../src/db/queries/issues.js')
  const { fieldsToObject } = await import('../src/stream/events.js')
  t.equal((await issue(app, coupon.id, 'parked-user')).statusCode, 201)
  const k = app.keys.coupon(coupon.id)
  const [entryId, fields] = (await app.redis.xrange(k.events, '-', '+'))[0]!
  await recordFailedEvents(app.db, [{ streamKey: k.events, id: entryId, payload: fieldsToObject(fields), error: 'test', deliveries: 6 }])
  const parked = (await app.inject({ method: 'GET', url: '/admin/failed-events', headers: admin })).json().items[0]
  for (let i = 0; i < 2; i++) {
    const retried = await app.inject({ method: 'POST', url: `/admin/failed-events/${parked.id}/retry`, headers: admin })
    t.equal(retried.statusCode, 200)
  }
  const rows: any = await app.db.execute(sql`SELECT id, type, data FROM events`)
  t.match((rows.rows ?? rows), [{ id: eventId('issue.created', coupon.id, entryId), type: 'issue.created', data: { userId: 'parked-user', claim: 1 } }])
  t.equal((rows.rows ?? rows).length, 1, 'one event for the fact, however often it is retried')
})

t.test('EVENTS_ENABLED off (the default): facts are persisted, nothing is announced, webhooks and the feed say why', async (t) => {
  const app = await testApp(t, { WEBHOOKS_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const held = await issue(app, coupon.id, 'quiet-1')
  await issue(app, coupon.id, 'quiet-2')
  t.equal((await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/quiet-2`, headers: admin })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: `/codes/${held.json().code}/redemptions`, payload: { orderId: 'o-1' } })).statusCode, 201)
  await waitFor(async () => {
    const r: any = await app.db.execute(sql`SELECT (SELECT count(*) FROM coupon_issues WHERE coupon_id = ${coupon.id} AND revoked_at IS NOT NULL)::int
      + (SELECT count(*) FROM coupon_redemptions WHERE coupon_id = ${coupon.id})::int AS n`)
    return (r.rows ?? r)[0].n === 2
  }, { what: 'the cancel and the redemption persisted' })
  const events: any = await app.db.execute(sql`SELECT count(*)::int AS n FROM events`)
  t.equal((events.rows ?? events)[0].n, 0, 'no event written')
  const create = await app.inject({ method: 'POST', url: '/admin/webhooks', headers: admin, payload: { url: 'http://127.0.0.1:9/hook', events: ['issue.created'] } })
  t.equal(create.statusCode, 409)
  t.equal(create.json().code, 'EVENTS_DISABLED')
  t.equal((await app.inject({ method: 'GET', url: '/admin/events', headers: admin })).json().code, 'EVENTS_DISABLED')
})

t.test('redemptions and rollbacks are announced with the unit\'s code, as its issue is', async (t) => {
  const app = await testApp(t, { ...FAST, WEBHOOKS_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const code = (await issue(app, coupon.id, 'buyer')).json().code as string
  t.equal((await app.inject({ method: 'POST', url: `/codes/${code}/redemptions`, payload: { orderId: 'order-7' } })).statusCode, 201)
  t.equal((await app.inject({ method: 'DELETE', url: `/codes/${code}/redemptions/order-7` })).statusCode, 200)
  const feed = await waitFor(async () => {
    const items = (await app.inject({ method: 'GET', url: '/admin/events', headers: admin })).json().items as { type: string, data: Record<string, unknown> }[]
    return items.length === 3 ? items : null
  }, { what: 'three events in the feed' })
  t.same(feed.map((e) => e.type), ['issue.created', 'redemption.created', 'redemption.rolled_back'])
  t.same(feed.map((e) => e.data.code), [code, code, code], 'each carries the code')
  t.match(feed[1]!.data, { couponId: coupon.id, userId: 'buyer', claim: 1, orderId: 'order-7' })
})
