// The OpenAPI document is valid, complete, and lists every error code; health endpoints answer.
import t from 'tap'
import SwaggerParser from '@apidevtools/swagger-parser'
import { testApp } from './helpers/env.js'

t.test('OpenAPI: valid, every route in it, every error status documented', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const response = await app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(response.statusCode, 200)
  const spec = response.json()
  t.equal(spec.openapi.slice(0, 2), '3.')
  await t.resolves(SwaggerParser.validate(structuredClone(spec)), 'the document validates')
  const expected: [string, string, string[]][] = [
    ['post', '/coupons', ['201', '400', '401', '403']],
    ['get', '/coupons', ['200', '401', '403']],
    ['get', '/coupons/{couponId}', ['200', '404']],
    ['patch', '/coupons/{couponId}', ['200', '404', '409', '503']],
    ['post', '/coupons/{couponId}/issues', ['201', '400', '401', '404', '409', '413', '422', '429', '503']],
    ['delete', '/coupons/{couponId}/issues/{userId}', ['200', '404', '422', '503']],
    ['get', '/coupons/{couponId}/issues/{userId}', ['200', '404']],
    ['get', '/users/{userId}/coupons', ['200']],
    ['get', '/admin/failed-events', ['200', '401', '403']],
    ['post', '/admin/failed-events/{id}/retry', ['200', '404', '422']],
    ['get', '/admin/coupons/{couponId}/consistency', ['200', '400', '401', '403', '404', '503']],
    ['post', '/admin/webhooks', ['201', '400', '401', '403', '409']],
    ['get', '/admin/webhooks', ['200', '401', '403']],
    ['get', '/admin/webhooks/{id}', ['200', '400', '404']],
    ['delete', '/admin/webhooks/{id}', ['204', '404']],
    ['get', '/admin/webhooks/{id}/deliveries', ['200', '400', '404']],
    ['post', '/admin/webhooks/{id}/deliveries/{deliveryId}/redeliver', ['202', '404', '409']],
    ['get', '/admin/events', ['200', '400', '401', '403']],
    ['get', '/health', ['200']],
    ['get', '/ready', ['200', '503']],
    ['get', '/metrics', ['200']]
  ]
  for (const [method, path, statuses] of expected) {
    const operation = spec.paths[path]?.[method]
    t.ok(operation, `${method.toUpperCase()} ${path} is documented`)
    for (const status of statuses) t.ok(operation?.responses?.[status], `${method.toUpperCase()} ${path} documents ${status}`)
  }
  const issue = spec.paths['/coupons/{couponId}/issues'].post
  t.match(issue.responses['409'].description, /SOLD_OUT/)
  t.match(issue.responses['409'].description, /ALREADY_ISSUED/)
  t.match(issue.responses['503'].description, /BACKLOG_FULL/)
  // Each script a client sets off has its own failure code, documented on its route only.
  const scriptFailures = (operation: { responses: Record<string, { description: string }> }) => operation.responses['503']!.description.match(/\w+_SCRIPT_FAILED/g)
  t.same(scriptFailures(issue), ['ISSUE_SCRIPT_FAILED'])
  t.same(scriptFailures(spec.paths['/coupons/{couponId}/issues/{userId}'].delete), ['CANCEL_SCRIPT_FAILED'])
  t.same(scriptFailures(spec.paths['/coupons/{couponId}'].patch), ['UPDATE_SCRIPT_FAILED'])
  t.match(spec.paths['/admin/events'].get.responses['400'].description, /INVALID_CURSOR/)
  t.match(spec.paths['/admin/webhooks'].post.responses['400'].description, /INVALID_WEBHOOK_URL/)
  t.ok(spec.paths['/admin/webhooks'].post.responses['201'].content['application/json'].schema.properties.secret, 'the secret is in the 201 only')
  t.notOk(spec.paths['/admin/webhooks/{id}'].get.responses['200'].content['application/json'].schema.properties.secret)
  const routesInApp = app.printRoutes({ commonPrefix: false })
  t.ok(routesInApp.includes('/docs'), 'the UI is served at /docs')
  const ui = await app.inject({ method: 'GET', url: '/docs/' })
  t.equal(ui.statusCode, 200)
})

t.test('metrics: outcomes, persistence and backlog in Prometheus format', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const { createCoupon } = await import('./helpers/env.js')
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  for (const userId of ['m1', 'm2']) await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId } })
  const response = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(response.statusCode, 200)
  t.match(response.body, /couponrush_issue_requests_total\{outcome="issued"\} 1/)
  t.match(response.body, /couponrush_issue_requests_total\{outcome="SOLD_OUT"\} 1/)
  t.match(response.body, /couponrush_stream_backlog 1/, 'one event waits: the consumer is off')
  t.match(response.body, /couponrush_process_resident_memory_bytes/)
})

t.test('health and readiness', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  t.same((await app.inject({ method: 'GET', url: '/health' })).json(), { status: 'ok' })
  const ready = await app.inject({ method: 'GET', url: '/ready' })
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), { status: 'ready', redis: 'ok', database: 'ok' })
  await app.database.close()
  const notReady = await app.inject({ method: 'GET', url: '/ready' })
  t.equal(notReady.statusCode, 503)
  t.equal(notReady.json().redis, 'ok')
  t.match(notReady.json().database, /^down/)
  const read = await app.inject({ method: 'GET', url: '/coupons/1' })
  t.equal(read.statusCode, 503, 'a read that needs the database says so')
  t.equal(read.json().code, 'DATABASE_UNAVAILABLE')
})
