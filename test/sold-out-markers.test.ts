// The sold-out short-circuit (src/issuing/sold-out-markers.ts): first the marker bookkeeping alone
// (no Redis: every order of reply and invalidation), then the service end to end — every operation that
// can bring stock back ends the marker on every instance, a lost subscription drops every marker, keyed
// requests never use one, and no marker outlives the coupon's end.
import t from 'tap'
import { SoldOutMarkers, subscriberName } from '../src/issuing/sold-out-markers.js'
import { admin, createCoupon, soldOutMarkerDropped, testApp, waitFor, type TestApp } from './helpers/env.js'

function clocked (ttlMs = 1000) {
  let now = 1_000_000
  const markers = new SoldOutMarkers({ ttlMs, now: () => now })
  markers.listening()
  return { markers, advance: (ms: number) => { now += ms } }
}

t.test('markers: set by a fresh SOLD_OUT, ended by the TTL and by the coupon\'s end on Redis\'s clock', async (t) => {
  const { markers, advance } = clocked(1000)
  markers.markSoldOut(7, markers.ticket(), 0, 5_000)
  t.ok(markers.soldOut(7))
  t.notOk(markers.soldOut(8), 'per coupon')
  advance(999)
  t.ok(markers.soldOut(7))
  advance(1)
  t.notOk(markers.soldOut(7), 'gone after ttlMs')
  // Redis says now = 5000 and the coupon ends at 5300: the marker may live 300 ms, not 1000.
  markers.markSoldOut(7, markers.ticket(), 5_300, 5_000)
  advance(299)
  t.ok(markers.soldOut(7))
  advance(1)
  t.notOk(markers.soldOut(7), 'never answers SOLD_OUT where the answer has become ENDED')
  markers.markSoldOut(7, markers.ticket(), 5_000, 5_000)
  t.notOk(markers.soldOut(7), 'an ended coupon gets no marker')
  const off = new SoldOutMarkers({ ttlMs: 0 })
  off.listening()
  off.markSoldOut(7, off.ticket(), 0, 0)
  t.notOk(off.soldOut(7), 'ttlMs 0 turns the short-circuit off')
  t.notOk(off.active)
})

t.test('markers: a reply and an invalidation racing in either order never leave a stale marker', async (t) => {
  const { markers } = clocked()
  // Invalidation first (stock came back while the request was in flight), stale SOLD_OUT reply after.
  const ticket = markers.ticket()
  markers.invalidate(7)
  markers.markSoldOut(7, ticket, 0, 0)
  t.notOk(markers.soldOut(7), 'a reply older than the invalidation sets nothing')
  // Reply first, its invalidation after: the marker is set, then dropped.
  markers.markSoldOut(7, markers.ticket(), 0, 0)
  t.ok(markers.soldOut(7))
  markers.invalidate(7)
  t.notOk(markers.soldOut(7))
  // An invalidation of another coupon does not hold this one back.
  const other = markers.ticket()
  markers.invalidate(8)
  markers.markSoldOut(7, other, 0, 0)
  t.ok(markers.soldOut(7))
})

t.test('markers: a lost subscription drops every marker and refuses replies that started before it came back', async (t) => {
  const { markers } = clocked()
  markers.markSoldOut(7, markers.ticket(), 0, 0)
  const inFlight = markers.ticket()
  markers.deaf()
  t.notOk(markers.soldOut(7), 'dropped on disconnect')
  t.notOk(markers.active)
  markers.markSoldOut(7, markers.ticket(), 0, 0)
  t.notOk(markers.soldOut(7), 'nothing is set while deaf')
  markers.listening()
  markers.markSoldOut(7, inFlight, 0, 0)
  t.notOk(markers.soldOut(7), 'a request that started before the reconnect may have missed a message')
  markers.markSoldOut(7, markers.ticket(), 0, 0)
  t.ok(markers.soldOut(7), 'requests after the reconnect set markers again')
})

t.test('markers: forgetting invalidation records (memory bound) refuses every older ticket', async (t) => {
  const { markers } = clocked()
  const old = markers.ticket()
  for (let id = 1; id <= 10_001; id++) markers.invalidate(id)
  markers.markSoldOut(20_000, old, 0, 0)
  t.notOk(markers.soldOut(20_000), 'a ticket from before the records were dropped is refused')
  markers.markSoldOut(20_000, markers.ticket(), 0, 0)
  t.ok(markers.soldOut(20_000))
})

// ------------------------------------------------------------------------------------- end to end

const issue = (app: TestApp, couponId: number, userId: string, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url: `/coupons/${couponId}/issues`, headers, payload: { userId } })

async function fromMemory (app: TestApp): Promise<number> {
  const metric = await app.metrics.registry.getSingleMetric('couponrush_sold_out_from_memory_total')!.get()
  return metric.values[0]?.value ?? 0
}

/** Sells the coupon out and waits until this instance answers SOLD_OUT from memory. */
async function soldOutInMemory (app: TestApp, couponId: number, users: string[]) {
  for (const user of users) {
    const r = await issue(app, couponId, user)
    if (r.statusCode !== 201) throw new Error(`${user}: ${r.statusCode} ${r.body}`)
  }
  await waitFor(async () => app.couponStore.soldOutMarkers.active, { what: 'the stock-returned subscription' })
  const first = (await issue(app, couponId, 'loser-a')).json()
  if (first.code !== 'SOLD_OUT') throw new Error(`expected SOLD_OUT, got ${JSON.stringify(first)}`)
  const before = await fromMemory(app)
  const second = await issue(app, couponId, 'loser-b')
  if (second.json().code !== 'SOLD_OUT' || await fromMemory(app) !== before + 1) throw new Error('the second loser was not answered from memory')
}

t.test('service: the marker answers SOLD_OUT without Redis; a cancel ends it at once, on every instance', async (t) => {
  const a = await testApp(t, { CONSUMER_ENABLED: 'false', SOLD_OUT_MARKER_TTL_MS: '60000' })
  const b = await testApp(t, { CONSUMER_ENABLED: 'false', SOLD_OUT_MARKER_TTL_MS: '60000', REDIS_PREFIX: a.env.prefix, DATABASE_URL: a.env.databaseUrl })
  const coupon = await createCoupon(a, { totalQuantity: 2 })
  await soldOutInMemory(a, coupon.id, ['u1', 'u2'])
  t.equal((await issue(b, coupon.id, 'loser-c')).json().code, 'SOLD_OUT')
  const answered = await fromMemory(b)
  const body = (await issue(b, coupon.id, 'loser-d')).json()
  t.same(body, { statusCode: 409, code: 'SOLD_OUT', error: 'Conflict', message: `Coupon ${coupon.id} is sold out. Do not retry.` }, 'the same body as from Redis')
  t.equal(await fromMemory(b), answered + 1, 'instance b answers from its own marker too')

  const cancelled = await a.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/u1` })
  t.equal(cancelled.statusCode, 200)
  t.notOk(a.couponStore.soldOutMarkers.soldOut(coupon.id), 'the cancelling instance dropped its marker before answering')
  // The other instance learns it from the stock-returned message, which may land a moment after the
  // cancel's answer (it did in about 1 run in 7 when this asked at once). The marker's TTL is a minute
  // here, so only the message can end it.
  await soldOutMarkerDropped(b, coupon.id)
  const won = await issue(b, coupon.id, 'after-cancel')
  t.equal(won.statusCode, 201, 'the marker on the other instance ended with the cancel')
  t.equal((await issue(a, coupon.id, 'late')).json().code, 'SOLD_OUT', 'sold out again')
})

t.test('service: a PATCH, a discarded parked issue and a counter rebuild each end the marker', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', SOLD_OUT_MARKER_TTL_MS: '60000' })
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  await soldOutInMemory(app, coupon.id, ['u1'])

  t.equal((await app.inject({ method: 'PATCH', url: `/coupons/${coupon.id}`, headers: admin, payload: { totalQuantity: 2 } })).statusCode, 200)
  t.equal((await issue(app, coupon.id, 'after-patch')).statusCode, 201, 'PATCH raised the stock: the next request wins')

  await soldOutInMemory(app, coupon.id, [])
  const held = await app.redis.hget(app.keys.coupon(coupon.id).claims, 'u1')
  t.equal(await app.couponStore.discardParkedIssue(coupon.id, { userId: 'u1', claim: Number(held), entryId: '1-1' }), 'returned')
  t.equal((await issue(app, coupon.id, 'after-discard')).statusCode, 201, 'a discarded parked issue returned its unit: the next request wins')

  await soldOutInMemory(app, coupon.id, [])
  // Counters lost and rebuilt (here from Postgres plus the stream): the rebuild publishes as well.
  const k = app.keys.coupon(coupon.id)
  const ticket = app.couponStore.soldOutMarkers.ticket()
  await app.redis.del(k.meta, k.stock, k.holders, k.claims)
  t.equal((await app.inject({ method: 'GET', url: `/coupons/${coupon.id}` })).statusCode, 200, 'a read rebuilds the counters')
  await waitFor(async () => app.couponStore.soldOutMarkers.ticket() > ticket, { what: 'the rebuild\'s message' })
  t.notOk(app.couponStore.soldOutMarkers.soldOut(coupon.id), 'the rebuild ended the marker')
})

t.test('service: keyed requests never use the marker; a holder with a key still reads ALREADY_ISSUED', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', SOLD_OUT_MARKER_TTL_MS: '60000' })
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  t.equal((await issue(app, coupon.id, 'holder', { 'idempotency-key': 'k1' })).statusCode, 201)
  await soldOutInMemory(app, coupon.id, [])
  const before = await fromMemory(app)
  const replay = await issue(app, coupon.id, 'holder', { 'idempotency-key': 'k1' })
  t.equal(replay.statusCode, 201, 'the retry with its key replays the 201')
  t.equal(replay.headers['idempotent-replayed'], 'true')
  t.equal((await issue(app, coupon.id, 'holder', { 'idempotency-key': 'k2' })).json().code, 'ALREADY_ISSUED', 'a new key asks Redis')
  t.equal(await fromMemory(app), before, 'no keyed request was answered from memory')
  // The documented difference: without a key, the holder may read SOLD_OUT while the marker lives.
  t.equal((await issue(app, coupon.id, 'holder')).json().code, 'SOLD_OUT')
})

t.test('service: a marker never outlives the coupon\'s end (ENDED, not SOLD_OUT)', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', SOLD_OUT_MARKER_TTL_MS: '60000' })
  const endsAt = new Date(Date.now() + 1500).toISOString()
  const coupon = await createCoupon(app, { totalQuantity: 1, endsAt })
  await soldOutInMemory(app, coupon.id, ['u1'])
  // Polled, not slept: the marker (60 s TTL) must give way to ENDED within a moment of endsAt.
  const ended = await waitFor(async () => {
    const code = (await issue(app, coupon.id, 'late')).json().code
    return code === 'ENDED' ? Date.now() : null
  }, { timeoutMs: Date.parse(endsAt) - Date.now() + 1000, pollIntervalMs: 25, what: 'ENDED within a second of endsAt' })
  t.ok(ended >= Date.parse(endsAt), 'and not before the end')
})

t.test('service: losing the subscription drops every marker until it is back', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', SOLD_OUT_MARKER_TTL_MS: '60000' })
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  await soldOutInMemory(app, coupon.id, ['u1'])
  const name = subscriberName(app.keys.stockReturned)
  const line = (await app.redis.call('CLIENT', 'LIST', 'TYPE', 'pubsub') as string).split('\n').find((l) => l.includes(` name=${name} `))
  t.ok(line, 'the subscriber is named after its channel')
  await app.redis.call('CLIENT', 'KILL', 'ID', /id=(\d+)/.exec(line!)![1]!)
  await waitFor(async () => !app.couponStore.soldOutMarkers.soldOut(coupon.id), { what: 'the marker to drop' })
  await waitFor(async () => app.couponStore.soldOutMarkers.active, { what: 'the subscription to come back' })
  await soldOutInMemory(app, coupon.id, [])
  t.pass('markers work again after the reconnect')
})

t.test('service: SOLD_OUT_MARKER_TTL_MS=0 asks Redis every time', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', SOLD_OUT_MARKER_TTL_MS: '0' })
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  t.equal((await issue(app, coupon.id, 'u1')).statusCode, 201)
  for (const user of ['l1', 'l2', 'l3']) t.equal((await issue(app, coupon.id, user)).json().code, 'SOLD_OUT')
  t.equal(await fromMemory(app), 0)
})
