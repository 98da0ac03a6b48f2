// npm run drain's output: plain lines off a terminal, a bar on one, one JSON document with --json, and
// the summary per coupon; against a fake consumer (exact numbers) and the real one (real backlog).
import { EventEmitter } from 'node:events'
import t from 'tap'
import type { ConsumerEvents, DrainReport } from '../src/persistence/consumer.js'
import { formatDuration, progressText, runDrain, streamBacklog, type DrainOutput } from '../src/persistence/drain-run.js'
import { couponIssues } from '../src/db/schema.js'
import { createCoupon, testApp, testConsumer } from './helpers/env.js'

const stats = { batches: 3, inserted: 9, duplicates: 1, failed: 1, deletedWhilePending: 0 }

/** Emits three batches (4, 4, 3 entries), a parked entry and a reclaim, 1 s apart on the fake clock. */
function fakeConsumer (clock: { ms: number }) {
  const consumer = new EventEmitter<ConsumerEvents>()
  return Object.assign(consumer, {
    async drain (): Promise<DrainReport> {
      for (const entries of [4, 4, 3]) {
        clock.ms += 1000
        consumer.emit('batch', { inserted: entries, duplicates: 0, failed: 0, parked: [], entries, lagMsByCoupon: new Map() })
      }
      consumer.emit('parked', [{ streamKey: 's', id: '1-0', payload: {}, error: 'bad', deliveries: 1 }])
      consumer.emit('reclaimed', { perCoupon: { 7: 2 }, deletedWhilePending: 0 })
      return { perCoupon: { 7: 6, 9: 5 }, stats }
    }
  })
}

function capture (isTTY = false): DrainOutput & { text: string } {
  const out = { text: '', isTTY, columns: 120, write (s: string) { out.text += s } }
  return out
}

const backlogs = () => {
  let call = 0
  return async () => call++ === 0 ? new Map([['7', 6], ['9', 5]]) : new Map<string, number>()
}

t.test('not a terminal: plain progress lines, the table per coupon, the totals line', async (t) => {
  const clock = { ms: 0 }
  const out = capture()
  const summary = await runDrain({ consumer: fakeConsumer(clock), backlog: backlogs(), out, now: () => clock.ms })
  const lines = out.text.trimEnd().split('\n')
  t.same(lines, [
    'drain: 11 entries waiting in 2 coupon stream(s)',
    'drain: 4/11 (36%), 4/s, ETA 2s',
    'drain: 8/11 (72%), 4/s, ETA 1s',
    'drain: 11/11 (100%), 4/s, ETA 0s',
    'drain: 1 entries parked in failed_issue_events (GET /admin/failed-events)',
    'coupon  backlog  handled  left',
    '7             6        6     0',
    '9             5        5     0',
    'total        11       11     0',
    'drain: 9 rows inserted, 1 already persisted, 1 parked in failed_issue_events, 0 pending entries found deleted, 2 reclaimed from other consumers in 3s'
  ])
  t.equal(out.text.includes('\r'), false, 'no carriage returns in a log file')
  t.match(summary, { total: 11, handled: 11, durationMs: 3000, perSecond: 4, reclaimed: 2 })
})

t.test('--json: one JSON document and nothing else', async (t) => {
  const clock = { ms: 0 }
  const out = capture(true)
  await runDrain({ consumer: fakeConsumer(clock), backlog: backlogs(), out, json: true, now: () => clock.ms })
  const doc = JSON.parse(out.text)
  t.same(doc, {
    total: 11,
    handled: 11,
    durationMs: 3000,
    perSecond: 4,
    reclaimed: 2,
    coupons: [{ couponId: 7, backlog: 6, handled: 6, left: 0 }, { couponId: 9, backlog: 5, handled: 5, left: 0 }],
    stats
  })
})

t.test('a terminal: the bar redraws in place and ends with a newline', async (t) => {
  const clock = { ms: 0 }
  const out = capture(true)
  await runDrain({ consumer: fakeConsumer(clock), backlog: backlogs(), out, now: () => clock.ms })
  const CLEAR = '\x1b[K'
  t.ok(out.text.includes(`\r[${'#'.repeat(10)}${'.'.repeat(20)}] 4/11 (36%), 4/s, ETA 2s${CLEAR}`), 'drawn at the first batch')
  t.ok(out.text.includes(`\r[${'#'.repeat(30)}] 11/11 (100%), 4/s, ETA 0s${CLEAR}\n`), 'full at the end, then a newline')
  t.match(out.text, /coupon {2}backlog {2}handled {2}left/)
})

t.test('formatting', async (t) => {
  t.equal(formatDuration(Infinity), '?')
  t.equal(formatDuration(59.4), '59s')
  t.equal(formatDuration(61), '1m01s')
  t.equal(formatDuration(3 * 3600 + 120), '3h02m')
  t.equal(progressText(0, 10, 0), '0/10 (0%), 0/s, ETA ?')
  t.equal(progressText(0, 0, 0), '0/0 (100%), 0/s, ETA 0s')
})

t.test('the real consumer: the backlog counted before is what gets persisted', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', CONSISTENCY_CRON: '' })
  const coupons = [await createCoupon(app, { totalQuantity: 30 }), await createCoupon(app, { totalQuantity: 30 })]
  for (const [i, coupon] of coupons.entries()) {
    for (let u = 0; u < 10 + i * 5; u++) {
      t.equal((await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: `u${u}` } })).statusCode, 201)
    }
  }
  t.same(await streamBacklog(app.redis, app.keys), new Map([[String(coupons[0]!.id), 10], [String(coupons[1]!.id), 15]]))
  const out = capture()
  const summary = await runDrain({ consumer: testConsumer(t, app, 'drain', { batchSize: 4 }), backlog: () => streamBacklog(app.redis, app.keys), out })
  t.match(summary, { total: 25, handled: 25, stats: { inserted: 25 } })
  t.same(summary.coupons.map((c) => [c.backlog, c.handled, c.left]), [[10, 10, 0], [15, 15, 0]])
  t.match(out.text, /^drain: 25 entries waiting in 2 coupon stream\(s\)\n/)
  t.match(out.text, /drain: 25 rows inserted, 0 already persisted/)
  t.equal((await app.db.select().from(couponIssues)).length, 25)
  const again = capture()
  await runDrain({ consumer: testConsumer(t, app, 'drain-2'), backlog: () => streamBacklog(app.redis, app.keys), out: again })
  t.match(again.text, /^drain: the streams show no backlog; looking anyway\n/)
})
