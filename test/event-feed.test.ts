// GET /admin/events (issue 11): the outbox as a pull feed. Pages in a commit-safe order (an event
// committed later never lands behind a cursor already handed out), forged cursors refused, limits.
import t from 'tap'
import pg from 'pg'
import { admin, createCoupon, testApp, testConsumer, waitFor, type TestApp } from './helpers/env.js'
import { eventId, recordEvents, type OutboxEvent } from '../src/events/outbox.js'

const page = async (app: TestApp, query = '') => app.inject({ method: 'GET', url: `/admin/events${query}`, headers: admin })

const event = (couponId: number, key: string): OutboxEvent =>
  ({ id: eventId('issue.created', couponId, key), type: 'issue.created', couponId, key, data: { couponId, userId: `user-${key}`, claim: 1, issuedAt: '2026-11-23T10:00:00.000Z' } })

/** Polls the feed from `after` until `until` holds for everything seen; returns the events and the last cursor. */
async function poll (app: TestApp, after: string | null, until: (ids: string[]) => boolean, limit = 1000) {
  const seen: any[] = []
  let next = after
  await waitFor(async () => {
    const r = (await page(app, `?limit=${limit}${next ? `&after=${next}` : ''}`)).json()
    seen.push(...r.items)
    next = r.next
    return until(seen.map((e) => e.id))
  }, { timeoutMs: 30_000, what: 'the feed to catch up' })
  return { seen, next }
}

t.test('pages: every event once, stable order, cursor to poll on, empty feed', async (t) => {
  const app = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false' })
  const empty = (await page(app)).json()
  t.same(empty, { items: [], next: null }, 'nothing yet')
  const coupon = await createCoupon(app, { totalQuantity: 100 })
  const written = Array.from({ length: 25 }, (_, i) => event(coupon.id, `k${i}`))
  for (let i = 0; i < 25; i += 5) await recordEvents(app.db, written.slice(i, i + 5))
  const ids: string[] = []
  let next: string | null = null
  let pages = 0
  await waitFor(async () => {
    const r: any = (await page(app, `?limit=4${next ? `&after=${next}` : ''}`)).json()
    t.ok(r.items.length <= 4)
    ids.push(...r.items.map((e: any) => e.id))
    if (r.items.length > 0) pages++
    // Before the first event is visible (another write transaction in the cluster may hold the feed back
    // for a moment) there is no cursor yet; after it, always one.
    if (ids.length > 0) t.type(r.next, 'string')
    else t.equal(r.next, null)
    next = r.next
    return ids.length >= 25
  }, { timeoutMs: 30_000, what: 'all 25 events' })
  t.same(ids, written.map((e) => e.id), 'every event once, in write order')
  t.ok(pages >= 7, `${pages} pages of at most 4`)
  const tail = (await page(app, `?after=${next}`)).json()
  t.same(tail, { items: [], next }, 'at the end: no items, the same cursor to poll with')
  const first = (await page(app, '?limit=1')).json()
  t.match(first.items[0], { id: written[0]!.id, type: 'issue.created', createdAt: String, data: written[0]!.data })
  await recordEvents(app.db, written)
  t.same((await page(app, `?after=${next}`)).json().items, [], 'writing the same events again adds nothing')
})

t.test('an event committed later by a transaction that began earlier (smaller seq) is not missed', async (t) => {
  const app = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 100 })
  await recordEvents(app.db, [event(coupon.id, 'before')])
  const start = await poll(app, null, (ids) => ids.includes(event(coupon.id, 'before').id))

  const slow = new pg.Client({ connectionString: app.env.databaseUrl })
  const fast = new pg.Client({ connectionString: app.env.databaseUrl })
  await slow.connect()
  await fast.connect()
  t.teardown(async () => { await slow.end(); await fast.end() })
  const insert = (client: pg.Client, e: OutboxEvent) => client.query('INSERT INTO events (id, type, coupon_id, data) VALUES ($1, $2, $3, $4) RETURNING seq::int, tx_id::text', [e.id, e.type, e.couponId, JSON.stringify(e.data)])
  const A = event(coupon.id, 'slow')
  const B = event(coupon.id, 'fast')
  await slow.query('BEGIN')
  const a = (await insert(slow, A)).rows[0]
  const b = (await insert(fast, B)).rows[0] // autocommit: committed now, while A is still open
  t.ok(a.seq < b.seq, `A holds the smaller seq (${a.seq} < ${b.seq}): ordering by seq would serve B first and then skip A`)

  // While A is open the feed does not serve B (nor anything after A's transaction started).
  for (let i = 0; i < 5; i++) {
    const r = (await page(app, `?after=${start.next}`)).json()
    t.notOk(r.items.some((e: any) => e.id === B.id), 'B is held back while the older transaction is open')
  }
  await slow.query('COMMIT')
  const after = await poll(app, start.next, (ids) => ids.includes(A.id) && ids.includes(B.id))
  t.same(after.seen.map((e) => e.id).filter((id) => id === A.id || id === B.id), [A.id, B.id], 'both served, in commit-safe order, none missed')
})

t.test('many concurrent writers, a poller running all along: it sees every committed event exactly once', async (t) => {
  const app = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 100 })
  const clients = await Promise.all(Array.from({ length: 4 }, async () => {
    const c = new pg.Client({ connectionString: app.env.databaseUrl })
    await c.connect()
    return c
  }))
  t.teardown(() => Promise.all(clients.map((c) => c.end())))
  const all: string[] = []
  const state = { writing: true }
  const writers = clients.map(async (client, w) => {
    for (let i = 0; i < 15; i++) {
      const e = event(coupon.id, `w${w}-${i}`)
      all.push(e.id)
      await client.query('BEGIN')
      await client.query('INSERT INTO events (id, type, coupon_id, data) VALUES ($1, $2, $3, $4)', [e.id, e.type, e.couponId, JSON.stringify(e.data)])
      // Hold some transactions open across the poller's reads, in varying order.
      await new Promise((resolve) => setTimeout(resolve, (w * 7 + i * 3) % 20))
      await client.query('COMMIT')
    }
  })
  const seen: string[] = []
  let next: string | null = null
  const poller = (async () => {
    while (state.writing || seen.length < all.length) {
      const r: any = (await page(app, `?limit=7${next ? `&after=${next}` : ''}`)).json()
      seen.push(...r.items.map((e: any) => e.id))
      next = r.next
      if (!state.writing && r.items.length === 0) await new Promise((resolve) => setTimeout(resolve, 20))
    }
  })()
  await Promise.all(writers)
  state.writing = false
  await Promise.race([poller, new Promise((resolve, reject) => setTimeout(() => reject(new Error(`poller saw ${seen.length} of ${all.length}`)), 30_000).unref())])
  t.equal(seen.length, 60, 'no event twice')
  t.same([...seen].sort(), [...all].sort(), 'every committed event, none missed')
})

t.test('forged cursors and limits out of bounds: 400 with a code', async (t) => {
  const app = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false', API_KEYS: 'shop-key-0123456789' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  await recordEvents(app.db, [event(coupon.id, 'one')])
  const { next } = await poll(app, null, (ids) => ids.length === 1)
  const b64 = (s: string) => Buffer.from(s).toString('base64url')
  const forged = ['garbage!', b64('1.2.3'), b64('-1.1'), b64('1.0'), b64('01.1'), b64('1.01'), b64(' 1.1'), b64('18446744073709551616.1'),
    b64('1.99999999999999999'), `${next}=`, `${next}AA`, 'a'.repeat(64), b64('999999999999999.1')]
  for (const after of forged) {
    const r = await page(app, `?after=${encodeURIComponent(after)}`)
    t.equal(r.statusCode, 400, `forged ${after}`)
    t.equal(r.json().code, after.length > 64 ? 'INVALID_REQUEST' : 'INVALID_CURSOR', after)
  }
  t.equal((await page(app, `?after=${'a'.repeat(65)}`)).json().code, 'INVALID_REQUEST', 'over-long')
  for (const limit of ['0', '1001', '-1', 'x', '1.5']) t.equal((await page(app, `?limit=${limit}`)).json().code, 'INVALID_REQUEST', `limit=${limit}`)
  t.equal((await page(app, '?limit=1000')).statusCode, 200)
  t.equal((await page(app, '?since=1')).json().code, 'INVALID_REQUEST', 'unknown parameter')
  t.equal((await app.inject({ method: 'GET', url: '/admin/events', headers: { authorization: 'Bearer shop-key-0123456789' } })).json().code, 'FORBIDDEN')
  t.equal((await app.inject({ method: 'GET', url: '/admin/events' })).json().code, 'UNAUTHORIZED')
})

t.test('one batch of issues, redemptions and rollbacks reaches the feed in stream order', async (t) => {
  const app = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 100, perUserLimit: 1 })
  // 60 units, each redeemed and rolled back, and redeemed again for every third: all unpersisted, so one
  // drain writes them in one batch (issues, redemptions and rollbacks each in one statement).
  for (let i = 0; i < 60; i++) {
    const issued = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: `u${i}` } })
    const code = issued.json().code as string
    const order = `order-${i}`
    t.equal((await app.inject({ method: 'POST', url: `/codes/${code}/redemptions`, payload: { orderId: order } })).statusCode, 201)
    t.equal((await app.inject({ method: 'DELETE', url: `/codes/${code}/redemptions/${order}` })).statusCode, 200)
    if (i % 3 === 0) t.equal((await app.inject({ method: 'POST', url: `/codes/${code}/redemptions`, payload: { orderId: `${order}b` } })).statusCode, 201)
  }
  const entries = (await app.redis.xrange(app.keys.coupon(coupon.id).events, '-', '+')).map(([id]) => id)
  t.equal(entries.length, 60 + 120 + 20, 'every fact is on the stream, unpersisted')
  await testConsumer(t, app, 'one-batch').drain()
  const feed = await poll(app, null, (ids) => ids.length === entries.length)
  const keyOf = new Map(entries.flatMap((entryId) => ['issue.created', 'redemption.created', 'redemption.rolled_back'].map((type) => [eventId(type as OutboxEvent['type'], coupon.id, entryId), entryId] as const)))
  // Per unit, its events come in the order they happened (the issues of a batch may all come before its
  // redemptions: they are written by an earlier statement of the same transaction).
  const position = new Map(entries.map((id, i) => [id, i]))
  const byUnit = new Map<string, number[]>()
  for (const e of feed.seen as any[]) {
    const unit = `${e.data.userId}|${e.data.claim}`
    byUnit.set(unit, [...(byUnit.get(unit) ?? []), position.get(keyOf.get(e.id)!)!])
  }
  t.equal(byUnit.size, 60, 'sixty units announced')
  const outOfOrder = [...byUnit].filter(([, at]) => at.some((p, i) => i > 0 && p < at[i - 1]!))
  t.same(outOfOrder, [], 'every unit\'s issue, redemptions and rollbacks in the order of their stream entries')
})
