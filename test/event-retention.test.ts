// The outbox's retention (EVENTS_RETENTION_DAYS, EVENTS_PRUNE_CRON): settled deliveries and events past
// the cutoff go; a pending delivery and its event stay whatever their age; a feed cursor handed out
// before a prune still works; two instances pruning at once agree; a bad schedule stops the start.
import t from 'tap'
import { sql } from 'drizzle-orm'
import { admin, createCoupon, testApp, waitFor, type TestApp } from './helpers/env.js'
import { eventId, recordEvents, type OutboxEvent } from '../src/events/outbox.js'
import { DAY_MS, pruneEvents } from '../src/events/retention.js'
import { loadConfig } from '../src/config.js'

const issueEvent = (couponId: number, key: string): OutboxEvent =>
  ({ id: eventId('issue.created', couponId, key), type: 'issue.created', couponId, key, data: { couponId, userId: `user-${key}`, claim: 1, issuedAt: '2026-10-01T10:00:00.000Z' } })
const soldOutEvent = (couponId: number): OutboxEvent =>
  ({ id: eventId('coupon.sold_out', couponId, '1:0'), type: 'coupon.sold_out', couponId, key: '1:0', data: { couponId, totalQuantity: 1 } })

const rows = async (app: TestApp, query: ReturnType<typeof sql>) => {
  const result: any = await app.db.execute(query)
  return (result.rows ?? result) as any[]
}

/** Six issue events with one delivery each to a webhook (settled or pending, old or new), plus an old event nobody subscribed to. */
async function outboxOfAllAges (app: TestApp) {
  const coupon = await createCoupon(app, { totalQuantity: 100 })
  const hook = (await app.inject({ method: 'POST', url: '/admin/webhooks', headers: admin, payload: { url: 'http://127.0.0.1:9/hook', events: ['issue.created'] } })).json()
  const events = ['k0', 'k1', 'k2', 'k3', 'k4', 'k5'].map((k) => issueEvent(coupon.id, k))
  await recordEvents(app.db, [...events, soldOutEvent(coupon.id)])
  const old = new Date(Date.now() - 40 * DAY_MS).toISOString()
  const id = (k: string) => eventId('issue.created', coupon.id, k)
  // k0..k4 and the sold-out event are 40 days old; k5 is new.
  await app.db.execute(sql`UPDATE events SET created_at = ${old}::timestamptz WHERE id <> ${id('k5')}`)
  // Deliveries: k0 delivered, k1 failed, k2 cancelled (all old: pruned); k3 old but still pending (kept);
  // k4 delivered but recently redelivered and delivered again, so its delivery row is new (kept); k5 new.
  const setDelivery = (k: string, status: string, createdAt: string | null) => app.db.execute(sql`
    UPDATE webhook_deliveries SET status = ${status}, created_at = coalesce(${createdAt}::timestamptz, created_at) WHERE event_id = ${id(k)}`)
  await setDelivery('k0', 'delivered', old)
  await setDelivery('k1', 'failed', old)
  await setDelivery('k2', 'cancelled', old)
  await setDelivery('k3', 'pending', old)
  await setDelivery('k4', 'delivered', null)
  await setDelivery('k5', 'delivered', null)
  return { coupon, hook, id, soldOutId: eventId('coupon.sold_out', coupon.id, '1:0') }
}

t.test('prune: settled deliveries and unreferenced events past the cutoff go, pending ones and new ones stay', async (t) => {
  const app = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false', EVENTS_PRUNE_CRON: '' })
  const { hook, id, soldOutId } = await outboxOfAllAges(app)
  const deliveryOf = async (k: string) => (await rows(app, sql`SELECT id FROM webhook_deliveries WHERE event_id = ${id(k)}`))[0]?.id
  const prunedDelivery = await deliveryOf('k0')

  // A poller that read the first event before the prune.
  // (The feed serves an event once every older writing transaction in the cluster ended: wait for it.)
  const first = await waitFor(async () => {
    const page = (await app.inject({ method: 'GET', url: '/admin/events?limit=1', headers: admin })).json()
    return page.items.length > 0 ? page : null
  }, { what: 'the feed to serve the first event' })
  t.equal(first.items[0].id, id('k0'), 'the feed starts at the oldest event')

  const pruned = await pruneEvents(app.db, new Date(Date.now() - 30 * DAY_MS))
  t.same(pruned, { deliveries: 3, events: 4 }, 'three settled old deliveries, their three events and the old unsubscribed event')
  const left = (await rows(app, sql`SELECT id FROM events ORDER BY seq`)).map((r) => r.id)
  t.same(left, [id('k3'), id('k4'), id('k5')], 'kept: the event of a pending delivery, and the events with a new delivery row')
  t.notOk(left.includes(soldOutId), 'the old event no webhook subscribed to is gone')
  t.same((await rows(app, sql`SELECT status FROM webhook_deliveries ORDER BY id`)).map((r) => r.status), ['pending', 'delivered', 'delivered'], 'the pending delivery stays')

  const rest = (await app.inject({ method: 'GET', url: `/admin/events?after=${first.next}`, headers: admin }))
  t.equal(rest.statusCode, 200, 'the cursor handed out before the prune still works')
  t.same(rest.json().items.map((e: any) => e.id), [id('k3'), id('k4'), id('k5')], 'and the feed goes on from the next event it still has')

  const redeliverPruned = await app.inject({ method: 'POST', url: `/admin/webhooks/${hook.id}/deliveries/${prunedDelivery}/redeliver`, headers: admin })
  t.equal(redeliverPruned.statusCode, 404, 'a pruned delivery cannot be redelivered')
  t.ok(redeliverPruned.json().code, 'and the 404 has a code')

  t.same(await pruneEvents(app.db, new Date(Date.now() - 30 * DAY_MS)), { deliveries: 0, events: 0 }, 'a second prune finds nothing')
})

t.test('two instances pruning at once: every row goes once, no error; batches smaller than the work', async (t) => {
  const app = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false', EVENTS_PRUNE_CRON: '' })
  const coupon = await createCoupon(app, { totalQuantity: 100 })
  await recordEvents(app.db, Array.from({ length: 250 }, (_, i) => issueEvent(coupon.id, `n${i}`)))
  await app.db.execute(sql`UPDATE events SET created_at = now() - interval '40 days'`)
  const cutoff = new Date(Date.now() - 30 * DAY_MS)
  const [a, b] = await Promise.all([pruneEvents(app.db, cutoff, 20), pruneEvents(app.db, cutoff, 20)])
  t.equal(a.events + b.events, 250, 'between them, every old event once')
  t.equal((await rows(app, sql`SELECT count(*)::int AS n FROM events`))[0].n, 0, 'none left')
})

t.test('the schedule prunes in the background; days = 0 keeps everything', async (t) => {
  const pruning = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false', EVENTS_PRUNE_CRON: '* * * * * *', EVENTS_RETENTION_DAYS: '1' })
  const coupon = await createCoupon(pruning, { totalQuantity: 10 })
  await recordEvents(pruning.db, [issueEvent(coupon.id, 'old'), issueEvent(coupon.id, 'new')])
  await pruning.db.execute(sql`UPDATE events SET created_at = now() - interval '2 days' WHERE id = ${eventId('issue.created', coupon.id, 'old')}`)
  await waitFor(async () => (await rows(pruning, sql`SELECT count(*)::int AS n FROM events`))[0].n === 1, { what: 'the scheduled prune' })
  t.same((await rows(pruning, sql`SELECT id FROM events`)).map((r) => r.id), [eventId('issue.created', coupon.id, 'new')], 'the day-old event is left')

  const keeping = await testApp(t, { EVENTS_ENABLED: 'true', CONSUMER_ENABLED: 'false', WEBHOOKS_ENABLED: 'false', EVENTS_PRUNE_CRON: '* * * * * *', EVENTS_RETENTION_DAYS: '0' })
  const kept = await createCoupon(keeping, { totalQuantity: 10 })
  await recordEvents(keeping.db, [issueEvent(kept.id, 'ancient')])
  await keeping.db.execute(sql`UPDATE events SET created_at = now() - interval '3650 days'`)
  // The pruning app above ticks every second on its own database: once it has pruned something written
  // after this app started, a second has passed in which this one would have pruned too.
  await recordEvents(pruning.db, [issueEvent(coupon.id, 'later')])
  await pruning.db.execute(sql`UPDATE events SET created_at = now() - interval '2 days' WHERE id = ${eventId('issue.created', coupon.id, 'later')}`)
  await waitFor(async () => (await rows(pruning, sql`SELECT count(*)::int AS n FROM events`))[0].n === 1, { what: 'a later tick of the other app' })
  t.equal((await rows(keeping, sql`SELECT count(*)::int AS n FROM events`))[0].n, 1, 'retention 0: nothing is pruned')
})

t.test('schedules are checked at start: a typo names the setting; only the reclaim cannot be off', async (t) => {
  const base = { DATABASE_URL: 'postgres://x@127.0.0.1/x', REDIS_URL: 'redis://127.0.0.1:6379' }
  t.throws(() => loadConfig({ ...base, EVENTS_PRUNE_CRON: 'every hour' }), /EVENTS_PRUNE_CRON "every hour" is not a cron expression/)
  t.throws(() => loadConfig({ ...base, CONSISTENCY_CRON: '61 * * * * *' }), /CONSISTENCY_CRON/)
  t.throws(() => loadConfig({ ...base, RECLAIM_CRON: '' }), /RECLAIM_CRON "" is not a cron expression/)
  t.throws(() => loadConfig({ ...base, EVENTS_RETENTION_DAYS: '-1' }), /EVENTS_RETENTION_DAYS/)
  const off = loadConfig({ ...base, EVENTS_PRUNE_CRON: '', CONSISTENCY_CRON: '' })
  t.same(off.eventRetention, { days: 30, cron: '' }, 'empty turns pruning off; 30 days by default')
  t.equal(loadConfig(base).eventRetention.cron, '0 17 * * * *', 'hourly by default')
})
