// Answers the framework gives before a route runs (bad URL, over-long path segment, unsupported media type,
// malformed HTTP, oversized headers) leave with the catalog's { statusCode, code, error, message } like any
// other error; the OpenAPI document lists them, and declares bearer security on every route that needs it.
import { STATUS_CODES } from 'node:http'
import t, { type Test } from 'tap'
import SwaggerParser from '@apidevtools/swagger-parser'
import type { InjectOptions } from 'fastify'
import { admin, createCoupon, testApp } from './helpers/env.js'
import { exchange, httpRequest } from './helpers/raw-http.js'

type Check = { statusCode: number, headers: Record<string, unknown>, body: string }

function assertCatalogBody (t: Test, name: string, response: Check, status: number, code: string) {
  t.equal(response.statusCode, status, `${name}: status ${status}`)
  t.match(String(response.headers['content-type']), /^application\/json/, `${name}: JSON`)
  let body: Record<string, unknown> = {}
  try { body = JSON.parse(response.body) } catch {}
  t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'], `${name}: error body shape (${response.body.slice(0, 160)})`)
  t.equal(body.statusCode, status, `${name}: statusCode in the body matches`)
  t.equal(body.error, STATUS_CODES[status], `${name}: error is the status text`)
  t.equal(body.code, code, `${name}: code ${code}`)
  t.ok(typeof body.message === 'string' && body.message.length > 0, `${name}: a message`)
}

t.test('router and content-type errors carry a catalog code', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const json = { 'content-type': 'application/json' }
  const cases: [string, InjectOptions, number, string][] = [
    ['malformed percent-encoding in a userId', { method: 'GET', url: `/coupons/${coupon.id}/issues/%ZZ` }, 400, 'INVALID_REQUEST'],
    ['malformed percent-encoding on cancel', { method: 'DELETE', url: `/coupons/${coupon.id}/issues/%ZZ` }, 400, 'INVALID_REQUEST'],
    ['a lone % in a coupon id', { method: 'GET', url: '/coupons/%' }, 400, 'INVALID_REQUEST'],
    ['truncated UTF-8 in the path', { method: 'GET', url: '/users/%E0%A4%A/coupons' }, 400, 'INVALID_REQUEST'],
    ['malformed percent-encoding on an unknown route', { method: 'GET', url: '/nope/%ZZ' }, 400, 'INVALID_REQUEST'],
    ['a path segment of 5000 characters', { method: 'GET', url: `/users/${'u'.repeat(5000)}/coupons` }, 414, 'URI_TOO_LONG'],
    ['a coupon id of 2000 digits', { method: 'POST', url: `/coupons/${'1'.repeat(2000)}/issues`, headers: json, payload: '{"userId":"u1"}' }, 414, 'URI_TOO_LONG'],
    ['text/plain on issue', { method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: { 'content-type': 'text/plain' }, payload: 'userId=u1' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['a form on issue', { method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'userId=u1' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['multipart on issue', { method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: { 'content-type': 'multipart/form-data; boundary=x' }, payload: '--x--' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['XML on issue', { method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: { 'content-type': 'application/xml' }, payload: '<userId>u1</userId>' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['a media type that does not parse', { method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: { 'content-type': 'bogus' }, payload: '{"userId":"u1"}' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['text/plain on create', { method: 'POST', url: '/coupons', headers: { ...admin, 'content-type': 'text/plain' }, payload: '{"name":"x","totalQuantity":1}' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['text/plain on change', { method: 'PATCH', url: `/coupons/${coupon.id}`, headers: { ...admin, 'content-type': 'text/plain' }, payload: '{"totalQuantity":9}' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['a text body on cancel', { method: 'DELETE', url: `/coupons/${coupon.id}/issues/u1`, headers: { 'content-type': 'text/plain' }, payload: 'why' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['a text body on retry', { method: 'POST', url: '/admin/failed-events/1/retry', headers: { ...admin, 'content-type': 'text/plain' }, payload: 'please' }, 415, 'UNSUPPORTED_MEDIA_TYPE']
  ]
  for (const [name, request, status, code] of cases) {
    const response = await app.inject(request)
    assertCatalogBody(t, name, { statusCode: response.statusCode, headers: response.headers, body: response.body }, status, code)
  }
  t.equal(await app.redis.get(app.keys.coupon(coupon.id).stock), '5', 'nothing was issued by the refused requests')
})

t.test('over a real connection: the same answers, plus malformed HTTP and oversized headers', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const cases: [string, string, number, string][] = [
    ['malformed percent-encoding', httpRequest('GET', '/coupons/1/issues/%ZZ'), 400, 'INVALID_REQUEST'],
    ['a path segment over the limit', httpRequest('GET', `/users/${'u'.repeat(2000)}/coupons`), 414, 'URI_TOO_LONG'],
    ['text/plain body', httpRequest('POST', '/coupons/1/issues', { body: 'userId=u1', headers: { 'content-type': 'text/plain' } }), 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['headers over 16 KiB', httpRequest('GET', '/health', { headers: { 'x-padding': 'p'.repeat(20_000) } }), 431, 'HEADERS_TOO_LARGE'],
    ['a request line that is not HTTP', 'HELLO THERE\r\n\r\n', 400, 'INVALID_REQUEST'],
    ['a Content-Length that is not a number', 'POST /coupons/1/issues HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: abc\r\n\r\n{}', 400, 'INVALID_REQUEST'],
    ['a NUL byte in a header', 'GET /health HTTP/1.1\r\nhost: x\r\nx-evil: a\u0000b\r\n\r\n', 400, 'INVALID_REQUEST']
  ]
  for (const [name, data, status, code] of cases) {
    // Connection: close on a well-formed request makes the server end the exchange after its answer.
    const request = data.startsWith('GET') || data.startsWith('POST') ? data.replace('\r\n', '\r\nconnection: close\r\n') : data
    const { response, closedAfterMs, raw } = await exchange(port, request, { timeoutMs: 5000 })
    t.ok(response, `${name}: an HTTP answer (${raw.slice(0, 80)})`)
    if (!response) continue
    assertCatalogBody(t, name, { statusCode: response.status, headers: response.headers, body: response.body }, status, code)
    t.not(closedAfterMs, null, `${name}: the connection is closed after the answer`)
  }
})

t.test('OpenAPI: bearer security on every route that needs a key, 415 and 414 where they can happen', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', API_KEYS: 'shop-key-0123456789' })
  const spec = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
  await t.resolves(SwaggerParser.validate(structuredClone(spec)), 'the document with the added responses and security still validates')
  t.same(spec.components.securitySchemes.bearer, { type: 'http', scheme: 'bearer' })
  const sample: Record<string, string> = { couponId: '1', userId: 'u1', id: '1' }
  const needsKey: string[] = []
  for (const [path, operations] of Object.entries(spec.paths as Record<string, Record<string, any>>)) {
    for (const [method, operation] of Object.entries(operations)) {
      const name = `${method.toUpperCase()} ${path}`
      const url = path.replace(/\{(\w+)\}/g, (_, param: string) => sample[param] ?? 'x')
      // Without credentials: a route with auth answers 401 before it looks at anything else.
      const response = await app.inject({ method: method.toUpperCase() as 'GET', url })
      if (response.statusCode === 401) {
        needsKey.push(name)
        t.same(operation.security, [{ bearer: [] }], `${name} needs a key and declares bearer security`)
      } else {
        t.equal(operation.security, undefined, `${name} is open (${response.statusCode}) and declares no security`)
      }
      if (operation.requestBody) t.ok(operation.responses['415'], `${name} takes a body and documents 415`)
      if (/\{\w+\}/.test(path)) t.ok(operation.responses['414'], `${name} has path parameters and documents 414`)
    }
  }
  for (const route of ['GET /coupons/{couponId}', 'POST /coupons/{couponId}/issues', 'DELETE /coupons/{couponId}/issues/{userId}',
    'GET /coupons/{couponId}/issues/{userId}', 'GET /users/{userId}/coupons', 'POST /coupons', 'PATCH /coupons/{couponId}',
    'GET /coupons', 'GET /admin/failed-events', 'POST /admin/failed-events/{id}/retry']) {
    t.ok(needsKey.includes(route), `${route} was found to need a key`)
  }
})
