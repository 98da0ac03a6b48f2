// Fault 10: SIGTERM under load. The service stops accepting (503 SHUTTING_DOWN while closing, then the
// port closes), finishes the requests in flight, commits and acknowledges the batch in hand, and exits
// 0 within 10 s.
import t from 'tap'
import pg from 'pg'
import { spawnService, until } from './helpers/procs.js'
import { groupState, load } from './helpers/invariants.js'
import { lockTable } from './helpers/inprocess.js'
import { spawnedScenario } from './helpers/service.js'

t.test('SIGTERM under load: in-flight requests finish, the batch in hand is committed and acked, exit 0 within 10 s', async (t) => {
  const { env, databaseUrl, redis, service, coupon, stream, check } = await spawnedScenario(t, { env: { RECLAIM_MIN_IDLE_MS: '60000' }, total: 10_000 })

  // The consumer's insert and a read request both wait on this lock when SIGTERM arrives.
  const lock = await lockTable(t, databaseUrl, 'coupon_issues', 'ACCESS EXCLUSIVE')
  const running = load(() => service.base, coupon.id, { width: 6, maxCalls: 5000, timeoutMs: 12_000, maxMs: 60_000 })
  await until(() => running.calls.filter((c) => c.outcome === 'ok').length >= 100, 10_000, 'load to be issuing')
  await until(async () => (await groupState(redis, stream)).pending > 0, 10_000, 'the consumer to hold a batch')
  const inFlight = fetch(`${service.base}/coupons/${coupon.id}/issues/u0`, { signal: AbortSignal.timeout(12_000) })
    .then(async (r) => ({ status: r.status, body: await r.json() as any }), (err) => ({ status: 0, body: String(err) }))
  const watcher = new pg.Client({ connectionString: databaseUrl })
  await watcher.connect()
  t.teardown(() => watcher.end().catch(() => {}))
  await until(async () => (await watcher.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE 'select%'")).rows[0].n > 0,
  10_000, 'the read request to be in flight, waiting on the lock')

  const sigtermAt = Date.now()
  const callsBefore = running.calls.length
  service.child.kill('SIGTERM')
  await until(() => running.calls.slice(callsBefore).some((c) => c.code === 'SHUTTING_DOWN' || c.outcome === 'conn-error'), 5000, 'new requests to be turned away')
  t.equal(service.child.exitCode, null, 'still running while a request is in flight')
  await lock.release()

  const code = await service.exited(10_000)
  const tookMs = Date.now() - sigtermAt
  t.equal(code, 0, 'exit code 0')
  t.ok(tookMs < 10_000, `exited within 10 s (${tookMs} ms)`)
  const answered = await inFlight
  t.equal(answered.status, 200, 'the in-flight request was answered')
  await running.stop()

  const after = running.calls.slice(callsBefore)
  t.ok(after.every((c) => c.outcome === 'ok' || c.outcome === 'conn-error' || c.code === 'SHUTTING_DOWN'),
    'after SIGTERM a call was either finished, answered 503 SHUTTING_DOWN, or refused by a closed port')
  t.ok(after.filter((c) => c.code === 'SHUTTING_DOWN').every((c) => c.status === 503), 'SHUTTING_DOWN is a 503')
  t.equal((await groupState(redis, stream)).pending, 0, 'the batch in hand was committed and acknowledged before exit')
  t.notMatch(service.output(), /stopping with an uncommitted batch/, 'no batch left uncommitted')

  // What was issued after the consumer's last read is persisted by the next process.
  await spawnService(t, env)
  await check(t, running.calls)
})
