// Redeemable codes (issue 11): every issued unit gets a code in the 201, computed inside issue.lua from
// the coupon's secret, the user and the claim; Node computes the same characters (consumer, rebuild),
// the secret never leaves the service, and a counter rebuild brings every code back.
import t from 'tap'
import { sql } from 'drizzle-orm'
import { findCoupon } from '../src/db/queries/coupons.js'
import { ALPHABET, codeMac, codeOf, codeTail, parseCode } from '../src/issuing/codes.js'
import { admin, createCoupon, testApp, testConsumer, type TestApp } from './helpers/env.js'

const issue = (app: TestApp, couponId: number, userId: string, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url: `/coupons/${couponId}/issues`, headers, payload: { userId } })
const CROCKFORD = /^[0-9A-HJKMNP-TV-Z]+$/

t.test('codeTail and parseCode: the coupon id read back from the end of any code', async (t) => {
  for (const id of [1, 31, 32, 1023, 1024, 123456789, Number.MAX_SAFE_INTEGER]) {
    const code = 'SUMMER-' + 'A'.repeat(12) + codeTail(id)
    t.same(parseCode(code), { couponId: id, head: 'SUMMER-' + 'A'.repeat(12) }, `coupon ${id}`)
    t.same(parseCode(code.toLowerCase()), { couponId: id, head: 'SUMMER-' + 'A'.repeat(12) }, 'case-insensitive')
  }
  t.equal(codeTail(1), '11')
  t.equal(codeTail(32), '102')
  for (const bad of ['', 'short', 'A'.repeat(200), 'AAAAAAAAAAAAA' + '0', 'AAAAAAAAAAAAA11'.replace('1', 'I'), 'AAAAAAAAAAAAA' + '011'.slice(1) + '2'.replace('2', 'Z'),
    'AAAAAAAAAAAA' + '01' + '2', 'AAAAAAAAAAAAAAÄ11', 'AAAAAAAAAAAA/11', 'A'.repeat(12) + 'ZZZZZZZZZZZZ' + 'C', 'A'.repeat(12) + 'Z'.repeat(11) + 'B']) {
    t.equal(parseCode(bad), null, `refused: ${JSON.stringify(bad)}`)
  }
  t.equal(codeMac('s', 'u', 1, 32).length, 32)
  t.match(codeMac('s', 'u', 1, 12), CROCKFORD)
  t.equal(ALPHABET.length, 32)
})

t.test('the 201 carries the code; Lua and Node agree; the consumer persists it; the secret is never shown', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const plain = await createCoupon(app, { totalQuantity: 10, perUserLimit: 2 })
  const branded = await createCoupon(app, { totalQuantity: 10, codes: { prefix: 'SUMMER-', length: 20 } })
  t.same((plain as any).codes, { prefix: '', length: 12 }, 'the default')
  t.same((branded as any).codes, { prefix: 'SUMMER-', length: 20 })
  for (const body of [await app.inject({ method: 'GET', url: `/coupons/${plain.id}` }), await app.inject({ method: 'GET', url: '/coupons', headers: admin })]) {
    t.notMatch(body.body, /secret/i, 'no route shows the code secret')
  }

  const rows = { plain: (await findCoupon(app.db, plain.id))!, branded: (await findCoupon(app.db, branded.id))! }
  t.match(rows.plain.codeSecret, /^[0-9a-f]{64}$/, '32 random bytes')
  t.not(rows.plain.codeSecret, rows.branded.codeSecret)

  const first = (await issue(app, plain.id, 'alice')).json()
  const second = (await issue(app, plain.id, 'alice')).json()
  const other = (await issue(app, branded.id, 'alice')).json()
  t.equal(first.code, codeOf({ couponId: plain.id, ...rows.plain }, 'alice', 1), 'issue.lua and codes.ts give the same code')
  t.equal(second.code, codeOf({ couponId: plain.id, ...rows.plain }, 'alice', 2), 'one code per unit')
  t.not(first.code, second.code)
  t.match(first.code, CROCKFORD)
  t.equal(first.code.length, 12 + codeTail(plain.id).length, '12 unguessable characters and the coupon id')
  t.match(other.code, /^SUMMER-[0-9A-HJKMNP-TV-Z]{20}/)
  t.equal(other.code, codeOf({ couponId: branded.id, ...rows.branded }, 'alice', 1))

  const replayed = await issue(app, branded.id, 'bob', { 'idempotency-key': 'k1' })
  const again = await issue(app, branded.id, 'bob', { 'idempotency-key': 'k1' })
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.equal(again.json().code, replayed.json().code, 'a replay carries the same code')

  await testConsumer(t, app, 'codes-drain').drain()
  const persisted = await app.db.execute(sql`SELECT user_id, claim, code FROM coupon_issues WHERE coupon_id = ${plain.id} ORDER BY claim`)
  t.same((persisted as any).rows.map((r: any) => r.code), [first.code, second.code], 'the consumer wrote the same codes')
})

t.test('codes settings are validated', async (t) => {
  const app = await testApp(t)
  for (const codes of [{ prefix: 'bad lower' }, { prefix: 'WAY-TOO-LONG-PREFIX' }, { prefix: 'A|B' }, { prefix: '' }, { length: 11 }, { length: 33 }, { length: 12.5 }, { other: 1 }, 'x']) {
    const r = await app.inject({ method: 'POST', url: '/coupons', headers: admin, payload: { name: 'c', totalQuantity: 1, codes } })
    t.equal(r.statusCode, 400, JSON.stringify(codes))
    t.equal(r.json().code, 'INVALID_REQUEST')
  }
})

t.test('a mac already taken skips to the next claim number: codes stay unique and follow from the unit', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const row = (await findCoupon(app.db, coupon.id))!
  const k = app.keys.coupon(coupon.id)
  // Pretend another unit already owns the mac carol's first claim would get.
  await app.redis.hset(k.codes, codeMac(row.codeSecret, 'carol', 1, 12), 'someone|1')
  const issued = (await issue(app, coupon.id, 'carol')).json()
  t.equal(issued.claim, 2, 'claim 1 skipped')
  t.equal(issued.code, codeOf({ couponId: coupon.id, ...row }, 'carol', 2))
  t.equal(await app.redis.hget(k.codes, codeMac(row.codeSecret, 'carol', 2, 12)), 'carol|2')
})

t.test('a counter rebuild brings every code back, revoked ones too; counters from before codes get the settings', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const row = (await findCoupon(app.db, coupon.id))!
  const k = app.keys.coupon(coupon.id)
  const codes = new Map<string, string>()
  for (const u of ['a', 'b', 'c']) codes.set(u, (await issue(app, coupon.id, u)).json().code)
  await testConsumer(t, app, 'codes-drain').drain() // a, b, c persisted
  t.equal((await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/b` })).statusCode, 200)
  codes.set('d', (await issue(app, coupon.id, 'd')).json().code) // d only in the stream
  const before = await app.redis.hgetall(k.codes)

  await app.redis.del(k.meta, k.stock, k.holders, k.claims, k.codes)
  const e = (await issue(app, coupon.id, 'e')).json() // rebuilds first
  t.equal(e.code, codeOf({ couponId: coupon.id, ...row }, 'e', 1))
  const after = await app.redis.hgetall(k.codes)
  t.same(after, { ...before, [codeMac(row.codeSecret, 'e', 1, 12)]: 'e|1' }, 'the same codes hash, plus e')

  // Counters installed before codes existed: no codeSecret in meta, no codes hash. The next issue
  // asks for a rebuild, which completes them and keeps the live counters.
  await app.redis.hdel(k.meta, 'codeSecret', 'codePrefix', 'codeLength', 'codeTail')
  await app.redis.del(k.codes)
  const f = (await issue(app, coupon.id, 'f')).json()
  t.equal(f.code, codeOf({ couponId: coupon.id, ...row }, 'f', 1))
  t.equal(await app.redis.get(k.stock), '5', 'stock kept: 10 - a, c, d, e, f')
  t.equal(await app.redis.hlen(k.codes), 7, "six units' codes and the marker")
})
