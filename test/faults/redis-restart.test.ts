// Fault 3 (and 4, restarted empty): Redis is killed under load. While it is down every request gets a
// quick 503 REDIS_UNAVAILABLE, never a hang. Restarted from its AOF, issuing resumes where it was.
// Restarted empty, the counters are rebuilt from Postgres, the consumer group is recreated (NOGROUP),
// and issuing resumes without handing anything out twice.
import t from 'tap'
import { throwawayRedis, until } from './helpers/procs.js'
import { issue, load, type Call } from './helpers/invariants.js'
import { spawnedScenario } from './helpers/service.js'

const CLIENT_TIMEOUT_MS = 5000

t.test('Redis killed (kill -9) and restarted from its AOF under load', async (t) => {
  const redis = await throwawayRedis(t, { appendonly: true })
  const { service, coupon, check } = await spawnedScenario(t, { redis, env: { RECLAIM_MIN_IDLE_MS: '60000' }, total: 5000 })

  const running = load(() => service.base, coupon.id, { width: 4, maxCalls: 4000, timeoutMs: CLIENT_TIMEOUT_MS, maxMs: 60_000 })
  await until(() => running.calls.filter((c) => c.outcome === 'ok').length >= 50, 10_000, 'some issues before the kill')
  await redis.kill()
  const downFrom = running.calls.length
  // Redis stays down until a good number of requests have met it down.
  await until(() => running.calls.length - downFrom >= 200, 15_000, '200 requests while Redis is down')
  const whileDown = running.calls.slice(downFrom)
  await redis.start()
  const upFrom = running.calls.length
  await until(() => running.calls.slice(upFrom).filter((c) => c.outcome === 'ok').length >= 50, 20_000, 'issuing to resume after the restart')
  await running.stop()

  const unavailable = whileDown.filter((c) => c.code === 'REDIS_UNAVAILABLE')
  t.ok(unavailable.length > 10, `requests while Redis was down got 503 REDIS_UNAVAILABLE (${unavailable.length} of ${whileDown.length})`)
  t.ok(whileDown.every((c) => c.outcome !== 'timed-out'), 'no request hung while Redis was down')
  t.ok(unavailable.every((c) => c.status === 503), 'REDIS_UNAVAILABLE is a 503')
  const summary = await check(t, running.calls)
  t.ok(summary.rows.length >= summary.ok.length, 'every 201 from before, during and after the outage is persisted')
  t.equal(service.child.exitCode, null, 'the service rode out the outage')
})

t.test('Redis restarted empty: counters rebuilt from Postgres, group recreated, nothing issued twice', async (t) => {
  const redis = await throwawayRedis(t, { appendonly: true })
  // The periodic consistency check (second 30 of every minute) reads the stream with XRANGE too;
  // off here, so the XRANGE count below counts rebuilds only.
  const env = { RECLAIM_MIN_IDLE_MS: '60000', CONSISTENCY_CRON: '' }
  const { service, coupon, total, check } = await spawnedScenario(t, { redis, env, total: 100 })
  const calls: Call[] = []
  for (let i = 0; i < 40; i++) calls.push(await issue(service.base, coupon.id, `early-${i}`))
  // Let the consumer persist these first: entries still in a wiped Redis are lost by definition.
  await check(t, calls)

  await redis.wipe()
  await redis.start()
  t.equal(await redis.client.dbsize(), 0, 'Redis came back empty')

  // Everyone again, early users included, plus newcomers: only the 60 units left may go out.
  const again = await Promise.all(Array.from({ length: 120 }, (_, i) =>
    issue(service.base, coupon.id, i < 40 ? `early-${i}` : `late-${i}`, { timeoutMs: CLIENT_TIMEOUT_MS })))
  const retryable = again.filter((c) => c.code === 'RESTORING' || c.code === 'REDIS_UNAVAILABLE')
  for (const call of retryable) Object.assign(call, await issue(service.base, coupon.id, call.userId))
  calls.push(...again)
  // The rebuild reads the stream with XRANGE; with the consistency watch off nothing else does
  // (the lag gauge reads it only on a /metrics scrape, which this test never makes).
  const xrangeCalls = Number(/cmdstat_xrange:calls=(\d+)/.exec(await redis.client.info('commandstats'))?.[1] ?? 0)
  t.equal(xrangeCalls, 1, 'the counters were rebuilt once, under the lock, for 120 concurrent requests')
  t.same(again.slice(0, 40).map((c) => c.code), Array(40).fill('ALREADY_ISSUED'), 'users persisted before the wipe are still known')
  t.equal(again.filter((c) => c.outcome === 'ok').length, 60, 'exactly the 60 units left are issued')

  const summary = await check(t, calls)
  t.equal(summary.rows.length, total, 'sold out, each unit once')
  t.equal(service.child.exitCode, null)
})

t.test('Redis frozen (SIGSTOP: connections open, no answers): a 503 within the command timeout, not a hang', async (t) => {
  const redis = await throwawayRedis(t, { appendonly: true })
  const { service, coupon, check } = await spawnedScenario(t, { redis, env: { RECLAIM_MIN_IDLE_MS: '60000', REDIS_COMMAND_TIMEOUT_MS: '1000' }, total: 100 })
  const calls: Call[] = []
  for (let i = 0; i < 5; i++) calls.push(await issue(service.base, coupon.id, `before-${i}`))
  t.teardown(() => redis.signal('SIGCONT'))
  redis.signal('SIGSTOP')
  const frozen = await Promise.all(Array.from({ length: 8 }, (_, i) => issue(service.base, coupon.id, `frozen-${i}`, { timeoutMs: CLIENT_TIMEOUT_MS })))
  redis.signal('SIGCONT')
  t.same(frozen.map((c) => `${c.status} ${c.code}`), Array(8).fill('503 REDIS_UNAVAILABLE'), 'every call answered 503 REDIS_UNAVAILABLE, none hung')
  calls.push(...frozen)
  await until(async () => (await issue(service.base, coupon.id, 'probe')).status !== 503, 10_000, 'Redis to answer again')
  calls.push({ userId: 'probe', outcome: 'timed-out', status: null, ms: 0 })
  for (let i = 0; i < 5; i++) calls.push(await issue(service.base, coupon.id, `after-${i}`))
  t.equal(calls.filter((c) => c.userId.startsWith('after-') && c.outcome === 'ok').length, 5, 'issuing resumes')
  await check(t, calls, { expectNoTimeouts: false })
})
