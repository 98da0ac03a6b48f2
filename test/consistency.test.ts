// The consistency report (GET /admin/coupons/:id/consistency, npm run reconcile, the periodic watch):
// it names what was tampered with in each store, counts unpersisted and parked entries, and shows no
// false disagreement while issues and cancels race it.
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { and, eq } from 'drizzle-orm'
import { couponIssues } from '../src/db/schema.js'
import { recordFailedEvents } from '../src/db/queries/issues.js'
import { fieldsToObject, decodeEntry, isEvent } from '../src/stream/events.js'
import { CONSUMER_GROUP } from '../src/redis/keys.js'
import { checkConsistency, compareBooks, cutoffOf, type ConsistencyReport } from '../src/consistency/check.js'
import { ConsistencyWatch } from '../src/consistency/watch.js'
import { EXIT_BALANCED, EXIT_DISAGREES, describeReport, parseReconcileArgs, runReconcile } from '../src/consistency/reconcile.js'
import { admin, createCoupon, inParallel, testApp, testConsumer, type TestApp } from './helpers/env.js'

const issue = (app: TestApp, couponId: number, userId: string) =>
  app.inject({ method: 'POST', url: `/coupons/${couponId}/issues`, payload: { userId } })
const cancel = (app: TestApp, couponId: number, userId: string) =>
  app.inject({ method: 'DELETE', url: `/coupons/${couponId}/issues/${userId}` })
const report = async (app: TestApp, couponId: number): Promise<ConsistencyReport> => {
  const response = await app.inject({ method: 'GET', url: `/admin/coupons/${couponId}/consistency`, headers: admin })
  if (response.statusCode !== 200) throw new Error(`consistency: ${response.statusCode} ${response.body}`)
  return response.json()
}

/** Parks the user's issue entry as the consumer would (recorded, then acknowledged). */
async function park (app: TestApp, couponId: number, userId: string) {
  const k = app.keys.coupon(couponId)
  const [id, fields] = (await app.redis.xrange(k.events, '-', '+')).find(([entryId, fields]) => {
    const event = decodeEntry(k.events, couponId, entryId, fields)
    return isEvent(event) && event.type === 'issue' && event.userId === userId
  })!
  await app.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'parker', 'COUNT', 1000, 'STREAMS', k.events, '>')
  await recordFailedEvents(app.db, [{ streamKey: k.events, id, payload: fieldsToObject(fields), error: 'test', deliveries: 6 }])
  await app.redis.xack(k.events, CONSUMER_GROUP, id)
}

t.test('a store tampered with in turn: the report names it', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', CONSISTENCY_CRON: '' })
  const coupons = []
  for (let i = 0; i < 4; i++) coupons.push(await createCoupon(app, { totalQuantity: 5 }))
  for (const coupon of coupons) for (const user of ['ann', 'bob', 'cid']) t.equal((await issue(app, coupon.id, user)).statusCode, 201)
  await testConsumer(t, app, 'drain-1').drain()
  // Some events stay unpersisted: a new issue and a cancel of a persisted one.
  for (const coupon of coupons) {
    t.equal((await issue(app, coupon.id, 'dan')).statusCode, 201)
    t.equal((await cancel(app, coupon.id, 'bob')).statusCode, 200)
  }
  for (const coupon of coupons) {
    const r = await report(app, coupon.id)
    t.equal(r.status, 'consistent', `coupon ${coupon.id} balances before tampering: ${r.problems.join('; ')}`)
    t.same(r.stream, { unpersistedIssues: 1, unpersistedRevokes: 1, undecodable: 0 })
    t.same(r.redis, { total: 5, remaining: 2, activeHolders: 3 })
    t.equal(r.postgres.rows, 3)
    t.equal(r.postgres.activeRows, 3, 'the cancel is not recorded yet')
  }
  const [rowGone, stockBumped, holderGone, wiped] = coupons as [typeof coupons[0], typeof coupons[0], typeof coupons[0], typeof coupons[0]]

  await app.db.delete(couponIssues).where(and(eq(couponIssues.couponId, rowGone.id), eq(couponIssues.userId, 'ann')))
  const r1 = await report(app, rowGone.id)
  t.equal(r1.status, 'inconsistent')
  t.match(r1.problems.join('\n'), /Redis holders sum to 3, Postgres and the stream imply 2/)
  t.same(r1.users.map((u) => u.userId), ['ann'])
  t.match(r1.users[0], { redisHolds: 1, expectedHolds: 0, rows: 0, activeRows: 0, redisClaim: 1, maxRowClaim: 0 })

  await app.redis.incr(app.keys.coupon(stockBumped.id).stock)
  const r2 = await report(app, stockBumped.id)
  t.equal(r2.status, 'inconsistent')
  t.same(r2.problems, ['total 5 != remaining 3 + active holders 3 (off by 1)'])
  t.same(r2.users, [], 'every user agrees; only the stock is off')

  await app.redis.hdel(app.keys.coupon(holderGone.id).holders, 'cid')
  const r3 = await report(app, holderGone.id)
  t.equal(r3.status, 'inconsistent')
  t.same(r3.users.map((u) => [u.userId, u.redisHolds, u.expectedHolds]), [['cid', 0, 1]])
  t.match(r3.problems.join('\n'), /total 5 != remaining 2 \+ active holders 2/)

  await app.redis.del(app.keys.coupon(wiped.id).stock, app.keys.coupon(wiped.id).holders)
  const r4 = await report(app, wiped.id)
  t.equal(r4.status, 'counters-absent', 'missing counters are not a disagreement')
  t.equal(r4.redis, null)
  t.same(r4.problems, [])

  // A claim number in Postgres above the one Redis holds.
  await app.db.update(couponIssues).set({ claim: 7 }).where(and(eq(couponIssues.couponId, holderGone.id), eq(couponIssues.userId, 'ann')))
  const r5 = await report(app, holderGone.id)
  t.match(r5.users.find((u) => u.userId === 'ann'), { redisHolds: 1, expectedHolds: 1, redisClaim: 1, maxRowClaim: 7 })
  t.match(r5.problems.join('\n'), /1 user\(s\) have a Postgres row with a claim number above their Redis claim/)

  // The CLI's logic on the same stores: text names the user, exit code 1; JSON is one document.
  let text = ''
  t.equal(await runReconcile(app, { couponId: rowGone.id, json: false }, { write: (s) => { text += s } }), EXIT_DISAGREES)
  t.match(text, new RegExp(`coupon ${rowGone.id}: INCONSISTENT`))
  t.match(text, /ann\s+1\s+0\s+0/)
  t.match(text, /1 coupon\(s\) checked, 1 inconsistent, 0 with counters absent/)
  let json = ''
  t.equal(await runReconcile(app, { couponId: null, json: true }, { write: (s) => { json += s } }), EXIT_DISAGREES)
  const doc = JSON.parse(json)
  t.equal(doc.checked, 4)
  t.equal(doc.inconsistent, 3)
  t.equal(doc.countersAbsent, 1)
  t.same(doc.coupons.map((c: ConsistencyReport) => c.status), ['inconsistent', 'inconsistent', 'inconsistent', 'counters-absent'])
  text = ''
  t.match(describeReport(r4), /counters absent in Redis/)
  await app.redis.decr(app.keys.coupon(stockBumped.id).stock)
  t.equal(await runReconcile(app, { couponId: stockBumped.id, json: false }, { write: (s) => { text += s } }), EXIT_BALANCED)
  t.match(text, new RegExp(`coupon ${stockBumped.id}: consistent`))
})

t.test('parked entries count as issued until discarded; the route checks admin and the coupon', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', CONSISTENCY_CRON: '' })
  const coupon = await createCoupon(app, { totalQuantity: 3 })
  for (const user of ['keep', 'parked']) await issue(app, coupon.id, user)
  await park(app, coupon.id, 'parked')
  const before = await report(app, coupon.id)
  t.equal(before.status, 'consistent', before.problems.join('; '))
  t.equal(before.postgres.parked, 1)
  t.equal(before.stream.unpersistedIssues, 1, 'keep is delivered to the parker, still pending')
  const [failed] = (await app.inject({ method: 'GET', url: '/admin/failed-events', headers: admin })).json().items
  t.equal((await app.inject({ method: 'POST', url: `/admin/failed-events/${failed.id}/discard`, headers: admin })).json().unitReturned, true)
  const after = await report(app, coupon.id)
  t.equal(after.status, 'consistent', after.problems.join('; '))
  t.equal(after.postgres.parked, 0)
  t.same(after.redis, { total: 3, remaining: 2, activeHolders: 1 })

  t.equal((await app.inject({ method: 'GET', url: `/admin/coupons/${coupon.id}/consistency` })).statusCode, 401)
  const missing = await app.inject({ method: 'GET', url: `/admin/coupons/${coupon.id + 100}/consistency`, headers: admin })
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().code, 'COUPON_NOT_FOUND')
  t.equal((await app.inject({ method: 'GET', url: '/admin/coupons/zero/consistency', headers: admin })).statusCode, 400)
})

t.test('compareBooks: an event persisted after the snapshot is not counted; one persisted meanwhile counts once', async (t) => {
  const streamKey = 's'
  const entry = (id: string, type: string, userId: string, claim: number): [string, string[]] =>
    [id, ['type', type, 'couponId', '1', 'userId', userId, type === 'issue' ? 'claim' : 'upTo', String(claim), 'at', '1000', ...(type === 'revoke' ? ['units', '1'] : [])]]
  const row = (userId: string, claim: number, streamId: string) => ({ userId, claim, createdAt: new Date(1000), revokedAt: null, streamId, idempotencyKey: null })
  const snapshot = {
    nowMs: 5000,
    meta: { total: '3', perUserLimit: '1' },
    stock: '1',
    holders: { '#': '1', a: '1', b: '1' },
    claims: { '#': '1', a: '1', b: '1', c: '1' },
    discarded: [],
    lastGeneratedId: '40-0',
    lastDeliveredId: '30-0',
    pendingIds: ['30-0']
  }
  const r = compareBooks(1, streamKey, snapshot, [entry('30-0', 'issue', 'b', 1), entry('40-0', 'revoke', 'c', 1)], {
    total: 3,
    // b's row was committed after the snapshot (its entry still pending then): counted once.
    // d's row comes from an event after the cutoff: not counted. c's claim was revoked by the entry at 40-0.
    // a's row is already marked revoked by a cancel after the cutoff: at the snapshot a still held it.
    rows: [{ ...row('a', 1, '10-0'), revokedAt: new Date(6000) }, row('b', 1, '30-0'), row('c', 1, '20-0'), row('d', 1, '50-0')],
    revocations: [{ userId: 'a', revokedAt: new Date(6000), streamId: '60-0', upToClaim: 1, units: 1, idempotencyKey: null }],
    parked: []
  })
  t.equal(r.status, 'consistent', r.problems.join('; '))
  t.equal(r.postgres.rows, 3)
  t.equal(r.postgres.revocations, 0, 'the later cancel is left to the next check')
  t.same(r.stream, { unpersistedIssues: 0, unpersistedRevokes: 1, undecodable: 0 })
  t.equal(cutoffOf({ lastGeneratedId: null, nowMs: 5000 }), `4999-${Number.MAX_SAFE_INTEGER}`, 'no stream: everything before the snapshot')
  const noGroup = compareBooks(1, streamKey, { ...snapshot, lastDeliveredId: null, holders: { '#': '1' }, stock: '3' }, [entry('50-0', 'x', 'e', 1)], { total: 3, rows: [], revocations: [], parked: [] })
  t.equal(noGroup.stream.undecodable, 1)
  t.equal(noGroup.status, 'consistent')
})

t.test('reconcile arguments', async (t) => {
  t.same(parseReconcileArgs([]), { couponId: null, json: false })
  t.same(parseReconcileArgs(['12', '--json']), { couponId: 12, json: true })
  t.throws(() => parseReconcileArgs(['x']), /not a coupon id/)
  t.throws(() => parseReconcileArgs(['1', '2']), /usage/)
})

t.test('under concurrent issues and cancels, with the consumer running, no false disagreement', async (t) => {
  const app = await testApp(t, { CONSISTENCY_CRON: '', CONSUMER_LINGER_MS: '5', CONSUMER_BATCH_SIZE: '7' })
  const coupon = await createCoupon(app, { totalQuantity: 40, perUserLimit: 2 })
  const rush = { over: false }
  const reports: ConsistencyReport[] = []
  // Three checkers: one through the route, two that hold the race window open between the Redis and
  // the Postgres reads, so that the consumer commits, acknowledges and trims in between.
  const checkers = [0, 5, 25].map(async (pauseMs) => {
    while (!rush.over) {
      reports.push(pauseMs === 0
        ? await report(app, coupon.id)
        : await checkConsistency(app, coupon.id, { betweenReads: () => sleep(pauseMs) }))
    }
  })
  // Each user: issue, issue, cancel (in that order of submission; they race each other and other users).
  const outcomes = await inParallel(900, 16, async (i) => {
    const userId = `u${Math.floor(i / 3) % 50}`
    const response = i % 3 === 2 ? await cancel(app, coupon.id, userId) : await issue(app, coupon.id, userId)
    return response.statusCode
  })
  rush.over = true
  await Promise.all(checkers)
  t.ok(outcomes.includes(201) && outcomes.includes(200), `both issues and cancels happened: ${JSON.stringify(outcomes.slice(0, 30))}`)
  t.ok(reports.length > 0, `${reports.length} reports ran during the rush`)
  const wrong = reports.filter((r) => r.status !== 'consistent')
  t.same(wrong.map((r) => r.problems), [], 'every report during the rush balances')
  t.ok(reports.some((r) => r.stream.unpersistedIssues + r.stream.unpersistedRevokes > 0 && r.postgres.rows > 0),
    'some reports saw events on their way to Postgres')
  const last = await report(app, coupon.id)
  t.equal(last.status, 'consistent')
})

t.test('the periodic watch: logged once per coupon, gauge while it lasts, cleared when it balances', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', CONSISTENCY_CRON: '' })
  const [a, b] = [await createCoupon(app, { totalQuantity: 4 }), await createCoupon(app, { totalQuantity: 4 })]
  for (const c of [a, b]) await issue(app, c.id, 'x')
  const logged: { level: string, obj: any, msg: string }[] = []
  const log = Object.fromEntries(['error', 'warn', 'info'].map((level) => [level, (obj: any, msg: string) => { logged.push({ level, obj, msg }) }])) as any
  const watch = new ConsistencyWatch(app, log)
  t.same(await watch.tick(), { [a.id]: 'consistent', [b.id]: 'consistent' })
  t.same(await new ConsistencyWatch(app, log, { maxHolders: 0 }).tick(), { [a.id]: 'skipped', [b.id]: 'skipped' },
    'campaigns with more holders than maxHolders are left to the on-demand report')
  await app.redis.incr(app.keys.coupon(a.id).stock)
  await watch.tick()
  await watch.tick()
  t.equal(watch.inconsistent, 1)
  const errors = logged.filter((l) => l.level === 'error')
  t.equal(errors.length, 1, 'logged once, not every tick')
  t.equal(errors[0]!.obj.couponId, a.id)
  // The app's own watch feeds the gauge.
  await app.redis.incr(app.keys.coupon(b.id).stock)
  await app.consistencyWatch.tick()
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /couponrush_inconsistencies 2/)
  await app.redis.decr(app.keys.coupon(b.id).stock)
  await app.redis.decr(app.keys.coupon(a.id).stock)
  await watch.tick()
  t.equal(watch.inconsistent, 0)
  t.ok(logged.some((l) => l.level === 'info' && /balance again/.test(l.msg)), 'the recovery is logged')
  // A coupon that cannot be checked is reported as failed, and one that leaves the active set is forgotten.
  await app.redis.sadd(app.keys.activeCoupons, '999999')
  await app.redis.incr(app.keys.coupon(a.id).stock)
  t.equal((await watch.tick())['999999'], 'failed')
  t.equal(watch.inconsistent, 1)
  await app.redis.srem(app.keys.activeCoupons, String(a.id))
  await watch.tick()
  t.equal(watch.inconsistent, 0)
})
