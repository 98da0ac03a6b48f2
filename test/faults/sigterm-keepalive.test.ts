// SIGTERM mid-rush on keep-alive connections. Every request that reached the server gets an HTTP answer:
// its result, or 503 SHUTTING_DOWN with Connection: close; none is cut with a reset ("socket hang up").
// Three kinds of connection when the signal arrives: busy ones issuing back to back, idle ones that send
// their next request right after the signal, and ones whose look-up waits on a lock inside its handler.
// Then the process exits 0 within SHUTDOWN_TIMEOUT_MS.
// Raw sockets instead of fetch: fetch would retry and open new connections behind the test's back.
import t from 'tap'
import pg from 'pg'
import { httpRequest, KeepAliveConnection, type Outcome } from '../helpers/raw-http.js'
import { until } from './helpers/procs.js'
import { lockTable } from './helpers/inprocess.js'
import { spawnedScenario } from './helpers/service.js'

// The error code of an error answer (a 201 carries the unit's redeemable `code`, which is no error code).
const describe = (o: Outcome) => o.kind === 'response'
  ? `${o.response.status} ${o.response.status >= 400 ? o.response.json().code ?? '' : ''} connection=${o.response.headers.connection}`.replace('  ', ' ')
  : `no answer (${o.error})`

t.test('SIGTERM with busy, idle and waiting keep-alive connections: every request is answered, exit 0', async (t) => {
  const { databaseUrl, service, coupon } = await spawnedScenario(t, { env: { SHUTDOWN_TIMEOUT_MS: '10000' }, total: 1_000_000 })
  const issue = (userId: string) => httpRequest('POST', `/coupons/${coupon.id}/issues`, { body: JSON.stringify({ userId }) })

  let signalled = false
  let closingSeen = false
  // Busy: back to back on one connection each, until an answer says Connection: close or the connection
  // is closed between two requests (it asked nothing then). A request written gets an answer or it is a failure.
  const busyResults: { before: string[], after: string[] }[] = []
  const busy = Array.from({ length: 48 }, (_, w) => {
    const connection = new KeepAliveConnection(service.port)
    const result = { before: [] as string[], after: [] as string[] }
    busyResults.push(result)
    const done = (async () => {
      await connection.ready
      for (let i = 0; ; i++) {
        if (connection.closed) return
        const after = signalled
        const outcome = await connection.send(issue(`busy-${w}-${i}`))
        if (outcome.kind === 'closed' && outcome.error?.startsWith('not sent')) return
        ;(after ? result.after : result.before).push(describe(outcome))
        if (outcome.kind === 'response' && outcome.response.headers.connection === 'close') closingSeen = true
        if (outcome.kind === 'closed' || outcome.response.headers.connection === 'close') return
      }
    })()
    return { connection, done }
  })
  // Idle: one request each, then quiet until the signal.
  const idle = Array.from({ length: 24 }, () => new KeepAliveConnection(service.port))
  t.same((await Promise.all(idle.map((c, i) => c.send(issue(`idle-${i}`))))).map(describe), idle.map(() => '201 connection=keep-alive'), 'idle connections are open')
  // Waiting: look-ups inside their handler, blocked by a lock the test holds.
  const lock = await lockTable(t, databaseUrl, 'coupon_issues', 'ACCESS EXCLUSIVE')
  const watcher = new pg.Client({ connectionString: databaseUrl })
  await watcher.connect()
  t.teardown(() => watcher.end().catch(() => {}))
  const waiting = Array.from({ length: 4 }, () => new KeepAliveConnection(service.port))
  const waited = waiting.map((c, i) => c.send(httpRequest('GET', `/coupons/${coupon.id}/issues/idle-${i}`)))
  await until(async () => (await watcher.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE 'select%'")).rows[0].n >= waiting.length,
  10_000, 'the look-ups to wait on the lock')
  await until(() => busyResults.every((r) => r.before.length >= 5), 20_000, 'every busy connection to be issuing')

  const sigtermAt = Date.now()
  signalled = true
  service.child.kill('SIGTERM')
  // Once answers say Connection: close the server is closing: the idle connections' next requests meet it mid-close.
  await until(() => closingSeen, 5000, 'an answer with Connection: close')
  const late = await Promise.all(idle.map((c, i) => c.send(issue(`late-${i}`))))
  await Promise.all(busy.map((b) => b.done))
  t.equal(service.child.exitCode, null, 'still running while the look-ups are in flight')
  await lock.release()
  const looked = await Promise.all(waited)

  const code = await service.exited(10_000)
  const tookMs = Date.now() - sigtermAt
  t.equal(code, 0, 'exit code 0')
  t.ok(tookMs < 10_000, `exited within SHUTDOWN_TIMEOUT_MS (${tookMs} ms)`)

  const ok = (d: string) => d === '503 SHUTTING_DOWN connection=close' || d.startsWith('201 ')
  const all = busyResults.flatMap((r) => [...r.before, ...r.after])
  const afterSignal = busyResults.flatMap((r) => r.after)
  t.same(all.filter((d) => !ok(d)), [], `every busy request was answered, none cut: ${all.length} requests, ` +
    `${afterSignal.length} written after the signal, ${all.filter((d) => d.startsWith('503')).length} × 503 SHUTTING_DOWN`)
  t.same(busyResults.filter((r) => ![...r.before, ...r.after].at(-1)?.endsWith('connection=close')).length, 0,
    'every busy connection was told to close by its last answer')
  t.same(late.map(describe), idle.map(() => '503 SHUTTING_DOWN connection=close'),
    'idle connections stayed open for requests already on their way, and each got 503 SHUTTING_DOWN')
  t.same(looked.map(describe), waiting.map(() => '200 connection=close'), 'the look-ups in flight got their results')
  t.notMatch(service.output(), /killed by timeout/, 'close-with-grace did not have to kill the process')
})
