// Expiry with returnExpiredToStock (issue 11): the expiry job returns expired, unredeemed units to stock
// while the campaign has not ended, one Lua script per call, atomic with redeem.lua; each return is a
// one-unit revoke entry persisted idempotently (revoked_at + reason) and announced as code.expired.
//
// Time is Redis TIME: each campaign gets a validUntil a few seconds ahead of Redis's clock, the test waits
// (polling Redis, never a fixed sleep) until that moment has passed, and the job runs by explicit ticks
// (EXPIRY_CRON '' turns the schedule off). Nothing depends on how fast the machine is, except the checked
// precondition that the units were issued before their validUntil.
import t from 'tap'
import { sql } from 'drizzle-orm'
import { encodeEntry, decodeEntry, isEvent, type CouponEvent } from '../src/stream/events.js'
import { PersistBatch } from '../src/persistence/persist-batch.js'
import { ReturnExpiredCode } from '../src/redis/scripts.js'
import { admin, createCoupon, inParallel, testApp, testConsumer, waitFor, type TestApp } from './helpers/env.js'
import { startReceiver } from './helpers/receiver.js'

const QUIET = { CONSUMER_ENABLED: 'false', EXPIRY_CRON: '', CONSISTENCY_CRON: '' }

const redisNow = async (app: TestApp) => {
  const [seconds, micros] = await app.redis.time()
  return Number(seconds) * 1000 + Math.floor(Number(micros) / 1000)
}
const issue = async (app: TestApp, couponId: number, userId: string) => {
  const r = await app.inject({ method: 'POST', url: `/coupons/${couponId}/issues`, payload: { userId } })
  if (r.statusCode !== 201) throw new Error(`issue for ${userId}: ${r.statusCode} ${r.body}`)
  return r.json() as { claim: number, code: string, expiresAt: string }
}
const redeem = (app: TestApp, code: string, orderId: string) => app.inject({ method: 'POST', url: `/codes/${code}/redemptions`, payload: { orderId } })
const rollback = (app: TestApp, code: string, orderId: string) => app.inject({ method: 'DELETE', url: `/codes/${code}/redemptions/${orderId}` })
const lookup = async (app: TestApp, code: string) => (await app.inject({ method: 'GET', url: `/codes/${code}` })).json()
const remaining = async (app: TestApp, couponId: number) => (await app.inject({ method: 'GET', url: `/coupons/${couponId}` })).json().remaining as number
const msOf = (value: string | null) => value === null ? null : new Date(value)
const rows = async (app: TestApp, couponId: number) =>
  (((await app.db.execute(sql`SELECT user_id, claim, revoked_at, revoke_reason, redeemed_at FROM coupon_issues WHERE coupon_id = ${couponId} ORDER BY user_id, claim`)) as any).rows as any[])
    .map((r) => ({ ...r, claim: Number(r.claim), revoked_at: msOf(r.revoked_at), redeemed_at: msOf(r.redeemed_at) })) as
    { user_id: string, claim: number, revoked_at: Date | null, revoke_reason: string | null, redeemed_at: Date | null }[]
const streamEntries = async (app: TestApp, couponId: number) => await app.redis.xrange(app.keys.coupon(couponId).events, '-', '+') as [string, string[]][]
const unitReturns = async (app: TestApp, couponId: number) => (await streamEntries(app, couponId)).filter(([, f]) => f[1]!.startsWith('x|'))

/** A campaign whose codes all expire `aheadMs` from now on Redis's clock. */
async function expiringCoupon (app: TestApp, body: Record<string, unknown>, aheadMs: number) {
  const validUntilMs = await redisNow(app) + aheadMs
  const coupon = await createCoupon(app, { returnExpiredToStock: true, validUntil: new Date(validUntilMs).toISOString(), ...body })
  return { ...coupon, validUntilMs }
}
const untilPast = (app: TestApp, ms: number) => waitFor(async () => await redisNow(app) >= ms, { timeoutMs: 30_000, pollIntervalMs: 25, what: `Redis TIME to pass ${new Date(ms).toISOString()}` })
const issuedInTime = async (t: { fail: (message: string) => void }, app: TestApp, validUntilMs: number) => {
  if (await redisNow(app) >= validUntilMs) t.fail('the machine was too slow: the units were not all issued before their validUntil; the test proves nothing this run')
}

t.test('the job returns exactly the expired, unredeemed units; the slot frees; codes answer expired; Postgres gets revoked_at + reason', async (t) => {
  const app = await testApp(t, QUIET)
  const coupon = await expiringCoupon(app, { totalQuantity: 10 }, 4000)
  const users = ['a', 'b', 'c', 'd', 'e', 'f', 'g']
  const units = new Map<string, { code: string }>()
  for (const user of users) units.set(user, await issue(app, coupon.id, user))
  t.equal((await redeem(app, units.get('a')!.code, 'order-a')).statusCode, 201)
  t.equal((await redeem(app, units.get('b')!.code, 'order-b')).statusCode, 201)
  t.equal((await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/c` })).statusCode, 200, 'c cancelled before expiry')
  await issuedInTime(t, app, coupon.validUntilMs)

  t.same(await app.expiryJob.tick(), {}, 'nothing due before validUntil')
  t.equal(await remaining(app, coupon.id), 10 - 6)
  await untilPast(app, coupon.validUntilMs)
  t.same(await app.expiryJob.tick(), { [coupon.id]: 4 }, '7 issued - 2 redeemed - 1 cancelled = 4 returned')
  t.same(await app.expiryJob.tick(), {}, 'a second tick returns nothing more')
  t.equal(await remaining(app, coupon.id), 10 - 2, 'stock +1 per returned unit')

  for (const user of ['d', 'e', 'f', 'g']) {
    const found = await lookup(app, units.get(user)!.code)
    t.equal(found.status, 'expired', `${user}: expired`)
    const r = await redeem(app, units.get(user)!.code, `late-${user}`)
    t.equal(r.statusCode, 409)
    t.equal(r.json().code, 'EXPIRED')
    t.equal((await app.couponStore.holding(coupon.id, user)).units, 0, `${user} holds nothing any more`)
  }
  t.equal((await lookup(app, units.get('a')!.code)).status, 'redeemed', 'a redeemed unit is never returned')
  t.equal((await lookup(app, units.get('c')!.code)).status, 'revoked')
  const again = await issue(app, coupon.id, 'd')
  t.equal(again.claim, 2, 'a returned unit frees the slot, like a cancel: d claims again (claim 2)')
  t.equal((await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'a' } })).json().code, 'ALREADY_ISSUED', 'a keeps its redeemed unit')
  const stats = (await app.inject({ method: 'GET', url: `/admin/coupons/${coupon.id}/stats`, headers: admin })).json()
  t.match(stats, { issued: 8, revoked: 1, returned: 4 })

  await testConsumer(t, app, 'expiry-drain').drain()
  const persisted = await rows(app, coupon.id)
  const reasonOf = (user: string, claim = 1) => persisted.find((r) => r.user_id === user && r.claim === claim)
  for (const user of ['d', 'e', 'f', 'g']) t.match(reasonOf(user), { revoke_reason: 'expired', revoked_at: Date }, `${user}: revoked at expiry`)
  t.match(reasonOf('a'), { revoke_reason: null, revoked_at: null, redeemed_at: Date })
  t.match(reasonOf('c'), { revoke_reason: 'cancelled', revoked_at: Date })
  t.match(reasonOf('d', 2), { revoke_reason: null, revoked_at: null })
  const facts = ((await app.db.execute(sql`SELECT user_id, claim, reason, units, up_to_claim FROM coupon_revocations WHERE coupon_id = ${coupon.id} AND claim IS NOT NULL ORDER BY user_id`)) as any).rows
  t.same(facts.map((f: any) => [f.user_id, f.claim, f.reason, f.units, f.up_to_claim]), [['d', 1, 'expired', 1, null], ['e', 1, 'expired', 1, null], ['f', 1, 'expired', 1, null], ['g', 1, 'expired', 1, null]])
  const report = (await app.inject({ method: 'GET', url: `/admin/coupons/${coupon.id}/consistency`, headers: admin })).json()
  t.equal(report.status, 'consistent', JSON.stringify(report.problems))
})

t.test('one-unit revokes persist idempotently: redelivery, and any order against the issue, a cancel and a rollback', async (t) => {
  const app = await testApp(t, QUIET)
  const coupon = await createCoupon(app, { totalQuantity: 10, perUserLimit: 3 })
  const stream = app.keys.coupon(coupon.id).events
  let seq = 0
  const at = 1_800_000_000_000
  const event = (e: Parameters<typeof encodeEntry>[0]): CouponEvent => {
    const id = `${at + ++seq}-0`
    const decoded = decodeEntry(stream, coupon.id, id, encodeEntry(e))
    if (!isEvent(decoded)) throw new Error(decoded.error)
    return decoded
  }
  // u: claims 1 (returned at expiry), 2 (redeemed, rolled back), 3; then a cancel naming claims up to 3.
  const i1 = event({ type: 'issue', userId: 'u', claim: 1, at: at + 1 })
  const i2 = event({ type: 'issue', userId: 'u', claim: 2, at: at + 2 })
  const d2 = event({ type: 'redeem', userId: 'u', claim: 2, at: at + 3, orderId: 'o' })
  const u2 = event({ type: 'rollback', userId: 'u', claim: 2, at: at + 4, orderId: 'o' })
  const x1 = event({ type: 'revokeUnit', userId: 'u', claim: 1, at: at + 5, reason: 'expired' })
  const i3 = event({ type: 'issue', userId: 'u', claim: 3, at: at + 6 })
  const r3 = event({ type: 'revoke', userId: 'u', units: 2, at: at + 7, upToClaim: 3 })
  const all = [i1, i2, d2, u2, x1, i3, r3]
  t.match(x1, { type: 'revokeUnit', claim: 1, reason: 'expired' }, 'x|u|1|at|expired decodes')
  const orders = [all, [...all].reverse(), [x1, r3, u2, d2, i3, i2, i1], [r3, x1, i1, i2, i3, d2, u2]]
  for (const [n, order] of orders.entries()) {
    await app.db.execute(sql`DELETE FROM coupon_issues WHERE coupon_id = ${coupon.id}`)
    await app.db.execute(sql`DELETE FROM coupon_revocations WHERE coupon_id = ${coupon.id}`)
    await app.db.execute(sql`DELETE FROM coupon_redemptions WHERE coupon_id = ${coupon.id}`)
    const batch = new PersistBatch(app.db)
    // one entry per batch (each its own transaction), then the whole lot again (redelivery)
    for (const e of order) await batch.persist([e], [])
    await batch.persist(order, [])
    const persisted = await rows(app, coupon.id)
    t.same(persisted.map((r) => [r.claim, r.revoke_reason, r.revoked_at?.getTime() ?? null, r.redeemed_at]),
      [[1, 'expired', at + 5, null], [2, 'cancelled', at + 7, null], [3, 'cancelled', at + 7, null]], `order ${n}: claim 1 expired (the cancel came after it), 2 and 3 cancelled`)
    const facts = ((await app.db.execute(sql`SELECT count(*)::int AS n FROM coupon_revocations WHERE coupon_id = ${coupon.id}`)) as any).rows[0].n
    t.equal(facts, 2, 'redelivery inserts no second fact')
  }
})

t.test('50 concurrent redeems racing the job at expiry: every unit redeemed or returned, never both; two instances run the job at once', async (t) => {
  const one = await testApp(t, { ...QUIET, EVENTS_ENABLED: 'true' })
  const two = await testApp(t, { ...QUIET, EVENTS_ENABLED: 'true', DATABASE_URL: one.env.databaseUrl, REDIS_PREFIX: one.env.prefix })
  const coupon = await expiringCoupon(one, { totalQuantity: 60 }, 5000)
  const units = await inParallel(50, 10, async (i) => await issue(one, coupon.id, `user-${i}`))
  await issuedInTime(t, one, coupon.validUntilMs)

  // Redeems spread over the 600 ms around validUntil, the job ticking on both instances meanwhile.
  const start = coupon.validUntilMs - 300
  await waitFor(async () => await redisNow(one) >= start - 50, { timeoutMs: 30_000, pollIntervalMs: 10, what: 'the race window' })
  const race = { on: true }
  const ticks = [one, two].map(async (app) => {
    let returned = 0
    while (race.on) returned += Object.values(await app.expiryJob.tick()).reduce((a, b) => a + b, 0)
    return returned
  })
  const answers = await Promise.all(units.map(async (unit, i) => {
    await new Promise((resolve) => setTimeout(resolve, (i * 12) % 600))
    return await redeem(i % 2 === 0 ? one : two, unit.code, `order-${i}`)
  }))
  await untilPast(one, coupon.validUntilMs)
  race.on = false
  const byTicks = (await Promise.all(ticks)).reduce((a, b) => a + b, 0)
  const final = Object.values(await one.expiryJob.tick()).reduce((a, b) => a + b, 0)

  const redeemed = answers.filter((a) => a.statusCode === 201).length
  const expired = answers.filter((a) => a.statusCode === 409 && a.json().code === 'EXPIRED').length
  t.equal(redeemed + expired, 50, `every redeem answered 201 or 409 EXPIRED (${redeemed} redeemed, ${expired} too late)`)
  t.equal(byTicks + final, 50 - redeemed, 'the job returned exactly the units not redeemed')
  t.equal((await unitReturns(one, coupon.id)).length, 50 - redeemed, 'one return entry per returned unit, whatever instance ran it')
  for (const [i, unit] of units.entries()) {
    const status = (await lookup(one, unit.code)).status
    t.equal(status, answers[i]!.statusCode === 201 ? 'redeemed' : 'expired', `unit ${i}: redeemed xor returned`)
  }
  t.equal(await remaining(one, coupon.id), 60 - redeemed)

  await testConsumer(t, one, 'race-drain', { announceEvents: true }).drain()
  const persisted = await rows(one, coupon.id)
  t.equal(persisted.filter((r) => r.redeemed_at !== null && r.revoked_at !== null).length, 0, 'no row both redeemed and revoked')
  t.equal(persisted.filter((r) => r.revoke_reason === 'expired').length, 50 - redeemed)
  const feed = await waitFor(async () => {
    const items = (await one.inject({ method: 'GET', url: '/admin/events?limit=1000', headers: admin })).json().items as any[]
    return items.filter((e) => e.type === 'code.expired').length >= 50 - redeemed && items
  }, { what: 'every code.expired in the feed' })
  const expiredEvents = feed.filter((e) => e.type === 'code.expired')
  t.equal(expiredEvents.length, 50 - redeemed, 'one code.expired per returned unit')
  t.same(new Set(expiredEvents.map((e) => e.data.code)), new Set(units.filter((_, i) => answers[i]!.statusCode !== 201).map((u) => u.code)), 'each names its code')
})

t.test('a rollback after expiry makes the unit a candidate again; a counter rebuild after returns reproduces stock, holders, codes and candidates', async (t) => {
  const app = await testApp(t, QUIET)
  const coupon = await expiringCoupon(app, { totalQuantity: 5, perUserLimit: 2 }, 3000)
  const a1 = await issue(app, coupon.id, 'a')
  const a2 = await issue(app, coupon.id, 'a')
  const b1 = await issue(app, coupon.id, 'b')
  t.equal((await redeem(app, a1.code, 'order-1')).statusCode, 201)
  await issuedInTime(t, app, coupon.validUntilMs)
  await untilPast(app, coupon.validUntilMs)
  t.same(await app.expiryJob.tick(), { [coupon.id]: 2 }, 'a2 and b1 returned, a1 is redeemed')
  t.equal(await remaining(app, coupon.id), 4)

  // Counters lost while the return entries are unpersisted: rebuilt from Postgres + the stream.
  const k = app.keys.coupon(coupon.id)
  const live = async () => ({
    stock: await app.redis.get(k.stock),
    holders: await app.redis.hgetall(k.holders),
    codes: await app.redis.hgetall(k.codes),
    expiring: await app.redis.zrangebyscore(k.expiring, '-inf', '+inf', 'WITHSCORES')
  })
  const before = await live()
  await app.redis.del(k.meta, k.stock, k.holders, k.claims, k.codes, k.redemptions, k.expiring)
  t.equal(await remaining(app, coupon.id), 4, 'rebuilt from the unpersisted entries')
  t.same(await live(), before, 'the same stock, holders, codes (returned ones marked) and candidates')
  await testConsumer(t, app, 'rebuild-drain').drain()
  await app.redis.del(k.meta, k.stock, k.holders, k.claims, k.codes, k.redemptions, k.expiring)
  t.equal(await remaining(app, coupon.id), 4, 'rebuilt from Postgres')
  t.same(await live(), before, 'again the same')
  t.equal((await lookup(app, a2.code)).status, 'expired')
  t.equal((await lookup(app, b1.code)).status, 'expired')

  // The order of a1 fails after expiry: a1 is active (and expired) again, and the next tick returns it.
  const back = await rollback(app, a1.code, 'order-1')
  t.equal(back.statusCode, 200)
  t.same(await app.expiryJob.tick(), { [coupon.id]: 1 }, 'returned after its rollback')
  t.equal((await lookup(app, a1.code)).status, 'expired')
  t.equal(await remaining(app, coupon.id), 5)
  t.equal((await rollback(app, a1.code, 'order-1')).statusCode, 200, 'the same rollback still replays')
  t.equal((await redeem(app, a1.code, 'order-1')).json().code, 'EXPIRED', 'a returned unit is never redeemed again')
  // A cancel of a after its units were returned takes nothing back.
  t.equal((await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/a` })).json().code, 'ISSUE_NOT_FOUND')
  await testConsumer(t, app, 'rebuild-drain-2').drain()
  const report = (await app.inject({ method: 'GET', url: `/admin/coupons/${coupon.id}/consistency`, headers: admin })).json()
  t.equal(report.status, 'consistent', JSON.stringify(report.problems))
})

t.test('the flag: off returns nothing; PATCH turns it on for units already out; an ended campaign returns nothing; paused still returns', async (t) => {
  const app = await testApp(t, QUIET)
  const validUntilMs = await redisNow(app) + 3000
  const plain = await createCoupon(app, { totalQuantity: 5, validUntil: new Date(validUntilMs).toISOString(), startsAt: new Date(validUntilMs - 60_000).toISOString() })
  const ending = await createCoupon(app, { totalQuantity: 5, validUntil: new Date(validUntilMs).toISOString(), returnExpiredToStock: true, startsAt: new Date(validUntilMs - 60_000).toISOString() })
  t.equal((plain as any).returnExpiredToStock, false, 'shown in the coupon, off by default')
  t.equal((ending as any).returnExpiredToStock, true)
  const p1 = await issue(app, plain.id, 'x')
  await issue(app, ending.id, 'x')
  const ended = await app.inject({ method: 'PATCH', url: `/coupons/${ending.id}`, headers: admin, payload: { endsAt: new Date(Date.now() - 1000).toISOString() } })
  t.equal(ended.statusCode, 200)
  await issuedInTime(t, app, validUntilMs)
  await untilPast(app, validUntilMs)
  t.same(await app.expiryJob.tick(), {}, 'off, or ended: nothing returned')
  t.equal((await app.couponStore.returnExpired(plain.id, 10)).code, ReturnExpiredCode.NOT_ENABLED)
  t.equal((await lookup(app, p1.code)).status, 'expired', 'the code still expires')
  t.equal((await app.couponStore.returnExpired(ending.id, 10)).code, ReturnExpiredCode.ENDED, 'ended: nothing returned')
  t.equal(await remaining(app, ending.id), 4)

  const paused = await app.inject({ method: 'POST', url: `/coupons/${plain.id}/pause`, headers: admin })
  t.equal(paused.statusCode, 200)
  const on = await app.inject({ method: 'PATCH', url: `/coupons/${plain.id}`, headers: admin, payload: { returnExpiredToStock: true } })
  t.equal(on.statusCode, 200)
  t.equal(on.json().returnExpiredToStock, true)
  t.ok(await app.redis.zscore(app.keys.coupon(plain.id).expiring, '#'), 'turning it on rebuilt the candidates at once')
  t.same(await app.expiryJob.tick(), { [plain.id]: 1 }, 'the unit issued before the PATCH is returned, while paused too')
  t.equal(await remaining(app, plain.id), 5)
  const off = await app.inject({ method: 'PATCH', url: `/coupons/${plain.id}`, headers: admin, payload: { returnExpiredToStock: false } })
  t.equal(off.json().returnExpiredToStock, false)
  t.equal(await app.redis.exists(app.keys.coupon(plain.id).expiring), 0, 'off: the candidates are dropped')
  const bad = await app.inject({ method: 'PATCH', url: `/coupons/${plain.id}`, headers: admin, payload: { returnExpiredToStock: 'yes' } })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'INVALID_REQUEST')
})

t.test('code.expired reaches a webhook and the feed once per unit, through the consumer', async (t) => {
  const app = await testApp(t, { EXPIRY_CRON: '', CONSISTENCY_CRON: '', EVENTS_ENABLED: 'true', WEBHOOK_POLL_MS: '20', WEBHOOK_BACKOFF_BASE_MS: '200' })
  const receiver = await startReceiver(t, (n) => n === 1 ? 500 : 200)
  const hook = await app.inject({ method: 'POST', url: '/admin/webhooks', headers: admin, payload: { url: receiver.url, events: ['code.expired'] } })
  t.equal(hook.statusCode, 201)
  const coupon = await expiringCoupon(app, { totalQuantity: 3 }, 3000)
  const unit = await issue(app, coupon.id, 'w')
  await issuedInTime(t, app, coupon.validUntilMs)
  await untilPast(app, coupon.validUntilMs)
  t.same(await app.expiryJob.tick(), { [coupon.id]: 1 })
  await waitFor(async () => receiver.received.some((r) => r.type === 'code.expired' && r.at > 0) && receiver.received.length >= 2, { timeoutMs: 20_000, what: 'code.expired delivered after one failure' })
  const delivered = receiver.received.filter((r) => r.type === 'code.expired')
  t.equal(new Set(delivered.map((r) => r.id)).size, 1, 'one event, retried under the same id')
  t.match(delivered[0]!.json.data, { couponId: coupon.id, userId: 'w', claim: 1, code: unit.code, returnedToStock: true })
  const feed = await waitFor(async () => {
    const items = (await app.inject({ method: 'GET', url: '/admin/events?limit=100', headers: admin })).json().items as any[]
    return items.some((e) => e.type === 'code.expired') && items
  }, { what: 'code.expired in the feed' })
  t.same(feed.filter((e) => e.type === 'code.expired').map((e) => e.id), [delivered[0]!.id], 'the feed has the same event')
  t.equal(feed.filter((e) => e.type === 'issue.revoked').length, 0, 'a return at expiry is not announced as a cancel')
})

t.test('a unit returned at expiry shows revoked in the user\'s holding at once, before the consumer writes the return', async (t) => {
  const app = await testApp(t, QUIET)
  const coupon = await expiringCoupon(app, { totalQuantity: 5, perUserLimit: 2 }, 3000)
  const first = await issue(app, coupon.id, 'h')
  const second = await issue(app, coupon.id, 'h')
  t.equal((await redeem(app, second.code, 'order-h')).statusCode, 201, 'claim 2 redeemed: it stays')
  await issuedInTime(t, app, coupon.validUntilMs)
  await testConsumer(t, app, 'expiry-holding-before').drain() // both rows in Postgres, active
  const holdingNow = async () => (await app.inject({ method: 'GET', url: `/coupons/${coupon.id}/issues/h` })).json()
  t.same((await holdingNow()).issues.map((i: any) => [i.claim, i.revokedAt]), [[1, null], [2, null]], 'before expiry: both active')

  await untilPast(app, coupon.validUntilMs)
  t.same(await app.expiryJob.tick(), { [coupon.id]: 1 }, 'claim 1 returned; nothing persisted it yet')
  t.equal((await rows(app, coupon.id)).find((r) => r.claim === 1)!.revoked_at, null, 'Postgres still says active')
  const shown = await holdingNow()
  t.equal(shown.units, 1)
  const claim1 = shown.issues.find((i: any) => i.claim === 1)
  t.type(claim1.revokedAt, 'string', 'claim 1 shows the return already')
  t.equal(shown.issues.find((i: any) => i.claim === 2).revokedAt, null, 'the redeemed claim stays active')
  const mine = (await app.inject({ method: 'GET', url: '/users/h/coupons' })).json().coupons.find((c: any) => c.couponId === coupon.id)
  t.same(mine.issues.map((i: any) => [i.claim, i.revokedAt]), [[1, claim1.revokedAt], [2, null]], 'GET /users/:userId/coupons says the same')

  await testConsumer(t, app, 'expiry-holding-after').drain()
  t.equal((await rows(app, coupon.id)).find((r) => r.claim === 1)!.revoked_at?.toISOString(), claim1.revokedAt, 'the moment Postgres then records is the one shown')
  t.equal(first.claim, 1)
})
