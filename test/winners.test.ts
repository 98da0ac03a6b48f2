// The winners list (issue 11): persisted issues in issue order, cursor pages that stay stable, a status
// filter, and a CSV streamed page by page (100,000 rows), safe to open in a spreadsheet.
import t from 'tap'
import { sql } from 'drizzle-orm'
import { findCoupon } from '../src/db/queries/coupons.js'
import { codeOf } from '../src/issuing/codes.js'
import { admin, createCoupon, testApp, waitFor, type TestApp } from './helpers/env.js'

const list = async (app: TestApp, couponId: number, query = '') =>
  app.inject({ method: 'GET', url: `/admin/coupons/${couponId}/issues${query}`, headers: admin })

t.test('pages in issue order with a cursor; status filter; bad cursors, unknown coupons and shop keys refused', async (t) => {
  const app = await testApp(t, { API_KEYS: 'shop-key-0123456789' })
  const shop = { authorization: 'Bearer shop-key-0123456789' }
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const users = ['u1', 'u2', '-dash', '@at', 'u5']
  const codes: string[] = []
  for (const userId of users) {
    const issued = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: shop, payload: { userId } })
    t.equal(issued.statusCode, 201)
    codes.push(issued.json().code)
  }
  t.equal((await app.inject({ method: 'DELETE', url: `/coupons/${coupon.id}/issues/u2`, headers: shop })).statusCode, 200)
  // u5's code is redeemed for an order: the list says when and for which order.
  t.equal((await app.inject({ method: 'POST', url: `/codes/${codes[4]}/redemptions`, headers: shop, payload: { orderId: 'order-5' } })).statusCode, 201)
  await waitFor(async () => {
    const items = (await list(app, coupon.id, '?limit=100')).json().items
    return items.length === 5 && items.some((i: any) => i.status === 'revoked') && items.some((i: any) => i.redeemedAt !== null) ? items : null
  }, { what: 'five persisted issues, one revoked, one redeemed' })

  const seen: string[] = []
  let next: string | null = null
  do {
    const page: any = (await list(app, coupon.id, `?limit=2${next ? `&after=${next}` : ''}`)).json()
    t.ok(page.items.length <= 2)
    seen.push(...page.items.map((i: any) => i.userId))
    next = page.next
  } while (next)
  t.same(seen, users, 'every issue once, in issue order')
  t.same((await list(app, coupon.id, '?limit=100')).json().items.map((i: any) => i.code), codes, 'each with the code its 201 gave out (persisted by the consumer)')
  const revoked = (await list(app, coupon.id, '?status=revoked')).json()
  t.same(revoked.items.map((i: any) => [i.userId, i.status, typeof i.revokedAt, i.revokeReason]), [['u2', 'revoked', 'string', 'cancelled']], 'a cancel says so')
  const redeemed = (await list(app, coupon.id, '?limit=100')).json().items.filter((i: any) => i.redeemedAt !== null)
  t.same(redeemed.map((i: any) => [i.userId, i.orderId, i.revokeReason]), [['u5', 'order-5', null]], 'the redeemed unit names its order')
  t.equal((await list(app, coupon.id, '?status=active')).json().items.length, 4)

  t.equal((await list(app, coupon.id, '?after=not-a-cursor')).json().code, 'INVALID_REQUEST')
  for (const forged of ['9999999999999999.1', '1.99999999999999999', '1700000000000.-1', '']) {
    const r = await list(app, coupon.id, `?after=${Buffer.from(forged).toString('base64url')}`)
    t.equal(r.json().code, 'INVALID_REQUEST', `forged cursor ${JSON.stringify(forged)} -> ${r.statusCode}`)
  }
  t.equal((await list(app, coupon.id, '?status=redeemed')).json().code, 'INVALID_REQUEST')
  t.equal((await list(app, 987654321)).json().code, 'COUPON_NOT_FOUND')
  t.equal((await app.inject({ method: 'GET', url: `/admin/coupons/${coupon.id}/issues`, headers: shop })).json().code, 'FORBIDDEN')

  const csv = await app.inject({ method: 'GET', url: `/admin/coupons/${coupon.id}/issues.csv`, headers: admin })
  t.equal(csv.statusCode, 200)
  t.match(csv.headers['content-type'], /^text\/csv/)
  const lines = csv.body.trimEnd().split('\r\n')
  t.equal(lines[0], 'code,user_id,claim,issued_at,status,revoked_at,revoke_reason,redeemed_at,order_id')
  t.match(lines[2], /,revoked,[^,]+,cancelled,,$/, 'the cancelled unit: its reason, no redemption')
  t.match(lines[5], /,active,,,\d{4}-[^,]+,order-5$/, 'the redeemed unit: when, and its order')
  t.same(lines.slice(1).map((l) => l.split(',')[1]), ['u1', 'u2', "'-dash", "'@at", 'u5'], 'a field a spreadsheet would run as a formula is defused')
})

t.test('the CSV of 100,000 issues streams page by page, complete and in order', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 100_000 })
  // Rows written straight to Postgres (the list reads only Postgres): one per user, a millisecond apart.
  await app.db.execute(sql`
    INSERT INTO coupon_issues (coupon_id, user_id, claim, created_at, stream_id, revoked_at)
    SELECT ${coupon.id}, 'user-' || g, 1, timestamptz '2026-11-23 10:00:00+00' + g * interval '1 millisecond', g || '-0',
           CASE WHEN g % 10 = 0 THEN timestamptz '2026-11-23 11:00:00+00' END
    FROM generate_series(1, 100000) AS g`)
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  const response = await fetch(`${base}/admin/coupons/${coupon.id}/issues.csv`, { headers: admin })
  t.equal(response.status, 200)
  let chunks = 0
  let text = ''
  const decoder = new TextDecoder()
  for await (const chunk of response.body!) {
    chunks++
    text += decoder.decode(chunk, { stream: true })
  }
  const lines = text.trimEnd().split('\r\n')
  t.equal(lines.length, 100_001, 'a header and 100,000 rows')
  // Rows persisted before codes existed (no code column set): the code is derived from the unit.
  const row = await findCoupon(app.db, coupon.id)
  const code = (userId: string) => codeOf({ couponId: coupon.id, ...row! }, userId, 1)
  t.equal(lines[1], `${code('user-1')},user-1,1,2026-11-23T10:00:00.001Z,active,,,,`)
  t.equal(lines[10], `${code('user-10')},user-10,1,2026-11-23T10:00:00.010Z,revoked,2026-11-23T11:00:00.000Z,,,`)
  t.equal(lines[100_000], `${code('user-100000')},user-100000,1,2026-11-23T10:01:40.000Z,revoked,2026-11-23T11:00:00.000Z,,,`)
  let ordered = true
  for (let i = 2; i < lines.length; i++) if (lines[i]!.split(',')[3]! < lines[i - 1]!.split(',')[3]!) ordered = false
  t.ok(ordered, 'issue order')
  t.ok(chunks > 1, `arrived in ${chunks} chunks, not as one body`)
  const active = await fetch(`${base}/admin/coupons/${coupon.id}/issues.csv?status=active`, { headers: admin })
  t.equal((await active.text()).trimEnd().split('\r\n').length, 90_001, 'the status filter applies to the CSV too')
})
