// Redeemable codes (issue 11): every issued unit gets a code in the 201, computed inside issue.lua from
// the coupon's secret, the user and the claim; Node computes the same characters (consumer, rebuild),
// the secret never leaves the service, and a counter rebuild brings every code back.
import { createHash } from 'node:crypto'
import t from 'tap'
import { sql } from 'drizzle-orm'
import { findCoupon } from '../src/db/queries/coupons.js'
import { readFileSync } from 'node:fs'
import { ALPHABET, codeField, codeMac, codeOf, codeTail, fieldOfMac, macOfField, parseCode } from '../src/issuing/codes.js'
import { parseValidFor } from '../src/issuing/validity.js'
import { PersistBatch } from '../src/persistence/persist-batch.js'
import { decodeEntry, isEvent } from '../src/stream/events.js'
import { admin, createCoupon, testApp, testConsumer, waitFor, type TestApp } from './helpers/env.js'

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

t.test('a mac and its field carry the same bits, in Node and in Lua, for every length', async (t) => {
  // The characters as codes were always written: 20 bits (5 hex digits) at a time, 4 characters each.
  const writtenBefore = (secret: string, userId: string, claim: number, length: number) => {
    const hex = createHash('sha1').update(`${secret}:${userId}:${claim}`).digest('hex')
    let out = ''
    for (let group = 0; out.length < length; group++) {
      const value = parseInt(hex.slice(group * 5, group * 5 + 5), 16)
      for (let shift = 15; shift >= 0 && out.length < length; shift -= 5) out += ALPHABET[(value >> shift) & 31]
    }
    return out
  }
  const cases: Array<[string, string, number, number]> = []
  for (let length = 12; length <= 32; length++) for (let i = 0; i < 20; i++) cases.push([`secret-${length}`, `user-${i}`, i % 3 + 1, length])
  let mismatches = 0
  for (const [secret, userId, claim, length] of cases) {
    const mac = codeMac(secret, userId, claim, length)
    const field = codeField(secret, userId, claim, length)
    if (mac !== writtenBefore(secret, userId, claim, length) || macOfField(field) !== mac || fieldOfMac(mac) !== field) mismatches++
  }
  t.equal(mismatches, 0, `${cases.length} units of every length 12..32: the same characters as before, and mac <-> field both ways`)
  t.equal(fieldOfMac('0123456789ABCDEFGHJKMNPQRSTVWXYZ'.replace('Z', 'I')), null, 'a character outside the alphabet')

  // The same functions in Lua, as the scripts inline them.
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const lua = readFileSync(new URL('../src/redis/scripts/includes/codes.lua', import.meta.url), 'utf8') + `
    local out = {}
    for i = 1, #ARGV, 4 do
      local field = codeField(ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]))
      out[#out + 1] = field .. ' ' .. (fieldOfMac(ARGV[i + 3] == '12' and 'I' or '') or 'nil')
    end
    return out`
  const fields = await app.redis.eval(lua, 0, ...cases.flat()) as string[]
  t.same(fields, cases.map(([secret, userId, claim, length]) => `${codeField(secret, userId, claim, length)} ${length === 12 ? 'nil' : ''}`), 'codeField in Lua = in Node')
  const macs = cases.map(([secret, userId, claim, length]) => codeMac(secret, userId, claim, length))
  const back = await app.redis.eval(readFileSync(new URL('../src/redis/scripts/includes/codes.lua', import.meta.url), 'utf8') + `
    local out = {}
    for i = 1, #ARGV do out[i] = fieldOfMac(ARGV[i]) end
    return out`, 0, ...macs) as string[]
  t.same(back, macs.map((mac) => fieldOfMac(mac)), 'fieldOfMac in Lua = in Node')
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
  const longest = await createCoupon(app, { totalQuantity: 1, codes: { length: 32 } })
  const long = (await issue(app, longest.id, 'alice')).json()
  t.equal(long.code, codeOf({ couponId: longest.id, ...(await findCoupon(app.db, longest.id))! }, 'alice', 1), 'all 160 bits of the sha1: Lua and Node agree')
  t.equal(long.code.length, 32 + codeTail(longest.id).length)

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
  await app.redis.hset(k.codes, codeField(row.codeSecret, 'carol', 1, 12), 'someone|1')
  const issued = (await issue(app, coupon.id, 'carol')).json()
  t.equal(issued.claim, 2, 'claim 1 skipped')
  t.equal(issued.code, codeOf({ couponId: coupon.id, ...row }, 'carol', 2))
  t.equal(await app.redis.hget(k.codes, codeField(row.codeSecret, 'carol', 2, 12)), `carol|2|${Date.parse(issued.issuedAt)}`)
})

t.test('four taken macs in a row: CODE_EXHAUSTED changes nothing (each HSETNX that found its field wrote nothing)', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const row = (await findCoupon(app.db, coupon.id))!
  const k = app.keys.coupon(coupon.id)
  for (const claim of [1, 2, 3, 4]) await app.redis.hset(k.codes, codeField(row.codeSecret, 'zoe', claim, 12), `someone|${claim}|1`)
  const before = await app.redis.hgetall(k.codes)
  const r = await issue(app, coupon.id, 'zoe')
  t.equal(r.statusCode, 503)
  t.equal(r.json().code, 'ISSUE_SCRIPT_FAILED')
  t.same(await app.redis.hgetall(k.codes), before, 'no field written or overwritten')
  t.equal(await app.redis.get(k.stock), '5', 'no unit taken')
  t.equal(await app.redis.xlen(k.events), 0, 'no event')
  t.equal(await app.redis.hget(k.claims, 'zoe'), null, 'no claim number used')
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
  t.same(after, { ...before, [codeField(row.codeSecret, 'e', 1, 12)]: `e|1|${Date.parse(e.issuedAt)}` }, 'the same codes hash, plus e')

  // Counters installed before codes existed: no codeSecret in meta, no codes hash. The next issue
  // asks for a rebuild, which completes them and keeps the live counters.
  await app.redis.hdel(k.meta, 'codeSecret', 'codePrefix', 'codeLength', 'codeTail')
  await app.redis.del(k.codes)
  const f = (await issue(app, coupon.id, 'f')).json()
  t.equal(f.code, codeOf({ couponId: coupon.id, ...row }, 'f', 1))
  t.equal(await app.redis.get(k.stock), '5', 'stock kept: 10 - a, c, d, e, f')
  t.equal(await app.redis.hlen(k.codes), 7, "six units' codes and the marker")
})

const redeem = (app: TestApp, code: string, orderId: unknown, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url: `/codes/${encodeURIComponent(code)}/redemptions`, headers, payload: { orderId } })
const rollback = (app: TestApp, code: string, orderId: string, headers: Record<string, string> = {}) =>
  app.inject({ method: 'DELETE', url: `/codes/${encodeURIComponent(code)}/redemptions/${encodeURIComponent(orderId)}`, headers })
const lookup = (app: TestApp, code: string, headers: Record<string, string> = {}) =>
  app.inject({ method: 'GET', url: `/codes/${encodeURIComponent(code)}`, headers })

t.test('the codes hash lost alone: issuing goes on, the first reader rebuilds it, every code is found', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const k = app.keys.coupon(coupon.id)
  const dField = codeField((await findCoupon(app.db, coupon.id))!.codeSecret, 'd', 1, 12)
  const codes = new Map<string, string>()
  for (const u of ['a', 'b']) codes.set(u, (await issue(app, coupon.id, u)).json().code)
  await testConsumer(t, app, 'codes-lost-drain').drain() // a and b only in Postgres
  codes.set('c', (await issue(app, coupon.id, 'c')).json().code) // c only in the stream
  const before = await app.redis.hgetall(k.codes)

  await app.redis.del(k.codes)
  // issue.lua adds its unit without looking for the marker (HSETNX is its collision check)...
  const d = await issue(app, coupon.id, 'd')
  t.equal(d.statusCode, 201, 'the issue is not held up by the lost hash')
  codes.set('d', d.json().code)
  t.same(Object.keys(await app.redis.hgetall(k.codes)), [dField], 'only d is there, no marker')
  // ...and every reader waits for the rebuild, which keeps d and brings back a, b and c.
  for (const [user, code] of codes) t.match((await lookup(app, code)).json(), { userId: user, status: 'active' }, `${user}'s code found`)
  t.same(await app.redis.hgetall(k.codes), { ...before, [dField]: `d|1|${Date.parse(d.json().issuedAt)}` }, 'the hash as before, plus d')
  t.equal(await app.redis.get(k.stock), '6', 'the stock untouched by the rebuild')
})

t.test('checkout: look up, redeem exactly once, replay, roll back, redeem again; paused still redeemable', async (t) => {
  const app = await testApp(t, { API_KEYS: 'shop-key-0123456789' })
  const shop = { authorization: 'Bearer shop-key-0123456789' }
  const coupon = await createCoupon(app, { totalQuantity: 5, discount: { type: 'percent', value: 15 }, metadata: { campaign: 'summer' } })
  const issued = (await issue(app, coupon.id, 'alice', shop)).json()

  t.equal((await lookup(app, issued.code)).statusCode, 401, 'shop auth like the other shop routes')
  const fresh = await lookup(app, issued.code.toLowerCase(), shop)
  t.equal(fresh.statusCode, 200)
  t.same(fresh.json(), {
    code: issued.code,
    couponId: coupon.id,
    userId: 'alice',
    claim: 1,
    status: 'active',
    issuedAt: issued.issuedAt,
    expiresAt: null,
    redeemedAt: null,
    orderId: null,
    discount: { type: 'percent', value: 15 },
    metadata: { campaign: 'summer' }
  })

  await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/pause`, headers: admin })
  const first = await redeem(app, issued.code, 'order-1', shop)
  t.equal(first.statusCode, 201, 'a paused campaign is still redeemable')
  t.same(Object.keys(first.json()).sort(), ['code', 'discount', 'metadata', 'orderId', 'redeemedAt'])
  t.equal(first.json().discount.value, 15)
  const replay = await redeem(app, issued.code, 'order-1', shop)
  t.equal(replay.statusCode, 201)
  t.equal(replay.headers['idempotent-replayed'], 'true')
  t.equal(replay.json().redeemedAt, first.json().redeemedAt, 'the replay is the first answer')
  const other = await redeem(app, issued.code, 'order-2', shop)
  t.equal(other.statusCode, 409)
  t.equal(other.json().code, 'ALREADY_REDEEMED')
  const seen = (await lookup(app, issued.code, shop)).json()
  t.match(seen, { status: 'redeemed', orderId: 'order-1', redeemedAt: first.json().redeemedAt })

  const wrongOrder = await rollback(app, issued.code, 'order-2', shop)
  t.equal(wrongOrder.statusCode, 409)
  t.equal(wrongOrder.json().code, 'NOT_REDEEMED_BY_ORDER')
  const undone = await rollback(app, issued.code, 'order-1', shop)
  t.equal(undone.statusCode, 200)
  t.equal(undone.json().orderId, 'order-1')
  const undoneAgain = await rollback(app, issued.code, 'order-1', shop)
  t.equal(undoneAgain.statusCode, 200, 'a repeated rollback replays')
  t.equal(undoneAgain.json().rolledBackAt, undone.json().rolledBackAt)
  t.match((await lookup(app, issued.code, shop)).json(), { status: 'active', orderId: null, redeemedAt: null })
  t.equal((await app.inject({ method: 'GET', url: `/coupons/${coupon.id}`, headers: shop })).json().remaining, 4, 'a rollback gives nothing back to stock')
  t.equal((await redeem(app, issued.code, 'order-2', shop)).statusCode, 201, 'another order may redeem it now')
  t.equal((await rollback(app, issued.code, 'order-1', shop)).json().code, 'NOT_REDEEMED_BY_ORDER', 'the old order holds nothing any more')
})

t.test('every unknown or malformed code gets the same 404; hostile order ids get 400', async (t) => {
  const app = await testApp(t)
  const coupon = await createCoupon(app, { totalQuantity: 5, codes: { prefix: 'XMAS-' } })
  const issued = (await issue(app, coupon.id, 'bob')).json()
  const code: string = issued.code
  const mac = code.slice(5, 17)
  const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'A' ? 'B' : 'A') + s.slice(i + 1)
  const unknown = [
    flip(code, 8), // one character of the mac
    'XMAS-' + mac + codeTail(coupon.id + 1000), // a coupon that does not exist
    'XMAS-' + mac + codeTail(coupon.id + 1), // well-formed, for a coupon id with nothing issued
    'YMAS-' + mac + codeTail(coupon.id), // the wrong prefix
    mac + codeTail(coupon.id), // no prefix
    'XMAS-' + mac.slice(1) + codeTail(coupon.id), // too short
    'XMAS-' + mac + 'A' + codeTail(coupon.id), // too long
    'x', '', ' ', 'A'.repeat(60), 'XMAS-' + mac + '%00', '../../coupons', "' OR 1=1 --", 'ÄÖÜ', 'XMAS-' + mac + codeTail(coupon.id) + '|d'
  ]
  const bodies = new Set<string>()
  for (const c of unknown) {
    for (const r of [await lookup(app, c), await redeem(app, c, 'o-1'), await rollback(app, c, 'o-1')]) {
      if (c === '' && r.statusCode !== 404) continue // '/codes/' is another route (404 of the router or 400)
      t.equal(r.statusCode, 404, `${JSON.stringify(c)}: ${r.statusCode} ${r.body}`)
      bodies.add(r.json().code + r.json().message)
    }
  }
  t.same([...bodies], ['CODE_NOT_FOUNDNo such code. Check the spelling (letters and digits; I, L, O and U are never used).'], 'one answer for all')
  for (const orderId of ['', 'a|b', 'x'.repeat(129), 42, null, 'ä', 'a b']) {
    const r = await redeem(app, code, orderId)
    t.equal(r.statusCode, 400, `orderId ${JSON.stringify(orderId)}`)
    t.equal(r.json().code, 'INVALID_REQUEST')
  }
  t.equal((await rollback(app, code, 'a|b')).json().code, 'INVALID_REQUEST')
  t.equal((await lookup(app, code)).json().status, 'active', 'nothing happened to the real code')
})

t.test('50 concurrent redemptions of one code with different orders: exactly one wins', async (t) => {
  const app = await testApp(t)
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const { code } = (await issue(app, coupon.id, 'carol')).json()
  const answers = await Promise.all(Array.from({ length: 50 }, (_, i) => redeem(app, code, `order-${i}`)))
  const won = answers.filter((r) => r.statusCode === 201)
  t.equal(won.length, 1, 'one 201')
  t.equal(answers.filter((r) => r.statusCode === 409 && r.json().code === 'ALREADY_REDEEMED').length, 49, 'the rest ALREADY_REDEEMED')
  t.equal((await lookup(app, code)).json().orderId, won[0]!.json().orderId)
})

t.test('a redeemed unit blocks an unforced cancel; force is admin-only; a revoked code cannot be redeemed', async (t) => {
  const app = await testApp(t, { API_KEYS: 'shop-key-0123456789' })
  const shop = { authorization: 'Bearer shop-key-0123456789' }
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const { code } = (await issue(app, coupon.id, 'dave', shop)).json()
  t.equal((await redeem(app, code, 'o-1', shop)).statusCode, 201)
  const cancel = (query = '', headers = shop) => app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/dave${query}`, headers })
  const refused = await cancel()
  t.equal(refused.statusCode, 409)
  t.equal(refused.json().code, 'ALREADY_REDEEMED')
  t.equal((await cancel('?force=true')).json().code, 'FORBIDDEN', 'a shop key cannot force')
  t.equal((await cancel('?force=yes')).json().code, 'INVALID_REQUEST')
  t.equal((await lookup(app, code, shop)).json().status, 'redeemed', 'nothing changed')

  // After the order's rollback an unforced cancel goes through.
  const { code: second } = (await issue(app, coupon.id, 'erin', shop)).json()
  await redeem(app, second, 'o-2', shop)
  await rollback(app, second, 'o-2', shop)
  t.equal((await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/erin`, headers: shop })).statusCode, 200)

  const forced = await cancel('?force=true', admin)
  t.equal(forced.statusCode, 200)
  t.equal(forced.json().units, 1)
  t.match((await lookup(app, code, shop)).json(), { status: 'revoked', orderId: 'o-1' })
  t.equal((await redeem(app, code, 'o-1', shop)).json().code, 'REVOKED')
  t.equal((await redeem(app, code, 'o-9', shop)).json().code, 'REVOKED')
  t.equal((await rollback(app, code, 'o-1', shop)).json().code, 'REVOKED')
  t.equal((await app.inject({ method: 'GET', url: `/coupons/${coupon.id}`, headers: shop })).json().remaining, 5, 'both units back in stock')

  // The user claims again: a new unit, a new code, redeemable; the count of redeemed units started over.
  const { code: third } = (await issue(app, coupon.id, 'dave', shop)).json()
  t.not(third, code)
  t.equal((await redeem(app, third, 'o-3', shop)).statusCode, 201)
  t.equal((await cancel()).json().code, 'ALREADY_REDEEMED')
})

t.test('redeem racing an unforced cancel: exactly one of them happens', async (t) => {
  const app = await testApp(t)
  const coupon = await createCoupon(app, { totalQuantity: 100 })
  for (let i = 0; i < 40; i++) {
    const userId = `racer-${i}`
    const { code } = (await issue(app, coupon.id, userId)).json()
    const [r, c] = await Promise.all([redeem(app, code, `o-${i}`), app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/${userId}` })])
    const outcome = `${r.statusCode}/${c.statusCode}`
    if (r.statusCode === 201) {
      t.same([c.statusCode, c.json().code], [409, 'ALREADY_REDEEMED'], `redeemed first, cancel refused (${outcome})`)
      t.equal((await lookup(app, code)).json().status, 'redeemed')
    } else {
      t.same([r.statusCode, r.json().code, c.statusCode], [409, 'REVOKED', 200], `cancelled first, redemption refused (${outcome})`)
      t.equal((await lookup(app, code)).json().status, 'revoked')
    }
  }
})

const rowsOf = async (app: TestApp, couponId: number) => ((await app.db.execute(sql`
  SELECT user_id, claim, code, order_id, round(extract(epoch FROM redeemed_at) * 1000)::float8 AS redeemed_ms FROM coupon_issues WHERE coupon_id = ${couponId} ORDER BY user_id, claim`)) as any).rows
const factsOf = async (app: TestApp, couponId: number) => ((await app.db.execute(sql`
  SELECT user_id, claim, kind, order_id FROM coupon_redemptions WHERE coupon_id = ${couponId} ORDER BY split_part(stream_id, '-', 1)::bigint, split_part(stream_id, '-', 2)::bigint`)) as any).rows

t.test('redemptions reach Postgres through the stream: facts kept, the last one wins, in any batch order and under redelivery', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const k = app.keys.coupon(coupon.id)
  const a = (await issue(app, coupon.id, 'a')).json()
  const b = (await issue(app, coupon.id, 'b')).json()
  await redeem(app, a.code, 'o-1')
  await rollback(app, a.code, 'o-1')
  const last = (await redeem(app, a.code, 'o-2')).json()
  await redeem(app, b.code, 'o-3')
  await rollback(app, b.code, 'o-3')

  const entries = await app.redis.xrange(k.events, '-', '+')
  const events = entries.map(([id, fields]) => decodeEntry(k.events, coupon.id, id, fields)).filter(isEvent)
  t.same(events.map((e) => e.type), ['issue', 'issue', 'redeem', 'rollback', 'redeem', 'redeem', 'rollback'], 'd and u entries on the same stream')

  // Backwards, one event per batch: every redemption fact arrives before its issue row exists.
  const persister = new PersistBatch(app.db)
  for (const event of [...events].reverse()) await persister.persist([event], [])
  const expected = [
    { user_id: 'a', claim: 1, code: a.code, order_id: 'o-2', redeemed_ms: Date.parse(last.redeemedAt) },
    { user_id: 'b', claim: 1, code: b.code, order_id: null, redeemed_ms: null }
  ]
  t.same(await rowsOf(app, coupon.id), expected, 'the last fact of each unit, whatever the order')
  t.same((await factsOf(app, coupon.id)).map((f: any) => `${f.user_id}:${f.kind}:${f.order_id}`), ['a:redeem:o-1', 'a:rollback:o-1', 'a:redeem:o-2', 'b:redeem:o-3', 'b:rollback:o-3'], 'the history')

  // Redelivered: the whole stream again through the real consumer, then shuffled batches.
  await testConsumer(t, app, 'codes-drain').drain()
  await persister.persist([events[4]!, events[2]!], [])
  await persister.persist([events[3]!, events[6]!, events[5]!], [])
  t.same(await rowsOf(app, coupon.id), expected, 'redelivery changes nothing')
  t.equal((await factsOf(app, coupon.id)).length, 5, 'no fact twice')
})

t.test('redemptions survive a counter rebuild: from unpersisted entries, and from Postgres after a full wipe', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const k = app.keys.coupon(coupon.id)
  const a = (await issue(app, coupon.id, 'a')).json()
  const b = (await issue(app, coupon.id, 'b')).json()
  const c = (await issue(app, coupon.id, 'c')).json()
  const first = (await redeem(app, a.code, 'o-1')).json()
  await redeem(app, b.code, 'o-2')
  await rollback(app, b.code, 'o-2')
  await redeem(app, c.code, 'o-3')
  t.equal((await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/c?force=true`, headers: admin })).statusCode, 200)

  const check = async (when: string) => {
    t.match((await lookup(app, a.code)).json(), { status: 'redeemed', orderId: 'o-1', redeemedAt: first.redeemedAt }, `${when}: a redeemed`)
    t.match((await lookup(app, b.code)).json(), { status: 'active', orderId: null }, `${when}: b rolled back`)
    t.match((await lookup(app, c.code)).json(), { status: 'revoked' }, `${when}: c revoked`)
    const replay = await redeem(app, a.code, 'o-1')
    t.same([replay.statusCode, replay.json().redeemedAt, replay.headers['idempotent-replayed']], [201, first.redeemedAt, 'true'], `${when}: the replay`)
    t.equal((await redeem(app, a.code, 'o-9')).json().code, 'ALREADY_REDEEMED', `${when}: another order`)
    t.equal((await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/a` })).json().code, 'ALREADY_REDEEMED', `${when}: a cancel of a still refused`)
    t.equal((await rollback(app, b.code, 'o-2')).statusCode, 200, `${when}: b's rollback replays`)
    t.equal((await app.inject({ method: 'GET', url: `/coupons/${coupon.id}` })).json().remaining, 3, `${when}: stock`)
  }
  await check('live')

  // Counters lost, the stream kept (nothing persisted yet): rebuilt from the entries.
  await app.redis.del(k.meta, k.stock, k.holders, k.claims, k.codes, k.redemptions, k.revoked, k.idempotency)
  await check('rebuilt from the stream')

  // Everything persisted, then every key of the coupon gone, the stream too: rebuilt from Postgres.
  await testConsumer(t, app, 'codes-drain').drain()
  await app.redis.del(k.meta, k.stock, k.holders, k.claims, k.codes, k.redemptions, k.revoked, k.idempotency, k.events)
  await check('rebuilt from Postgres')

  // Only the redemptions hash lost (evicted): the partial rebuild completes it, counters untouched.
  await app.redis.del(k.redemptions)
  await check('redemptions hash rebuilt alone')
})

t.test('validFor is parsed strictly', async (t) => {
  t.equal(parseValidFor('P7D'), 7 * 86_400_000)
  t.equal(parseValidFor('PT30M'), 30 * 60_000)
  t.equal(parseValidFor('P1DT12H'), 36 * 3_600_000)
  t.equal(parseValidFor('P2W'), 14 * 86_400_000)
  t.equal(parseValidFor('PT90S'), 90_000)
  for (const bad of ['', 'P', 'PT', 'P1DT', '7D', 'p7d', 'P1Y', 'P1M', 'P1W2D', 'P7.5D', '-P1D', 'PT59S', 'P0D', 'P3651D', 'P99999W', 'P1D ', 'PT1H1H']) {
    t.equal(parseValidFor(bad), null, JSON.stringify(bad))
  }
})

t.test('expiry: expiresAt in the 201 and GET /codes; after it status expired and EXPIRED on redeem; a redemption in time stands', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  for (const body of [{ validFor: 'P1M' }, { validFor: '7 days' }, { validFor: 'PT10S' }, { validFor: 'P7D', validUntil: new Date(Date.now() + 60_000).toISOString() }, { validUntil: 'tomorrow' }]) {
    const r = await app.inject({ method: 'POST', url: '/coupons', headers: admin, payload: { name: 'c', totalQuantity: 1, ...body } })
    t.same([r.statusCode, r.json().code], [400, 'INVALID_REQUEST'], JSON.stringify(body))
  }

  const week = await createCoupon(app, { totalQuantity: 5, validFor: 'P7D' })
  t.equal((week as any).validFor, 'P7D')
  const w = (await issue(app, week.id, 'w')).json()
  t.equal(Date.parse(w.expiresAt), Date.parse(w.issuedAt) + 7 * 86_400_000, 'issuedAt + validFor')
  t.equal((await lookup(app, w.code)).json().expiresAt, w.expiresAt)
  const forever = await createCoupon(app, { totalQuantity: 5 })
  const f = (await issue(app, forever.id, 'f')).json()
  t.equal(f.expiresAt, null)

  const until = new Date(Date.now() + 1500)
  const soon = await createCoupon(app, { totalQuantity: 5, validUntil: until.toISOString() })
  const kept = (await issue(app, soon.id, 'kept')).json()
  const late = (await issue(app, soon.id, 'late')).json()
  t.equal(kept.expiresAt, until.toISOString(), 'validUntil: one moment for every unit')
  const inTime = await redeem(app, kept.code, 'o-1')
  t.equal(inTime.statusCode, 201)
  await waitFor(async () => (await lookup(app, late.code)).json().status === 'expired', { what: 'the late code to expire' })
  const refused = await redeem(app, late.code, 'o-2')
  t.same([refused.statusCode, refused.json().code], [409, 'EXPIRED'])
  const replay = await redeem(app, kept.code, 'o-1')
  t.same([replay.statusCode, replay.json().redeemedAt], [201, inTime.json().redeemedAt], 'the redemption made in time replays')
  t.equal((await lookup(app, kept.code)).json().status, 'redeemed')

  // The validity survives a counter rebuild.
  const k = app.keys.coupon(soon.id)
  await app.redis.del(k.meta, k.stock)
  t.match((await lookup(app, late.code)).json(), { status: 'expired', expiresAt: until.toISOString() })
  t.equal((await redeem(app, late.code, 'o-3')).json().code, 'EXPIRED')
})

t.test('the consistency report calls redeemed and rolled-back units consistent, persisted or not', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const report = async () => (await app.inject({ method: 'GET', url: `/admin/coupons/${coupon.id}/consistency`, headers: admin })).json()
  const a = (await issue(app, coupon.id, 'a')).json()
  const b = (await issue(app, coupon.id, 'b')).json()
  await redeem(app, a.code, 'o-1')
  await redeem(app, b.code, 'o-2')
  await rollback(app, b.code, 'o-2')
  const before = await report()
  t.equal(before.status, 'consistent', `unpersisted: ${JSON.stringify(before.problems)}`)
  await testConsumer(t, app, 'codes-drain').drain()
  const after = await report()
  t.equal(after.status, 'consistent', `persisted: ${JSON.stringify(after.problems)}`)
})

t.test('a discarded parked issue: its unit back in stock, its code names nothing any more', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 2 })
  const parked = (await issue(app, coupon.id, 'p')).json()
  const kept = (await issue(app, coupon.id, 'k')).json()
  t.equal(await app.couponStore.discardParkedIssue(coupon.id, { userId: 'p', claim: parked.claim, entryId: '1-1' }), 'returned')
  t.equal((await lookup(app, parked.code)).json().code, 'CODE_NOT_FOUND')
  t.equal((await redeem(app, parked.code, 'o-1')).json().code, 'CODE_NOT_FOUND')
  t.equal((await lookup(app, kept.code)).json().status, 'active', 'the other unit keeps its code')
  t.equal((await app.inject({ method: 'GET', url: `/coupons/${coupon.id}` })).json().remaining, 1)
})

t.test('counters written by a version that keyed codes by their characters: rebuilt on first use, nothing lost', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const k = app.keys.coupon(coupon.id)
  const codes: Record<string, string> = {}
  for (const u of ['a', 'b', 'c']) codes[u] = (await issue(app, coupon.id, u)).json().code
  t.equal((await app.inject({ method: 'POST', url: `/codes/${codes.a}/redemptions`, payload: { orderId: 'order-1' } })).statusCode, 201)
  // What an older version left: the same hashes under their old names, keyed by the mac's characters.
  const asLegacy = (hash: Record<string, string>) => Object.entries(hash).flatMap(([field, value]) => [/^[0-9a-f]+$/.test(field) ? macOfField(field) : field, value])
  const [unitsNow, redemptionsNow] = await Promise.all([app.redis.hgetall(k.codes), app.redis.hgetall(k.redemptions)])
  const [legacyCodes, legacyRedemptions] = k.legacyCodeKeys as [string, string]
  await app.redis.hset(legacyCodes, ...asLegacy(unitsNow))
  await app.redis.hset(legacyRedemptions, ...asLegacy(redemptionsNow))
  await app.redis.del(k.codes, k.redemptions)

  const a = await app.inject({ method: 'GET', url: `/codes/${codes.a}` })
  t.equal(a.statusCode, 200)
  t.match(a.json(), { userId: 'a', status: 'redeemed', orderId: 'order-1' }, 'the redeemed code is still redeemed')
  t.match((await app.inject({ method: 'GET', url: `/codes/${codes.b}` })).json(), { userId: 'b', status: 'active' })
  t.equal((await app.inject({ method: 'POST', url: `/codes/${codes.a}/redemptions`, payload: { orderId: 'order-2' } })).json().code, 'ALREADY_REDEEMED', 'and still redeemable exactly once')
  t.same(await app.redis.hgetall(k.codes), unitsNow, 'the codes hash rebuilt as it was')
  t.same(await app.redis.hgetall(k.redemptions), redemptionsNow, 'the redemption state rebuilt as it was')
  t.equal(await app.redis.exists(...k.legacyCodeKeys), 0, 'the old hashes dropped')
  const d = await issue(app, coupon.id, 'd')
  t.equal(d.statusCode, 201)
  t.equal((await app.inject({ method: 'GET', url: `/codes/${d.json().code}` })).json().userId, 'd')
  t.equal((await app.inject({ method: 'GET', url: `/coupons/${coupon.id}` })).json().remaining, 6, '10 units, 4 out: the stock survived the rebuild')
})
