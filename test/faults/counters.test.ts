// Fault 4: the counter keys vanish while the stream still holds unpersisted issues; fault 8: the issue
// script hits a key of the wrong type. Run in-process against the shared Redis (own prefix) and Postgres
// (own database).
import t from 'tap'
import { inParallel, waitFor } from '../helpers/env.js'
import { groupState, issue, type Call } from './helpers/invariants.js'
import { inProcessScenario, lockTable } from './helpers/inprocess.js'

t.test('counter keys deleted while the stream holds unpersisted issues: rebuilt from Postgres + stream', async (t) => {
  const { app, base, coupon, total, k, check } = await inProcessScenario(t, { RECLAIM_MIN_IDLE_MS: '60000' }, 50)

  // Nothing can reach Postgres: every issue lives only in the stream.
  const lock = await lockTable(t, app.env.databaseUrl, 'coupon_issues')
  const calls: Call[] = await inParallel(30, 8, (i) => issue(base, coupon.id, `early-${i}`))
  t.equal(calls.filter((c) => c.outcome === 'ok').length, 30)
  t.equal(await app.redis.xlen(k.events), 30, 'the 30 issues are only in the stream')

  await app.redis.del(k.meta, k.stock, k.holders, k.claims)
  // Early users again (must be refused) and newcomers racing for the 20 units left.
  const again = await inParallel(70, 16, (i) => issue(base, coupon.id, i < 30 ? `early-${i}` : `late-${i}`))
  for (const call of again.filter((c) => c.code === 'RESTORING')) Object.assign(call, await issue(base, coupon.id, call.userId))
  calls.push(...again)
  t.same(again.slice(0, 30).map((c) => c.code), Array(30).fill('ALREADY_ISSUED'), 'users whose issue is only in the stream are still known')
  t.equal(again.filter((c) => c.outcome === 'ok').length, 20, 'only the 20 units left go out: not re-seeded from Postgres alone')
  t.equal(await app.redis.get(k.stock), '0', 'the counter stops at 0')

  await lock.release()
  const summary = await check(t, calls)
  t.equal(summary.rows.length, total)
})

t.test('issue script fails halfway (stream key holds the wrong type): stock unchanged, 503 ISSUE_SCRIPT_FAILED', async (t) => {
  const { app, base, coupon, k, check } = await inProcessScenario(t, { RECLAIM_MIN_IDLE_MS: '60000' }, 20)
  const calls: Call[] = []
  for (let i = 0; i < 5; i++) calls.push(await issue(base, coupon.id, `before-${i}`))
  await waitFor(async () => { const s = await groupState(app.redis, k.events); return s.pending === 0 && s.length === 0 }, { what: 'the first issues to be persisted' })

  await app.redis.del(k.events)
  await app.redis.set(k.events, 'not a stream')
  const stockBefore = await app.redis.get(k.stock)
  const failed = await issue(base, coupon.id, 'victim')
  t.equal(failed.status, 503)
  t.equal(failed.code, 'ISSUE_SCRIPT_FAILED')
  t.equal(await app.redis.get(k.stock), stockBefore, 'stock unchanged')
  t.equal(await app.redis.hget(k.holders, 'victim'), null, 'the user holds nothing')
  t.equal(await app.redis.hget(k.claims, 'victim'), null, 'no claim number was used up')
  calls.push(failed)

  // Repaired by an operator: the consumer recreates its group and issuing resumes for the same user.
  await app.redis.del(k.events)
  const retried = await issue(base, coupon.id, 'victim')
  t.equal(retried.outcome, 'ok', 'the same user is issued once the key is fixed')
  calls.push(retried)
  await check(t, calls)
})
