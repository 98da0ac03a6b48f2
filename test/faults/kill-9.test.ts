// Fault 1: the process dies by kill -9 while Postgres is locked and at random points under load
// (often in the middle of a batch insert). The next process reclaims what the dead one left pending
// (XAUTOCLAIM) and persists it: nothing lost, nothing twice.
import t from 'tap'
import pg from 'pg'
import { spawnService, until } from './helpers/procs.js'
import { groupState, load, type Call } from './helpers/invariants.js'
import { spawnedScenario } from './helpers/service.js'

t.test('kill -9 while Postgres is locked and at random points: reclaimed, no loss, no duplicates', async (t) => {
  const scenario = await spawnedScenario(t, { env: { RECLAIM_MIN_IDLE_MS: '500', RECLAIM_CRON: '* * * * * *', CONSUMER_BATCH_SIZE: '20' }, total: 400 })
  const { env, databaseUrl, redis, coupon, stream, check } = scenario
  let { service } = scenario
  const calls: Call[] = []

  // Round 0: Postgres holds a lock the insert needs, so the consumer sits in the middle of its batch.
  const locker = new pg.Client({ connectionString: databaseUrl })
  await locker.connect()
  t.teardown(() => locker.end().catch(() => {}))
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE coupon_issues IN SHARE MODE')
  const locked = load(() => service.base, coupon.id, { userPrefix: 'locked-', maxCalls: 60 })
  await locked.done
  calls.push(...locked.calls)
  t.equal(locked.calls.filter((c) => c.outcome === 'ok').length, 60, 'issuing works while the insert is blocked')
  const before = await groupState(redis, stream)
  t.ok(before.pending > 0, `the dead-to-be consumer holds pending entries (${before.pending})`)
  await service.kill9()
  await locker.query('ROLLBACK')

  // Rounds 1..4: kill at a random moment under load.
  for (let round = 1; round <= 4; round++) {
    service = await spawnService(t, env)
    const running = load(() => service.base, coupon.id, { userPrefix: `r${round}-`, width: 6, maxCalls: 500 })
    // A random moment: after a random number of issues, so the kill lands mid-rush on any machine speed.
    const killAfter = 5 + Math.floor(Math.random() * 60)
    await until(() => running.calls.filter((c) => c.outcome === 'ok').length >= killAfter, 15_000, `${killAfter} issues before the kill`)
    await service.kill9()
    await running.stop()
    calls.push(...running.calls)
  }

  // The last process lives: it must reclaim everything the dead ones left.
  service = await spawnService(t, env)
  const summary = await check(t, calls)
  t.ok(summary.ok.length > 60, `issued across the kills (${summary.ok.length} ok, ${summary.timedOut.length + summary.connErrors.length} cut off by a kill)`)
})
