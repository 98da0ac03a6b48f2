// Discount and metadata (issue 11): set at creation or by PATCH, validated strictly, echoed as stored by
// every coupon read so checkout needs no second lookup.
import t from 'tap'
import { admin, testApp } from './helpers/env.js'

t.test('discount and metadata are stored, echoed by every read, changed and cleared by PATCH', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const created = await app.inject({
    method: 'POST',
    url: '/coupons',
    headers: admin,
    payload: { name: 'ten off', totalQuantity: 3, discount: { type: 'percent', value: 10 }, metadata: { campaign: 'bf-2026', tier: 2, vip: false, note: null } }
  })
  t.equal(created.statusCode, 201)
  const id = created.json().id
  const expected = { discount: { type: 'percent', value: 10 }, metadata: { campaign: 'bf-2026', tier: 2, vip: false, note: null } }
  t.match(created.json(), expected)
  t.match((await app.inject({ method: 'GET', url: `/coupons/${id}` })).json(), expected, 'GET /coupons/:id')
  t.match((await app.inject({ method: 'GET', url: '/coupons', headers: admin })).json().items.find((c: any) => c.id === id), expected, 'the listing')

  const changed = await app.inject({ method: 'PATCH', url: `/coupons/${id}`, headers: admin, payload: { discount: { type: 'amount', value: 500, currency: 'EUR' } } })
  t.equal(changed.statusCode, 200)
  t.same(changed.json().discount, { type: 'amount', value: 500, currency: 'EUR' })
  t.same(changed.json().metadata, expected.metadata, 'what a PATCH does not name stays')
  const badKey = await app.inject({ method: 'PATCH', url: `/coupons/${id}`, headers: admin, payload: { metadata: { 'no spaces': 1 } } })
  t.equal(badKey.json().code, 'INVALID_REQUEST', 'PATCH checks metadata keys too')
  const cleared = await app.inject({ method: 'PATCH', url: `/coupons/${id}`, headers: admin, payload: { discount: null, metadata: null } })
  t.same([cleared.json().discount, cleared.json().metadata], [null, null])

  const plain = await app.inject({ method: 'POST', url: '/coupons', headers: admin, payload: { name: 'plain', totalQuantity: 1 } })
  t.same([plain.json().discount, plain.json().metadata], [null, null], 'absent means null')
})

t.test('a malformed discount or metadata is 400 INVALID_REQUEST', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const bad: Record<string, unknown>[] = [
    { discount: { type: 'percent', value: 0 } },
    { discount: { type: 'percent', value: 100.5 } },
    { discount: { type: 'percent', value: 10, currency: 'EUR' } },
    { discount: { type: 'amount', value: 500 } },
    { discount: { type: 'amount', value: 5.5, currency: 'EUR' } },
    { discount: { type: 'amount', value: 500, currency: 'eur' } },
    { discount: { type: 'free', value: 1 } },
    { discount: 'ten percent' },
    { metadata: { nested: { deep: true } } },
    { metadata: { 'bad key!': 1 } },
    { metadata: { list: [1, 2] } },
    { metadata: Object.fromEntries(Array.from({ length: 21 }, (_, i) => [`k${i}`, i])) },
    { metadata: { long: 'x'.repeat(501) } },
    { metadata: 'text' }
  ]
  for (const extra of bad) {
    const r = await app.inject({ method: 'POST', url: '/coupons', headers: admin, payload: { name: 'x', totalQuantity: 1, ...extra } })
    t.equal(r.statusCode, 400, JSON.stringify(extra))
    t.equal(r.json().code, 'INVALID_REQUEST')
  }
})
