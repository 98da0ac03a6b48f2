// Closing the app while keep-alive connections are busy or idle: every request that reached the server gets
// an HTTP answer (its result, or 503 SHUTTING_DOWN with Connection: close), requests still running at half
// of SHUTDOWN_TIMEOUT_MS are answered 503, and slow or silent clients are cut off within a bound.
import t, { type Test } from 'tap'
import pg from 'pg'
import { loadConfig } from '../src/config.js'
import { serverOptions } from '../src/app.js'
import { createCoupon, testApp, waitFor, type TestEnv } from './helpers/env.js'
import { lockTable } from './faults/helpers/inprocess.js'
import { exchange, httpRequest, KeepAliveConnection, type Outcome } from './helpers/raw-http.js'

type App = Awaited<ReturnType<typeof testApp>>

async function listening (app: App): Promise<number> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  return (app.server.address() as { port: number }).port
}

/** Reads waiting on a lock: requests that are inside their handler for as long as the test wants. */
async function waitingOnLock (env: TestEnv, t: Test) {
  const watcher = new pg.Client({ connectionString: env.databaseUrl })
  await watcher.connect()
  t.teardown(() => watcher.end().catch(() => {}))
  return async () => (await watcher.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE 'select%'")).rows[0].n as number
}

const issue = (couponId: number, userId: string) => httpRequest('POST', `/coupons/${couponId}/issues`, { body: JSON.stringify({ userId }) })
const lookUp = (couponId: number, userId: string) => httpRequest('GET', `/coupons/${couponId}/issues/${userId}`)

// The error code of an error answer (a 201 carries the unit's redeemable `code`, which is no error code).
function describe (outcome: Outcome): string {
  if (outcome.kind !== 'response') return `no answer (${outcome.error})`
  const { status, headers } = outcome.response
  return `${status} ${status >= 400 ? outcome.response.json().code ?? '' : ''} connection=${headers.connection}`
}

t.test('close with busy and idle keep-alive connections: every request gets an answer, then every connection closes', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const port = await listening(app)
  const coupon = await createCoupon(app, { totalQuantity: 10_000 })

  // Idle keep-alive connections: each served one request and waits for the next.
  const idle = Array.from({ length: 24 }, () => new KeepAliveConnection(port))
  const firsts = await Promise.all(idle.map((connection, i) => connection.send(issue(coupon.id, `idle-${i}`))))
  t.same(firsts.map(describe), idle.map(() => '201  connection=keep-alive'), 'every idle connection served a first request and stays open')
  // Busy ones: a look-up inside its handler, waiting on a lock the test holds.
  const lock = await lockTable(t, app.env.databaseUrl, 'coupon_issues', 'ACCESS EXCLUSIVE')
  const waiting = await waitingOnLock(app.env, t)
  const busy = Array.from({ length: 4 }, () => new KeepAliveConnection(port))
  const busyOutcomes = busy.map((connection, i) => connection.send(lookUp(coupon.id, `idle-${i}`)))
  await waitFor(async () => await waiting() >= busy.length, { what: 'the look-ups to wait on the lock' })

  let closed = false
  const closing = app.close().then(() => { closed = true })
  // Requests on the idle connections right as the close starts: they reach the server after it began.
  const late = (await Promise.all(idle.map((connection, i) => connection.send(issue(coupon.id, `late-${i}`))))).map(describe)
  // Answered 503 SHUTTING_DOWN with Connection: close, or served if it was read before the close began; never cut.
  t.same(late.filter((d) => d !== '503 SHUTTING_DOWN connection=close' && !d.startsWith('201 ')), [],
    `every request sent as the close began was answered (${late.filter((d) => d.startsWith('503')).length} × 503 SHUTTING_DOWN)`)
  await waitFor(async () => idle.every((c) => c.closed), { what: 'the idle connections to be closed' })
  t.equal(closed, false, 'the app waits for the requests still in flight')

  await lock.release()
  t.same((await Promise.all(busyOutcomes)).map(describe), busy.map(() => '200  connection=close'),
    'the look-ups in flight got their results, with Connection: close')
  await closing
  await waitFor(async () => busy.every((c) => c.closed), { timeoutMs: 2000, what: 'the busy connections to be closed after their answer' })
})

t.test('a request still running at half of SHUTDOWN_TIMEOUT_MS is answered 503 SHUTTING_DOWN', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', SHUTDOWN_TIMEOUT_MS: '1000' })
  const port = await listening(app)
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  const lock = await lockTable(t, app.env.databaseUrl, 'coupon_issues', 'ACCESS EXCLUSIVE')
  const waiting = await waitingOnLock(app.env, t)
  const connection = new KeepAliveConnection(port)
  const stuck = connection.send(lookUp(coupon.id, 'someone'))
  await waitFor(async () => await waiting() >= 1, { what: 'the look-up to wait on the lock' })

  const started = Date.now()
  const closing = app.close()
  const outcome = await stuck
  const tookMs = Date.now() - started
  t.equal(outcome.kind === 'response' && outcome.response.status, 503, `answered: ${describe(outcome)}`)
  t.equal(outcome.kind === 'response' && outcome.response.json().code, 'SHUTTING_DOWN')
  t.ok(tookMs >= 400 && tookMs < 1500, `at the drain deadline, 500 ms (${tookMs} ms)`)
  await waitFor(async () => connection.closed, { what: 'the connection to be closed' })
  await lock.release()
  await closing
})

t.test('slow and silent clients are cut off with 408 within REQUEST_TIMEOUT_MS plus the check interval', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', REQUEST_TIMEOUT_MS: '1000' })
  const port = await listening(app)
  const coupon = await createCoupon(app, { totalQuantity: 10 })
  // Node checks request deadlines every REQUEST_TIMEOUT_MS / 4 (here 250 ms); a second on top for a busy machine.
  const bound = 1000 + 250 + 1000

  const body = JSON.stringify({ userId: 'slowpoke' })
  const head = `POST /coupons/${coupon.id}/issues HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n`
  for (const [name, prefix, drip] of [['a body sent byte by byte', head, body], ['headers sent byte by byte', '', head + body]] as const) {
    const slow = new KeepAliveConnection(port)
    await slow.ready
    const started = Date.now()
    const outcome = slow.send(prefix)
    // One byte every 100 ms: the whole request would take seconds, far beyond REQUEST_TIMEOUT_MS.
    const dripping = (async () => {
      for (const byte of drip) {
        if (slow.closed) return
        slow.socket.write(byte)
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    })()
    const result = await outcome
    const tookMs = Date.now() - started
    await dripping
    t.equal(result.kind === 'response' && result.response.status, 408, `${name}: 408 (${describe(result)})`)
    if (result.kind === 'response') {
      t.same(result.response.json(), { statusCode: 408, code: 'REQUEST_TIMEOUT', error: 'Request Timeout', message: result.response.json().message }, `${name}: the catalog's body`)
    }
    await waitFor(async () => slow.closed, { timeoutMs: 2000, what: 'the slow connection to be closed' })
    t.ok(tookMs >= 900 && tookMs < bound, `${name}: cut after ${tookMs} ms (REQUEST_TIMEOUT_MS 1000, bound ${bound})`)
  }

  // A connection that sends nothing at all: Node counts the request from the connection on.
  const silent = await exchange(port, '', { timeoutMs: 5000 })
  t.equal(silent.response?.status, 408, 'a silent connection is answered 408')
  t.equal(silent.response?.json().code, 'REQUEST_TIMEOUT')
  t.ok(silent.closedAfterMs !== null && silent.closedAfterMs >= 900 && silent.closedAfterMs < bound, `and closed after ${silent.closedAfterMs} ms`)

  // Between two requests a keep-alive connection may idle longer than REQUEST_TIMEOUT_MS (KEEP_ALIVE_TIMEOUT_MS applies).
  const prompt = new KeepAliveConnection(port)
  const first = await prompt.send(issue(coupon.id, 'prompt-1'))
  t.equal(first.kind === 'response' && first.response.status, 201, `a prompt request is served: ${describe(first)}`)
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const second = await prompt.send(issue(coupon.id, 'prompt-2'))
  t.equal(second.kind === 'response' && second.response.status, 201, `and the next one after 1.5 s of idling: ${describe(second)}`)
  prompt.close()
})

t.test('the defaults bound every wait: request, idle connection, keep-alive', async (t) => {
  const options = serverOptions(loadConfig({}))
  t.equal(options.requestTimeout, 10_000)
  t.equal(options.connectionTimeout, 60_000)
  t.equal(options.keepAliveTimeout, 72_000)
  t.match(options.http, { requestTimeout: 10_000, headersTimeout: 10_000, connectionsCheckingInterval: 1000 })
})
