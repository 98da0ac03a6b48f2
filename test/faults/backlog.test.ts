// Fault 12: Postgres blocked, the stream grows, and above BACKLOG_CAP the issue endpoint sheds load with
// 503 BACKLOG_FULL; under Redis maxmemory with noeviction a refused write leaves stock unchanged.
import t from 'tap'
import { uniquePrefix } from '../helpers/env.js'
import { issue, type Call } from './helpers/invariants.js'
import { inProcessScenario, lockTable } from './helpers/inprocess.js'
import { throwawayRedis } from './helpers/procs.js'

t.test('above BACKLOG_CAP unpersisted entries the endpoint sheds load with 503 BACKLOG_FULL', async (t) => {
  const { app, base, coupon, k, check } = await inProcessScenario(t, { BACKLOG_CAP: '20', RECLAIM_MIN_IDLE_MS: '60000' }, 100)
  const lock = await lockTable(t, app.env.databaseUrl, 'coupon_issues')
  const calls: Call[] = []
  for (let i = 0; i < 30; i++) calls.push(await issue(base, coupon.id, `u${i}`))
  t.equal(calls.filter((c) => c.outcome === 'ok').length, 20, 'the first 20 are issued')
  t.same(calls.slice(20).map((c) => `${c.status} ${c.code}`), Array(10).fill('503 BACKLOG_FULL'), 'then load is shed')
  t.equal(await app.redis.get(k.stock), '80', 'shed requests took no stock')
  t.equal(await app.redis.hget(k.holders, 'u25'), null, 'nor marked the user')

  await lock.release()
  await check(t, calls)
  const resumed = await issue(base, coupon.id, 'u25')
  t.equal(resumed.outcome, 'ok', 'once the backlog is persisted, issuing resumes')
  calls.push(resumed)
  await check(t, calls)
})

t.test('Redis at maxmemory (noeviction): the issue is refused with a 503, stock unchanged; the consumer still acks', async (t) => {
  const redis = await throwawayRedis(t, { appendonly: false })
  const prefix = uniquePrefix(t, redis.url)
  const { app, base, coupon, k, check } = await inProcessScenario(t, { REDIS_URL: redis.url, REDIS_PREFIX: prefix, RECLAIM_MIN_IDLE_MS: '60000' }, 100)
  const lock = await lockTable(t, app.env.databaseUrl, 'coupon_issues')
  const calls: Call[] = []
  for (let i = 0; i < 5; i++) calls.push(await issue(base, coupon.id, `u${i}`))

  // Well below what is in use, so every write is refused (near the limit the outcome depends on buffers).
  const used = Number(/used_memory:(\d+)/.exec(await redis.client.info('memory'))![1])
  await redis.client.config('SET', 'maxmemory', String(Math.floor(used / 2)))
  const oom = await redis.client.set('probe', 'x').then(() => false, (err: Error) => /OOM/.test(err.message))
  t.ok(oom, 'Redis is out of memory')
  const stock = await redis.client.get(k.stock)
  const refused = await issue(base, coupon.id, 'oom-victim')
  t.equal(refused.status, 503, 'refused with a 503')
  t.ok(refused.code, `with a code (${refused.code})`)
  t.equal(await redis.client.get(k.stock), stock, 'stock unchanged')
  t.equal(await redis.client.hget(k.holders, 'oom-victim'), null, 'the user holds nothing')
  calls.push(refused)

  // Acknowledging and trimming is what frees memory: it must work while Redis is full.
  await lock.release()
  await check(t, calls)
  t.equal(await redis.client.xlen(k.events), 0, 'the persisted entries were trimmed while Redis was out of memory')

  await redis.client.config('SET', 'maxmemory', '0')
  const resumed = await issue(base, coupon.id, 'oom-victim')
  t.equal(resumed.outcome, 'ok', 'issuing resumes once memory is available')
  calls.push(resumed)
  await check(t, calls)
})
