// Regression tests for the holes found where operations meet: parallel PATCHes, cancel + re-claim in one
// millisecond, a reopened campaign, an issue and its cancel persisted concurrently, a PATCH during a
// counter rebuild, idempotency across a rebuild, and the smaller defects around them.
import t from 'tap'
import pg from 'pg'
import { eq, sql } from 'drizzle-orm'
import { couponIssues } from '../src/db/schema.js'
import { persistEvents, recordFailedEvents } from '../src/db/queries/issues.js'
import { computeCounters } from '../src/issuing/restore-counters.js'
import { maintenanceTick } from '../src/persistence/maintenance.js'
import { COMPLETE_MARKER } from '../src/redis/keys.js'
import { updateCoupon } from '../src/redis/scripts.js'
import { decodeEntry, fieldsToObject, isEvent, type IssueEvent, type RevokeEvent } from '../src/stream/events.js'
import { admin, createCoupon, inParallel, testApp, testConsumer, waitFor, type TestApp } from './helpers/env.js'

const issue = (app: TestApp, couponId: number, userId: string, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url: `/coupons/${couponId}/issues`, headers, payload: { userId } })
const cancel = (app: TestApp, couponId: number, userId: string) =>
  app.inject({ method: 'DELETE', url: `/coupons/${couponId}/issues/${userId}` })
const patch = (app: TestApp, couponId: number, payload: Record<string, unknown>) =>
  app.inject({ method: 'PATCH', url: `/coupons/${couponId}`, headers: admin, payload })
const remaining = async (app: TestApp, couponId: number) => (await app.inject({ method: 'GET', url: `/coupons/${couponId}` })).json().remaining as number
const rowsOf = (app: TestApp, couponId: number) =>
  app.db.select().from(couponIssues).where(eq(couponIssues.couponId, couponId)).orderBy(couponIssues.userId, couponIssues.claim)

/** Units held according to Redis (the holders hash without its completeness marker). */
async function heldInRedis (app: TestApp, couponId: number): Promise<Record<string, number>> {
  const { [COMPLETE_MARKER]: _marker, ...holders } = await app.redis.hgetall(app.keys.coupon(couponId).holders)
  return Object.fromEntries(Object.entries(holders).map(([user, units]) => [user, Number(units)]))
}

/** Deletes every counter key and rebuilds them (a GET triggers the rebuild); returns the rebuilt state. */
async function rebuild (app: TestApp, couponId: number) {
  const k = app.keys.coupon(couponId)
  await app.redis.del(k.meta, k.stock, k.holders, k.claims, k.idempotency, k.revoked)
  const left = await remaining(app, couponId)
  return { left, holders: await heldInRedis(app, couponId) }
}

t.test('1: eight parallel PATCHes to the same total converge; concurrent different totals serialize', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const answers = await Promise.all(Array.from({ length: 8 }, () => patch(app, coupon.id, { totalQuantity: 20 })))
  t.same(answers.map((a) => a.statusCode), Array(8).fill(200))
  t.equal(await remaining(app, coupon.id), 20, 'stock follows the new total, not the sum of eight deltas')
  const rush = await inParallel(60, 16, async (i) => (await issue(app, coupon.id, `rush-${i}`)).statusCode)
  t.equal(rush.filter((s) => s === 201).length, 20, 'a rush gets exactly the total')

  const other = await createCoupon(app, { totalQuantity: 10 })
  for (let i = 0; i < 4; i++) await issue(app, other.id, `early-${i}`)
  const mixed = await Promise.all([15, 30, 12, 25, 9].map((total) => patch(app, other.id, { totalQuantity: total })))
  t.same(mixed.map((a) => a.statusCode), Array(5).fill(200))
  const row = (await app.inject({ method: 'GET', url: `/coupons/${other.id}` })).json()
  t.equal(Number(await app.redis.hget(app.keys.coupon(other.id).meta, 'total')), row.totalQuantity, 'Redis and Postgres agree on the total that won')
  t.equal(row.remaining, row.totalQuantity - 4, 'remaining = total - held, whatever order they ran in')
})

t.test('1: a change Redis applied but Postgres did not (a failure between the writes) converges when sent again', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  await issue(app, coupon.id, 'a')
  const k = app.keys.coupon(coupon.id)
  // The first attempt reached Redis, then the commit failed.
  await updateCoupon(app.redis, k, { total: 20, startsAtMs: 0, endsAtMs: null, paused: false, returnExpired: false })
  const again = await patch(app, coupon.id, { totalQuantity: 20 })
  t.equal(again.statusCode, 200)
  t.equal(again.json().totalQuantity, 20)
  t.equal(again.json().remaining, 19, 'the second send adds nothing twice and leaves nothing short')
  t.equal(await remaining(app, coupon.id), 19)
})

t.test('9: lowering the total is allowed down to what is out, refused below it with the real count', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  for (const user of ['a', 'b', 'c']) await issue(app, coupon.id, user)
  const lowered = await patch(app, coupon.id, { totalQuantity: 5 })
  t.equal(lowered.statusCode, 200, 'above what is out: allowed')
  t.equal(lowered.json().remaining, 2)
  const exact = await patch(app, coupon.id, { totalQuantity: 3 })
  t.equal(exact.statusCode, 200, 'exactly what is out: allowed')
  t.equal(exact.json().remaining, 0)
  const below = await patch(app, coupon.id, { totalQuantity: 2 })
  t.equal(below.statusCode, 409)
  t.equal(below.json().code, 'STOCK_BELOW_ISSUED')
  t.match(below.json().message, /below the 3 units out/)
  await cancel(app, coupon.id, 'a')
  t.equal((await patch(app, coupon.id, { totalQuantity: 2 })).statusCode, 200, 'a cancelled unit is not out')
})

t.test('2: cancel and re-claim in the same millisecond: the re-claim stays active, in Postgres and after a rebuild', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const users = Array.from({ length: 100 }, (_, i) => `u${i}`)
  const coupon = await createCoupon(app, { totalQuantity: 200 })
  for (const user of users) await issue(app, coupon.id, user)
  const pairs = await Promise.all(users.map((user) => Promise.all([cancel(app, coupon.id, user), issue(app, coupon.id, user)])))
  t.same(pairs.map(([c, i]) => [c.statusCode, i.statusCode]), Array(100).fill([200, 201]))
  await testConsumer(t, app, 'drain').drain()
  const rows = await rowsOf(app, coupon.id)
  t.equal(rows.length, 200)
  t.same(rows.filter((r) => r.claim === 1 && r.revokedAt === null).map((r) => r.userId), [], 'every first claim is revoked')
  t.same(rows.filter((r) => r.claim === 2 && r.revokedAt !== null).map((r) => r.userId), [], 'no re-claim is revoked')
  const rebuilt = await rebuild(app, coupon.id)
  t.equal(rebuilt.left, 100, 'a rebuild counts 100 holders, not 0 or 200')
  t.equal(Object.keys(rebuilt.holders).length, 100)
})

t.test('2: computeCounters revokes by claim number, never by moment', async (t) => {
  const coupon = { id: 7, totalQuantity: 5 }
  const entry = (id: string, fields: Record<string, string | number>) => [id, Object.entries({ couponId: 7, ...fields }).flat().map(String)] as [string, string[]]
  const sameMs = computeCounters(coupon, [], [
    entry('1000-0', { type: 'issue', userId: 'a', claim: 1, at: 1000 }),
    entry('1000-1', { type: 'revoke', userId: 'a', units: 1, at: 1000, upTo: 1 }),
    entry('1000-2', { type: 'issue', userId: 'a', claim: 2, at: 1000 })
  ])
  t.same(Object.fromEntries(sameMs.users), { a: [1, 2] }, 'the claim after the cancel is held, the one before is not')
  t.equal(sameMs.stock, 4)
  const fromFacts = computeCounters(coupon, [
    { userId: 'b', claim: 1, createdAt: new Date(5), revokedAt: null, streamId: '5-0', idempotencyKey: null },
    { userId: 'b', claim: 2, createdAt: new Date(5), revokedAt: null, streamId: '5-2', idempotencyKey: null }
  ], [], { revocations: [{ userId: 'b', revokedAt: new Date(5), streamId: '5-1', upToClaim: 1, units: 1, idempotencyKey: null }] })
  t.same(Object.fromEntries(fromFacts.users), { b: [1, 2] }, 'a recorded cancel not yet applied to its row counts too')
})

t.test('3: a campaign pruned after its end and reopened: new issues are persisted', async (t) => {
  const app = await testApp(t, { RECLAIM_CRON: '0 0 1 1 *' })
  const coupon = await createCoupon(app, { totalQuantity: 10, startsAt: new Date(Date.now() - 60_000).toISOString() })
  t.equal((await issue(app, coupon.id, 'early')).statusCode, 201)
  await waitFor(async () => (await rowsOf(app, coupon.id)).length === 1, { what: 'the early issue to be persisted' })
  t.equal((await patch(app, coupon.id, { endsAt: new Date(Date.now() - 1000).toISOString() })).statusCode, 200)
  t.equal((await issue(app, coupon.id, 'late')).json().code, 'ENDED')
  await waitFor(async () => (await app.consumer!.maintenance.pruneEndedStreams(0)).length === 1 || null, { what: 'the settled stream to be pruned' })
  t.notOk(await app.redis.sismember(app.keys.activeCoupons, String(coupon.id)), 'off the read list')

  t.equal((await patch(app, coupon.id, { endsAt: new Date(Date.now() + 600_000).toISOString() })).statusCode, 200)
  const reopened = await issue(app, coupon.id, 'after-reopen')
  t.equal(reopened.statusCode, 201)
  t.ok(await app.redis.sismember(app.keys.activeCoupons, String(coupon.id)), 'the issue put the coupon back on the read list')
  await waitFor(async () => (await rowsOf(app, coupon.id)).length === 2, { what: 'the issue after the reopen to be persisted' })
  const cancelled = await cancel(app, coupon.id, 'early')
  t.equal(cancelled.statusCode, 200)
  await waitFor(async () => (await rowsOf(app, coupon.id)).find((r) => r.userId === 'early')?.revokedAt, { what: 'the late cancel to be persisted' })
})

t.test('3: drain finds a stream with unpersisted entries that is on no list', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  t.equal((await issue(app, coupon.id, 'lost')).statusCode, 201)
  await app.redis.srem(app.keys.activeCoupons, String(coupon.id))
  const report = await testConsumer(t, app, 'drain').drain()
  t.equal(report.perCoupon[String(coupon.id)], 1, 'drain read it anyway')
  t.equal((await rowsOf(app, coupon.id)).length, 1)
})

/** Makes the next INSERT into `table` wait (inside the statement, BEFORE or AFTER the row is written) until release(). */
async function holdInserts (t: { teardown (fn: () => unknown): void }, databaseUrl: string, table: string, when: 'BEFORE' | 'AFTER') {
  const setup = new pg.Client({ connectionString: databaseUrl })
  await setup.connect()
  await setup.query(`CREATE OR REPLACE FUNCTION hold_${table}() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_advisory_lock_shared(4242); PERFORM pg_advisory_unlock_shared(4242); RETURN NEW; END $$`)
  await setup.query(`CREATE TRIGGER hold_${table} ${when} INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION hold_${table}()`)
  const gate = new pg.Client({ connectionString: databaseUrl })
  await gate.connect()
  await gate.query('SELECT pg_advisory_lock(4242)')
  const waiting = async () => (await setup.query('SELECT count(*)::int AS n FROM pg_locks WHERE locktype = \'advisory\' AND NOT granted')).rows[0].n > 0
  let released = false
  const release = async () => {
    if (released) return
    released = true
    await gate.query('SELECT pg_advisory_unlock(4242)')
    await gate.end()
    await setup.query(`DROP TRIGGER hold_${table} ON ${table}`)
    await setup.end()
  }
  t.teardown(release)
  return { release, waiting }
}

t.test('4: an issue and its cancel persisted by two consumers in concurrent transactions: the row ends revoked', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const streamKey = app.keys.coupon(coupon.id).events
  const issueOf = (userId: string, at: number): IssueEvent => ({ type: 'issue', streamKey, id: `${at}-0`, couponId: coupon.id, userId, claim: 1, at })
  const revokeOf = (userId: string, at: number): RevokeEvent => ({ type: 'revoke', streamKey, id: `${at}-1`, couponId: coupon.id, userId, units: 1, at, upToClaim: 1 })
  const revokedOf = async (userId: string) => (await rowsOf(app, coupon.id)).find((r) => r.userId === userId)?.revokedAt ?? null

  for (const [userId, table, when] of [
    // the issue's row is written (uncommitted) while the cancel commits: the issue's own fix-up finds it
    ['issue-first', 'coupon_issues', 'AFTER'],
    // the issue's statement started before the cancel committed: the same
    ['issue-snapshot', 'coupon_issues', 'BEFORE'],
    // the cancel's fact is written (uncommitted) while the issue commits (and sees no cancel at all): the cancel's fix-up finds it
    ['cancel-first', 'coupon_revocations', 'AFTER']
  ] as const) {
    const at = Date.now()
    const hold = await holdInserts(t, app.env.databaseUrl, table, when)
    const held = table === 'coupon_issues' ? persistEvents(app.db, [issueOf(userId, at)], []) : persistEvents(app.db, [], [revokeOf(userId, at + 1)])
    await waitFor(hold.waiting, { what: `the ${table} insert to wait` })
    if (table === 'coupon_issues') await persistEvents(app.db, [], [revokeOf(userId, at + 1)])
    else await persistEvents(app.db, [issueOf(userId, at)], [])
    await hold.release()
    await held
    t.ok(await revokedOf(userId), `${userId}: the issue row is revoked`)
  }
})

t.test('5: a PATCH while the counters are being rebuilt is not lost in Redis', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  for (const user of ['a', 'b']) await issue(app, coupon.id, user)
  await testConsumer(t, app, 'drain').drain()
  const k = app.keys.coupon(coupon.id)
  await app.redis.del(k.meta, k.stock, k.holders, k.claims)
  // The rebuild stalls reading the issues; the PATCH arrives meanwhile.
  const lock = new pg.Client({ connectionString: app.env.databaseUrl })
  await lock.connect()
  t.teardown(() => lock.end().catch(() => {}))
  await lock.query('BEGIN')
  await lock.query('LOCK TABLE coupon_issues IN ACCESS EXCLUSIVE MODE')
  const rebuilding = app.inject({ method: 'GET', url: `/coupons/${coupon.id}` })
  await waitFor(async () => Number(await app.redis.exists(k.restoreLock)) === 1, { what: 'the rebuild to start' })
  const closing = patch(app, coupon.id, { totalQuantity: 20, endsAt: new Date(Date.now() + 400).toISOString() })
  await new Promise((resolve) => setTimeout(resolve, 100)) // let the PATCH reach its wait; the outcome does not depend on it
  await lock.query('ROLLBACK')
  const [rebuilt, closed] = await Promise.all([rebuilding, closing])
  t.equal(rebuilt.statusCode, 200)
  t.equal(closed.statusCode, 200)
  t.equal(closed.json().remaining, 18, 'the +10 reached Redis')
  t.equal(await remaining(app, coupon.id), 18)
  await waitFor(async () => (await issue(app, coupon.id, 'after-close')).json().code === 'ENDED', { what: 'the new end to apply', timeoutMs: 5000 })
  t.equal(await app.redis.hget(k.meta, 'endsAt'), String(new Date(closed.json().endsAt).getTime()), 'Redis has the window Postgres has')
})

t.test('6: a retry with the same Idempotency-Key replays after a rebuild, from the stream or from Postgres', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10, perUserLimit: 3 })
  const first = await issue(app, coupon.id, 'multi', { 'idempotency-key': 'order-1' })
  t.equal(first.statusCode, 201)
  const k = app.keys.coupon(coupon.id)

  await rebuild(app, coupon.id) // the issue is only in the stream
  const fromStream = await issue(app, coupon.id, 'multi', { 'idempotency-key': 'order-1' })
  t.equal(fromStream.statusCode, 201)
  t.same(fromStream.json(), first.json(), 'the same answer, not a second unit')
  t.equal(fromStream.headers['idempotent-replayed'], 'true')

  await testConsumer(t, app, 'drain').drain()
  t.equal(await app.redis.xlen(k.events), 0, 'persisted and trimmed')
  await rebuild(app, coupon.id)
  const fromPostgres = await issue(app, coupon.id, 'multi', { 'idempotency-key': 'order-1' })
  t.same(fromPostgres.json(), first.json(), 'replayed from the persisted row')

  await app.redis.del(k.idempotency) // evicted on its own
  const afterLoss = await issue(app, coupon.id, 'multi', { 'idempotency-key': 'order-1' })
  t.same(afterLoss.json(), first.json(), 'a lost idempotency hash is rebuilt before a keyed call acts')
  t.equal((await heldInRedis(app, coupon.id)).multi, 1, 'still one unit')

  const cancelled = await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/multi`, headers: { 'idempotency-key': 'cancel-1' } })
  t.equal(cancelled.statusCode, 200)
  await rebuild(app, coupon.id)
  const cancelAgain = await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/multi`, headers: { 'idempotency-key': 'cancel-1' } })
  t.same(cancelAgain.json(), cancelled.json(), 'a cancel replays after a rebuild too')
})

t.test('7: creating a coupon right after an issue for its id was refused answers 201', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const first = await createCoupon(app, { totalQuantity: 1 })
  t.equal((await issue(app, first.id + 1, 'eager')).json().code, 'COUPON_NOT_FOUND')
  const created = await app.inject({ method: 'POST', url: '/coupons', headers: admin, payload: { name: 'next', totalQuantity: 3 } })
  t.equal(created.statusCode, 201)
  t.equal(created.json().id, first.id + 1)
  t.equal((await issue(app, first.id + 1, 'eager')).statusCode, 201, 'and it can be claimed at once')
})

t.test('13: a parked issue can be discarded: its unit returns to stock, once, audited', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 3 })
  const k = app.keys.coupon(coupon.id)
  for (const user of ['keep', 'parked', 'cancelled']) await issue(app, coupon.id, user)
  const parkedUser = new Map<string, string>()
  const park = async (userId: string) => {
    const [id, fields] = (await app.redis.xrange(k.events, '-', '+')).find(([id, f]) => {
      const event = decodeEntry(k.events, coupon.id, id, f)
      return isEvent(event) && event.type === 'issue' && event.userId === userId
    })!
    // Parked as the consumer parks a raw entry: its fields as a field/value object.
    await recordFailedEvents(app.db, [{ streamKey: k.events, id, payload: fieldsToObject(fields), error: 'test', deliveries: 6 }])
    parkedUser.set(id, userId)
    await app.redis.xdel(k.events, id)
  }
  t.equal(await app.redis.get(k.stock), '0')
  await park('parked')
  await park('cancelled')
  await cancel(app, coupon.id, 'cancelled')
  const parked = (await app.inject({ method: 'GET', url: '/admin/failed-events', headers: admin })).json().items as { id: number, streamId: string }[]
  const idOf = (user: string) => parked.find((p) => parkedUser.get(p.streamId) === user)!.id

  const discarded = await app.inject({ method: 'POST', url: `/admin/failed-events/${idOf('parked')}/discard`, headers: admin, payload: { reason: 'order never existed' } })
  t.equal(discarded.statusCode, 200)
  t.equal(discarded.json().unitReturned, true)
  t.equal(await app.redis.get(k.stock), '2', 'the unit is back (plus the cancelled one)')
  t.same(await heldInRedis(app, coupon.id), { keep: 1 }, 'the holder lost it')
  const again = await app.inject({ method: 'POST', url: `/admin/failed-events/${idOf('parked')}/discard`, headers: admin })
  t.equal(again.statusCode, 200)
  t.equal(again.json().unitReturned, false, 'a second discard returns nothing')
  t.equal(await app.redis.get(k.stock), '2')
  const viaCancel = await app.inject({ method: 'POST', url: `/admin/failed-events/${idOf('cancelled')}/discard`, headers: admin })
  t.equal(viaCancel.json().unitReturned, false, 'a unit a cancel already returned is not returned twice')
  t.equal(await app.redis.get(k.stock), '2')
  const retry = await app.inject({ method: 'POST', url: `/admin/failed-events/${idOf('parked')}/retry`, headers: admin })
  t.equal(retry.statusCode, 409)
  t.equal(retry.json().code, 'FAILED_EVENT_SETTLED')
  t.equal((await app.inject({ method: 'GET', url: '/admin/failed-events', headers: admin })).json().items.length, 0, 'discarded entries leave the default list')
  const all = (await app.inject({ method: 'GET', url: '/admin/failed-events?includeRetried=true', headers: admin })).json().items
  t.equal(all.find((i: any) => i.id === idOf('parked')).discardReason, 'order never existed', 'kept with its reason')
  t.equal((await rebuild(app, coupon.id)).left, 2, 'a rebuild counts neither discarded entry (keep holds 1 of 3)')
  t.equal((await app.inject({ method: 'POST', url: '/admin/failed-events/999999/discard', headers: admin })).json().code, 'FAILED_EVENT_NOT_FOUND')
})

t.test('13b: a parked cancel or redemption cannot be discarded (Redis applied it; nothing would undo it): 409, and it can still be retried', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 2 })
  const k = app.keys.coupon(coupon.id)
  const code = (await issue(app, coupon.id, 'buyer')).json().code
  t.equal((await app.inject({ method: 'POST', url: `/codes/${code}/redemptions`, payload: { orderId: 'o-1' } })).statusCode, 201)
  await issue(app, coupon.id, 'quitter')
  t.equal((await cancel(app, coupon.id, 'quitter')).statusCode, 200)
  // Park the redemption and the cancel as the consumer parks poison.
  const parkedIds: string[] = []
  for (const [id, fields] of await app.redis.xrange(k.events, '-', '+')) {
    const event = decodeEntry(k.events, coupon.id, id, fields)
    if (!isEvent(event) || event.type === 'issue') continue
    await recordFailedEvents(app.db, [{ streamKey: k.events, id, payload: fieldsToObject(fields), error: 'test', deliveries: 6 }])
    await app.redis.xdel(k.events, id)
    parkedIds.push(id)
  }
  t.equal(parkedIds.length, 2, 'the redemption and the cancel parked')
  const items = (await app.inject({ method: 'GET', url: '/admin/failed-events', headers: admin })).json().items as { id: number, streamId: string }[]
  const stockBefore = await app.redis.get(k.stock)
  for (const item of items) {
    const refused = await app.inject({ method: 'POST', url: `/admin/failed-events/${item.id}/discard`, headers: admin })
    t.equal(refused.statusCode, 409)
    t.equal(refused.json().code, 'FAILED_EVENT_NOT_DISCARDABLE')
    t.match(refused.json().message, /redemption|cancel/)
  }
  t.equal(await app.redis.get(k.stock), stockBefore, 'nothing changed in Redis')
  t.equal((await app.inject({ method: 'GET', url: '/admin/failed-events', headers: admin })).json().items.length, 2, 'both still parked')
  t.equal((await app.inject({ method: 'GET', url: `/codes/${code}` })).json().status, 'redeemed', 'and still counted: the code stays redeemed')
  t.equal((await rebuild(app, coupon.id)).left, 1, 'a rebuild counts the parked cancel (quitter\'s unit back, buyer holds 1 of 2)')
  t.equal((await app.inject({ method: 'GET', url: `/codes/${code}` })).json().status, 'redeemed', 'and the parked redemption')
  for (const item of items) t.equal((await app.inject({ method: 'POST', url: `/admin/failed-events/${item.id}/retry`, headers: admin })).statusCode, 200, 'a retry writes it')
  t.equal((await app.inject({ method: 'GET', url: '/admin/failed-events', headers: admin })).json().items.length, 0)
})

t.test('14: replays are not counted as issues, 429s are counted, replays do not use up the per-user limit; a fresh cancel shows', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', RATE_LIMIT_PER_USER: '2', RATE_LIMIT_WINDOW_MS: '60000' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  for (let i = 0; i < 4; i++) t.equal((await issue(app, coupon.id, 'retrier', { 'idempotency-key': 'k-1' })).statusCode, 201, `attempt ${i + 1} is answered, not limited`)
  t.equal((await issue(app, coupon.id, 'retrier')).json().code, 'ALREADY_ISSUED', 'the second counted call')
  t.equal((await issue(app, coupon.id, 'retrier')).statusCode, 429, 'a third call without the key meets the limit')
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /couponrush_issue_requests_total\{outcome="issued"\} 1\n/)
  t.match(metrics, /couponrush_issue_requests_total\{outcome="replayed"\} 3\n/)
  t.match(metrics, /couponrush_issue_requests_total\{outcome="RATE_LIMITED"\} 1\n/)

  const plain = await createCoupon(app, { totalQuantity: 5 })
  await issue(app, plain.id, 'buyer')
  await testConsumer(t, app, 'drain').drain()
  const cancelled = await cancel(app, plain.id, 'buyer')
  const view = (await app.inject({ method: 'GET', url: `/coupons/${plain.id}/issues/buyer` })).json()
  t.equal(view.units, 0)
  t.equal(view.issues[0].revokedAt, cancelled.json().revokedAt, 'the cancel shows before the consumer writes it')
  const listing = (await app.inject({ method: 'GET', url: '/users/buyer/coupons' })).json()
  t.equal(listing.coupons.find((c: any) => c.couponId === plain.id).issues[0].revokedAt, cancelled.json().revokedAt)
})

t.test('6: idempotency records carry no TTL; expired ones are ignored and pruned', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', IDEMPOTENCY_TTL_SECONDS: '1' })
  const coupon = await createCoupon(app, { totalQuantity: 5, perUserLimit: 2 })
  const k = app.keys.coupon(coupon.id)
  const first = await issue(app, coupon.id, 'slow', { 'idempotency-key': 'once' })
  t.equal(await app.redis.ttl(k.idempotency), -1, 'no TTL: volatile-* eviction does not pick it')
  t.same((await issue(app, coupon.id, 'slow', { 'idempotency-key': 'once' })).json(), first.json())
  await waitFor(async () => (await issue(app, coupon.id, 'slow', { 'idempotency-key': 'once' })).json().claim === 2, { what: 'the key to expire', timeoutMs: 5000 })
  const consumer = testConsumer(t, app, 'maintenance')
  t.equal(await consumer.maintenance.pruneIdempotency(0), 1, 'the remembered record is pruned once expired')
  t.same(Object.keys(await app.redis.hgetall(k.idempotency)), [COMPLETE_MARKER], 'only the completeness marker is left')
})

t.test('3: a settled stream off the read list (pruned before dormant marks existed) is marked by discovery, and a later cancel brings it back', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  await issue(app, coupon.id, 'old')
  const consumer = testConsumer(t, app, 'discovery')
  await consumer.drain()
  await app.redis.srem(app.keys.activeCoupons, String(coupon.id))
  t.same(await consumer.maintenance.discoverStreams(), [], 'settled: not put back')
  t.equal(await app.redis.hget(app.keys.coupon(coupon.id).meta, 'dormant'), '1', 'but marked dormant')
  t.equal((await cancel(app, coupon.id, 'old')).statusCode, 200)
  t.ok(await app.redis.sismember(app.keys.activeCoupons, String(coupon.id)), 'the cancel put it back on the read list')
  await consumer.drain()
  t.ok((await rowsOf(app, coupon.id))[0]!.revokedAt, 'and the cancel was persisted')
})

t.test('4: two instances, users claiming on one and cancelling on the other within milliseconds: every cancel lands', async (t) => {
  const a = await testApp(t, { CONSUMER_BATCH_SIZE: '20', CONSUMER_LINGER_MS: '0' })
  const b = await testApp(t, { DATABASE_URL: a.env.databaseUrl, REDIS_PREFIX: a.env.prefix, CONSUMER_BATCH_SIZE: '20', CONSUMER_LINGER_MS: '0' })
  const coupon = await createCoupon(a, { totalQuantity: 300 })
  const users = Array.from({ length: 300 }, (_, i) => `two-${i}`)
  const answers = await inParallel(users.length, 24, async (i) => {
    const claimed = await issue(i % 2 ? a : b, coupon.id, users[i]!)
    const cancelled = await cancel(i % 2 ? b : a, coupon.id, users[i]!)
    return [claimed.statusCode, cancelled.statusCode]
  })
  t.same(answers.filter(([c, r]) => c !== 201 || r !== 200), [], 'all claimed (201) and cancelled (200)')
  await waitFor(async () => {
    const rows = await rowsOf(a, coupon.id)
    return rows.length === 300 && rows.every((r) => r.revokedAt !== null)
  }, { what: 'every row persisted and revoked', timeoutMs: 20_000 })
  const rebuilt = await rebuild(a, coupon.id)
  t.equal(rebuilt.left, 300, 'a rebuild finds nobody holding a unit')
})

t.test('a consumer stopped and started again with no stream to read waits instead of spinning', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', CONSUMER_BLOCK_MS: '200' })
  const consumer = testConsumer(t, app, 'restarted')
  consumer.start()
  await consumer.stop()
  consumer.start()
  const before = process.cpuUsage()
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const { user, system } = process.cpuUsage(before)
  await consumer.stop()
  const cpuMs = (user + system) / 1000
  t.ok(cpuMs < 200, `an idle second costs little CPU (${cpuMs.toFixed(0)} ms), not a busy loop`)
})

t.test('a rebuild whose read-list SADD fails still answers; a maintenance tick puts the coupon on the list once Redis takes it', async (t) => {
  // On a cluster the active set lives on one shard: while that shard is down, a rebuild on another one
  // installs the counters but cannot list the coupon. Its issues must not wait for a restart to be read.
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const k = app.keys.coupon(coupon.id)
  await app.redis.del(k.stock, k.holders, k.claims, k.meta, app.keys.activeCoupons)
  // a wrong type makes SADD (and SMEMBERS) fail, as a shard that is down would
  await app.redis.set(app.keys.activeCoupons, 'not a set')
  t.equal((await issue(app, coupon.id, 'stranded-user')).statusCode, 201, 'the counters were rebuilt and the issue answered')
  const consumer = testConsumer(t, app, 'stranded')
  const handedBack: number[] = []
  const options = {
    strandedCoupons: () => app.couponStore.takeStranded(),
    strandedAgain: (ids: number[]) => { handedBack.push(...ids); app.couponStore.strand(ids) }
  }
  await maintenanceTick(consumer, app.log, options)
  t.same(handedBack, [coupon.id], 'the tick could not list it either: kept for the next one')
  await app.redis.del(app.keys.activeCoupons)
  await maintenanceTick(consumer, app.log, options)
  t.ok(await app.redis.sismember(app.keys.activeCoupons, String(coupon.id)), 'the next tick put it on the read list')
  t.same(app.couponStore.takeStranded(), [], 'and forgot it')
  await consumer.drain()
  t.equal((await rowsOf(app, coupon.id)).length, 1, 'its issue was persisted')
})

t.test('an issue row always names an existing coupon (checked per statement since migration 0009), and coupons are never deleted', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const at = 1_800_000_000_000
  const issueOf = (couponId: number, userId: string, seq: number): IssueEvent =>
    ({ type: 'issue', streamKey: app.keys.coupon(couponId).events, id: `${at + seq}-0`, couponId, userId, claim: 1, at })
  const sqlState = async (work: Promise<unknown>) => {
    try {
      await work
      return 'no error'
    } catch (err: any) {
      return err.code ?? err.cause?.code
    }
  }
  t.equal(await persistEvents(app.db, [issueOf(coupon.id, 'real', 1)], []), 1, 'a batch of a real coupon is written')
  t.equal(await sqlState(persistEvents(app.db, [issueOf(coupon.id, 'mixed', 2), issueOf(coupon.id + 1000, 'ghost', 3)], [])), '23503',
    'a batch naming a missing coupon fails whole, with the foreign key\'s SQLSTATE')
  t.equal(await sqlState(app.db.execute(sql`UPDATE coupon_issues SET coupon_id = ${coupon.id + 1000} WHERE user_id = 'real'`)), '23503', 'so does moving a row to a missing coupon')
  t.equal(await sqlState(app.db.execute(sql`DELETE FROM coupons WHERE id = ${coupon.id}`)), '23503', 'a coupon cannot be deleted')
  t.equal(await sqlState(app.db.execute(sql`TRUNCATE coupons CASCADE`)), '23503', 'nor truncated')
  const rows = ((await app.db.execute(sql`SELECT user_id, coupon_id FROM coupon_issues ORDER BY user_id`)) as any).rows
  t.same(rows.map((r: any) => [r.user_id, Number(r.coupon_id)]), [['real', coupon.id]], 'only the real issue is there, unmoved')
})
