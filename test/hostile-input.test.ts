// Hostile input, deterministically generated, into every field of every route: each answer is a 4xx with a
// code from the catalog (a 2xx only where the value is in fact valid for that field), never a 500.
import { STATUS_CODES } from 'node:http'
import t, { type Test } from 'tap'
import type { InjectOptions, LightMyRequestResponse } from 'fastify'
import { admin, createCoupon, testApp } from './helpers/env.js'

// ------------------------------------------------------------------------------------------ the inputs

const deep = (levels: number): unknown => (levels === 0 ? {} : { a: deep(levels - 1) })

/** Strings that are hostile somewhere: control characters, odd dates, numbers as text, injections, sizes. */
const hostileStrings: string[] = [
  '', ' ', '\u0000', 'a\u0000b', '\u0001', '\u0007', '\b', '\t', '\n', 'a\r\nb', '\u001b[31mred', '\u007f', '\u0085', '\u009f',
  'a\u2028b', '\u2029', '\ud800', 'a\udfffb', '\ufeff', '\u200b', '\ufffe',
  'x'.repeat(129), 'x'.repeat(201), 'x'.repeat(3000), 'x'.repeat(5000),
  // dates that JavaScript or Postgres cannot store or round-trip, or that are not RFC 3339
  '2026-06-30T23:59:60Z', '2016-12-31T23:59:60.5Z', '0000-01-01T00:00:00Z', '0001-01-01T00:00:00Z', '1969-12-31T23:59:59.999Z',
  '10000-01-01T00:00:00Z', '+010000-01-01T00:00:00Z', '-000001-01-01T00:00:00Z', '-0001-01-01T00:00:00Z', '+275760-09-13T00:00:00Z',
  '9999-12-31T23:59:59-00:01', '1970-01-01T00:59:59+01:00', '2026-02-30T00:00:00Z', '2026-02-29T00:00:00Z', '2026-13-01T00:00:00Z',
  '2026-00-10T00:00:00Z', '2026-01-01T24:00:00Z', '2026-01-01T23:60:00Z', '2026-01-01T00:00:00+24:00', '2026-01-01T00:00:00+01:60',
  '2026-01-01T00:00:00', '2026-01-01', '2026-01-01 00:00:00Z', '2026-01-01T00:00:00.Z', '2026-01-01T00:00:00,5Z',
  '2026-01-01T00:00:00.1234567890Z', '２０２６-01-01T00:00:00Z', ' 2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z ', 'Thu, 01 Jan 2026 00:00:00 GMT',
  'NaN', 'Infinity', '-Infinity', 'null', 'undefined', 'true', 'false', '0', '-1', '5', '1.5', '1e3', '1e309', '0x10', '-0',
  '9007199254740993', '99999999999999999999', '½', '٣', '💥', 'ünïcødé', 'İ', '%00', '%ZZ', '../../etc/passwd', "' OR 1=1 --",
  '<script>alert(1)</script>', '$' + '{jndi:ldap://x}', '__proto__', 'constructor', '{}', '[]', 'a b', 'a/b', 'a?b', 'a#b'
]

/** Values of every JSON type that is not the one expected, and numbers at the edges. */
const hostileValues: unknown[] = [
  null, true, false, 0, -0, -1, 1.5, 0.1, 1e308, -1e308, 2 ** 31, 2 ** 53, 2 ** 53 + 2, 2 ** 63, 1e21, 10_000_001, 1001,
  [], [1], ['a'], [null], {}, { $gt: '' }, { toString: 'x' }, deep(40)
]

/** Path segments: malformed percent-encoding, traversal, huge and odd numbers. */
const hostileSegments: string[] = [
  '%ZZ', '%', '%%', '%E0%A4%A', '%C0%AF', '%FF', '%ED%A0%80', '%00', '%2F', '%2e%2e', '..', '.', '%20', '+',
  '0', '-1', '-0', '1.5', '1e3', '0x1', '1e309', 'Infinity', 'NaN', 'null', 'true', '9007199254740992', '9007199254740993',
  '99999999999999999999', '9'.repeat(400), '9'.repeat(1100), 'u'.repeat(129), 'u'.repeat(2000), 'a b', 'ü', '%F0%9F%92%A5', '%0A', '%0D%0A', '%7F'
]

const asPathSegment = (value: string) => {
  try { return encodeURIComponent(value) } catch { return '%ED%A0%80' } // a lone surrogate: its (invalid) UTF-8
}

// ------------------------------------------------------------------------------------ what is valid

const wellFormed = (s: string) => (s as string & { isWellFormed (): boolean }).isWellFormed()
const validName = (v: unknown) => typeof v === 'string' && wellFormed(v) && [...v].length >= 1 && [...v].length <= 200 &&
  // eslint-disable-next-line no-control-regex -- control characters are exactly what a name may not hold
  !/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(v)
const intIn = (min: number, max: number) => (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max
const validUserId = (v: unknown) => typeof v === 'string' && /^[A-Za-z0-9._:@-]{1,128}$/.test(v)
const validIdempotencyKey = (v: unknown) => typeof v === 'string' && /^[A-Za-z0-9._:-]{1,255}$/.test(v)
// Every hostile date above is invalid; these are the valid ones they are compared with.
const validDates = ['2026-12-01T10:00:00Z', '1970-01-01T00:00:00Z', '9999-12-31T23:59:59.999Z', '2030-06-30T12:00:00.123456789+05:30', '2030-01-01t00:00:00z']
const validDate = (v: unknown) => typeof v === 'string' && validDates.includes(v)
// Params and query strings arrive as text and are coerced to numbers, so "1e3" is 1000.
// (as Ajv coerces: any non-empty string that Number() reads, so whitespace alone is 0)
const coercesToIntIn = (min: number, max: number) => (v: unknown) => typeof v === 'string' && v !== '' && Number.isInteger(Number(v)) && Number(v) >= min && Number(v) <= max
const headerSafe = (s: string) => /^[\t\x20-\x7e]*$/.test(s)

// ------------------------------------------------------------------------------------------ checking

interface Case { name: string, request: InjectOptions, mayPass: boolean }

function verdict (response: LightMyRequestResponse, mayPass: boolean): string | null {
  const { statusCode } = response
  if (statusCode >= 500) return `${statusCode} ${response.body.slice(0, 200)}`
  if (statusCode < 400) return mayPass ? null : `accepted with ${statusCode}`
  let body: Record<string, unknown>
  try { body = response.json() } catch { return `${statusCode} without a JSON body: ${response.body.slice(0, 100)}` }
  const keys = Object.keys(body).sort().join(',')
  if (keys !== 'code,error,message,statusCode') return `${statusCode} with body keys ${keys}`
  if (body.statusCode !== statusCode || body.error !== STATUS_CODES[statusCode]) return `${statusCode} with statusCode ${body.statusCode} / error ${body.error}`
  if (typeof body.code !== 'string' || !/^[A-Z][A-Z0-9_]+$/.test(body.code)) return `${statusCode} without a code: ${body.code}`
  return null
}

async function run (t: Test, app: { inject (o: InjectOptions): Promise<LightMyRequestResponse> }, group: string, cases: Case[]) {
  const failures: string[] = []
  const codes = new Map<string, number>()
  for (const { name, request, mayPass } of cases) {
    const response = await app.inject(request)
    const bad = verdict(response, mayPass)
    if (bad) failures.push(ascii(`${name}: ${bad}`))
    let code = String(response.statusCode)
    try { if (response.statusCode >= 400) code += ` ${response.json().code}` } catch {}
    codes.set(code, (codes.get(code) ?? 0) + 1)
  }
  t.same(failures, [], `${group}: ${cases.length} hostile requests, each a 4xx with a code (${[...codes].map(([c, n]) => `${c}×${n}`).join(', ')})`)
}

// ASCII only: a U+2028 or a BOM in an assertion message would break the TAP stream.
const ascii = (s: string) => s.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
const show = (v: unknown) => {
  const s = ascii(JSON.stringify(v) ?? String(v))
  return s.length > 40 ? `${s.slice(0, 40)}...(${s.length})` : s
}
const everything = [...hostileStrings, ...hostileValues]

// -------------------------------------------------------------------------------------------- tests

t.test('every field of every route refuses hostile input with a 4xx and a code, never a 500', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 1000, perUserLimit: 1000 })
  const patched = await createCoupon(app, { totalQuantity: 10 })
  const json = { 'content-type': 'application/json' }

  const newCoupon = { name: 'hostile', totalQuantity: 5, startsAt: '2026-12-01T10:00:00Z', endsAt: '9999-12-01T10:00:00Z' }
  const createFields: [string, (v: unknown) => boolean][] = [
    ['name', validName], ['totalQuantity', intIn(1, 10_000_000)], ['perUserLimit', intIn(1, 1000)], ['startsAt', validDate], ['endsAt', (v) => v === null || validDate(v)]
  ]
  for (const [field, valid] of createFields) {
    await run(t, app, `POST /coupons ${field}`, everything.map((value) => ({
      name: `${field}=${show(value)}`,
      request: { method: 'POST', url: '/coupons', headers: { ...admin, ...json }, payload: JSON.stringify({ ...newCoupon, [field]: value }) },
      mayPass: valid(value)
    })))
  }

  const changeFields: [string, (v: unknown) => boolean][] = [['totalQuantity', intIn(10, 10_000_000)], ['startsAt', validDate], ['endsAt', (v) => v === null || validDate(v)]]
  for (const [field, valid] of changeFields) {
    await run(t, app, `PATCH /coupons/:id ${field}`, everything.map((value) => ({
      name: `${field}=${show(value)}`,
      request: { method: 'PATCH', url: `/coupons/${patched.id}`, headers: { ...admin, ...json }, payload: JSON.stringify({ [field]: value }) },
      mayPass: valid(value)
    })))
  }

  await run(t, app, 'POST /coupons/:id/issues userId', everything.map((value) => ({
    name: `userId=${show(value)}`,
    request: { method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: json, payload: JSON.stringify({ userId: value }) },
    mayPass: validUserId(value)
  })))
  await run(t, app, 'POST /coupons/:id/issues Idempotency-Key', hostileStrings.filter(headerSafe).map((value, i) => ({
    name: `Idempotency-Key=${show(value)}`,
    request: { method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: { ...json, 'idempotency-key': value }, payload: JSON.stringify({ userId: `key-user-${i}` }) },
    mayPass: validIdempotencyKey(value)
  })))
  await run(t, app, 'DELETE /coupons/:id/issues/:userId Idempotency-Key', hostileStrings.filter(headerSafe).map((value) => ({
    name: `Idempotency-Key=${show(value)}`,
    request: { method: 'DELETE', url: `/coupons/${coupon.id}/issues/nobody`, headers: { 'idempotency-key': value } },
    mayPass: false
  })))

  // Whole bodies: not an object, not JSON, tricks of the JSON parser.
  const bodies: [string, boolean][] = [
    ['', false], ['null', false], ['[]', false], ['"x"', false], ['1', false], ['true', false], ['{', false], ['{"userId":', false],
    ['\u0000', false], ['{"userId":"u1"}garbage', false], ['\ufeff{"userId":"bom"}', true], ['{"userId":"dup-a","userId":"dup-b"}', true],
    ['{"__proto__":{"admin":true},"userId":"p"}', false], ['{"constructor":{"prototype":{"x":1}},"userId":"c"}', false],
    ['{"userId":NaN}', false], ['{"userId":"u","extra":1}', false], [`${'['.repeat(2000)}${']'.repeat(2000)}`, false],
    [JSON.stringify(deep(500)), false], ['{"userId":"\\ud800"}', false], ['{"userId":"a\\u0000"}', false]
  ]
  for (const [url, label] of [[`/coupons/${coupon.id}/issues`, 'issue'], ['/coupons', 'create'], [`/coupons/${patched.id}`, 'change']] as const) {
    await run(t, app, `whole bodies on ${label}`, bodies.map(([payload, mayPass]) => ({
      name: `body ${show(payload)}`,
      request: { method: label === 'change' ? 'PATCH' : 'POST', url, headers: { ...admin, ...json }, payload },
      mayPass: mayPass && label === 'issue'
    })))
  }

  // Path segments, raw (malformed encodings) and as encoded hostile strings.
  const segments = [...hostileSegments.map((raw) => ({ raw, value: raw })), ...hostileStrings.map((value) => ({ raw: asPathSegment(value), value }))]
  const decoded = (raw: string) => { try { return decodeURIComponent(raw) } catch { return null } }
  const couponIdOk = (raw: string) => coercesToIntIn(1, Number.MAX_SAFE_INTEGER)(decoded(raw))
  const pathCases = (method: InjectOptions['method'], url: (raw: string) => string, mayPass: (raw: string) => boolean, extra: Partial<InjectOptions> = {}) =>
    segments.map(({ raw }) => ({ name: `${method} ${url(raw).slice(0, 60)}`, request: { method, url: url(raw), ...extra }, mayPass: mayPass(raw) }))
  await run(t, app, 'GET /coupons/:id', pathCases('GET', (s) => `/coupons/${s}`, couponIdOk))
  await run(t, app, 'PATCH /coupons/:id', pathCases('PATCH', (s) => `/coupons/${s}`, couponIdOk, { headers: { ...admin, ...json }, payload: '{"totalQuantity":1000}' }))
  await run(t, app, 'POST /coupons/:id/issues', pathCases('POST', (s) => `/coupons/${s}/issues`, couponIdOk, { headers: json, payload: '{"userId":"path-user"}' }))
  await run(t, app, 'GET /coupons/:id/issues/:userId (coupon id)', pathCases('GET', (s) => `/coupons/${s}/issues/u1`, () => false))
  // (the userId field above issued the coupon to every valid userId in the list)
  const userIdOk = (raw: string) => validUserId(decoded(raw))
  await run(t, app, 'GET /coupons/:id/issues/:userId (userId)', pathCases('GET', (s) => `/coupons/${coupon.id}/issues/${s}`, userIdOk))
  await run(t, app, 'DELETE /coupons/:id/issues/:userId (coupon id)', pathCases('DELETE', (s) => `/coupons/${s}/issues/u1`, () => false))
  await run(t, app, 'DELETE /coupons/:id/issues/:userId (userId)', pathCases('DELETE', (s) => `/coupons/${coupon.id}/issues/${s}`, userIdOk))
  await run(t, app, 'GET /users/:userId/coupons', pathCases('GET', (s) => `/users/${s}/coupons`, userIdOk))
  await run(t, app, 'POST /admin/failed-events/:id/retry', pathCases('POST', (s) => `/admin/failed-events/${s}/retry`, () => false, { headers: admin }))

  // Query strings (coerced from text).
  const queryCases = (path: string, param: string, mayPass: (v: string) => boolean) => hostileStrings.map((value) => ({
    name: `${param}=${show(value)}`,
    request: { method: 'GET' as const, url: `${path}?${param}=${asPathSegment(value)}`, headers: admin },
    mayPass: mayPass(value)
  }))
  await run(t, app, 'GET /coupons after', queryCases('/coupons', 'after', coercesToIntIn(0, Number.MAX_SAFE_INTEGER)))
  await run(t, app, 'GET /coupons limit', queryCases('/coupons', 'limit', coercesToIntIn(1, 200)))
  await run(t, app, 'GET /coupons unknown parameter', queryCases('/coupons', 'evil', () => false))
  await run(t, app, 'GET /admin/failed-events limit', queryCases('/admin/failed-events', 'limit', coercesToIntIn(1, 500)))
  await run(t, app, 'GET /admin/failed-events includeRetried', queryCases('/admin/failed-events', 'includeRetried', (v) => ['true', 'false', '0', '1', ''].includes(v)))
  await run(t, app, 'malformed query strings', ['%ZZ', 'after=%', 'after=1&after=2', 'after[]=1', 'after[a]=1', '&&&', '='.repeat(100), 'a'.repeat(3000)].map((qs) => ({
    name: `?${qs.slice(0, 30)}`, request: { method: 'GET', url: `/coupons?${qs}`, headers: admin }, mayPass: qs === '&&&'
  })))

  // Credentials: any Authorization that is not the admin token is 401 on an admin route.
  await run(t, app, 'Authorization on an admin route', hostileStrings.filter(headerSafe).flatMap((value) => [value, `Bearer ${value}`]).map((value) => ({
    name: `Authorization=${show(value)}`, request: { method: 'GET', url: '/coupons', headers: { authorization: value } }, mayPass: false
  })))

  const stock = Number(await app.redis.get(app.keys.coupon(coupon.id).stock))
  const held = Object.entries(await app.redis.hgetall(app.keys.coupon(coupon.id).holders))
    .filter(([user]) => user !== '#').reduce((sum, [, units]) => sum + Number(units), 0)
  t.equal(stock + held, 1000, `stock (${stock}) and units held (${held}) still add up for the coupon under attack`)
})

t.test('the regressions: dates and names that used to end in 500 INTERNAL_ERROR', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  const cases: [string, InjectOptions][] = [
    ['leap second startsAt on create', { method: 'POST', url: '/coupons', headers: admin, payload: { name: 'x', totalQuantity: 1, startsAt: '2026-06-30T23:59:60Z' } }],
    ['leap second endsAt on create', { method: 'POST', url: '/coupons', headers: admin, payload: { name: 'x', totalQuantity: 1, endsAt: '2026-06-30T23:59:60Z' } }],
    ['year 0 startsAt on create', { method: 'POST', url: '/coupons', headers: admin, payload: { name: 'x', totalQuantity: 1, startsAt: '0000-01-01T00:00:00Z' } }],
    ['year 0 endsAt on create', { method: 'POST', url: '/coupons', headers: admin, payload: { name: 'x', totalQuantity: 1, endsAt: '0000-01-01T00:00:00Z' } }],
    ['NUL in a name', { method: 'POST', url: '/coupons', headers: admin, payload: { name: 'ten\u0000off', totalQuantity: 1 } }],
    ['a bell in a name', { method: 'POST', url: '/coupons', headers: admin, payload: { name: 'ten\u0007off', totalQuantity: 1 } }],
    ['leap second startsAt on change', { method: 'PATCH', url: `/coupons/${coupon.id}`, headers: admin, payload: { startsAt: '2026-06-30T23:59:60Z' } }],
    ['leap second endsAt on change', { method: 'PATCH', url: `/coupons/${coupon.id}`, headers: admin, payload: { endsAt: '2026-06-30T23:59:60Z' } }],
    ['year 0 on change', { method: 'PATCH', url: `/coupons/${coupon.id}`, headers: admin, payload: { startsAt: '0000-01-01T00:00:00Z' } }],
    ['a year after 9999 (by its offset) on change', { method: 'PATCH', url: `/coupons/${coupon.id}`, headers: admin, payload: { endsAt: '9999-12-31T23:59:59-01:00' } }],
    ['a list cursor beyond bigint', { method: 'GET', url: '/coupons?after=1e30', headers: admin }],
    ['a failed-event id beyond bigint', { method: 'POST', url: '/admin/failed-events/99999999999999999999/retry', headers: admin }]
  ]
  for (const [name, request] of cases) {
    const response = await app.inject(request)
    t.equal(response.statusCode, 400, `${name}: 400 (${response.body.slice(0, 120)})`)
    t.equal(response.json().code, 'INVALID_REQUEST', `${name}: INVALID_REQUEST`)
  }
  const edges = await app.inject({ method: 'POST', url: '/coupons', headers: admin, payload: { name: 'edges 💥', totalQuantity: 1, startsAt: '1970-01-01T00:00:00Z', endsAt: '9999-12-31T23:59:59.999Z' } })
  t.equal(edges.statusCode, 201, 'the first and last instants of the accepted range are accepted')
  const read = await app.inject({ method: 'GET', url: `/coupons/${edges.json().id}` })
  t.match(read.json(), { name: 'edges 💥', startsAt: '1970-01-01T00:00:00.000Z', endsAt: '9999-12-31T23:59:59.999Z' }, 'and round-trip through Postgres unchanged')
})
