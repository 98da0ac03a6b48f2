// Fault 9: two instances share the consumer group; one is killed in the middle of a batch. The survivor
// takes over the dead one's entries only once they are idle longer than RECLAIM_MIN_IDLE_MS, and
// nothing is lost.
import { hostname } from 'node:os'
import t from 'tap'
import { spawnService, until } from './helpers/procs.js'
import { load } from './helpers/invariants.js'
import { lockTable } from './helpers/inprocess.js'
import { spawnedScenario } from './helpers/service.js'
import { CONSUMER_GROUP } from '../../src/redis/keys.js'

const MIN_IDLE_MS = 3000

t.test('two instances, one killed mid-batch: the survivor claims only entries idle > RECLAIM_MIN_IDLE_MS, nothing lost', async (t) => {
  const { env, databaseUrl, redis, service: a, coupon, stream, check } = await spawnedScenario(t, {
    env: { RECLAIM_MIN_IDLE_MS: String(MIN_IDLE_MS), RECLAIM_CRON: '* * * * * *', CONSUMER_BATCH_SIZE: '50' },
    total: 1000
  })
  const b = await spawnService(t, env)
  const nameA = `${hostname()}-${a.child.pid}`
  const nameB = `${hostname()}-${b.child.pid}`
  const owners = async () => await redis.xpending(stream, CONSUMER_GROUP, '-', '+', 10_000) as [string, string, number, number][]

  // Both consumers end up in the middle of a batch whose insert waits on this lock.
  const lock = await lockTable(t, databaseUrl, 'coupon_issues')
  let turn = 0
  const running = load(() => (turn++ % 2 === 0 ? a : b).base, coupon.id, { width: 6, maxCalls: 3000, maxMs: 60_000 })
  await until(async () => {
    const pending = await owners()
    return pending.some(([, c]) => c === nameA) && pending.some(([, c]) => c === nameB)
  }, 15_000, 'both instances to hold a batch')
  await running.stop()
  await a.kill9()

  // Watch A's entries change hands; each must have been idle at least MIN_IDLE_MS when B took it.
  const seen = new Map<string, { idle: number, at: number }>()
  for (const [id, , idle] of await owners()) seen.set(id, { idle: Number(idle), at: Date.now() })
  const ofA = new Set((await owners()).filter(([, c]) => c === nameA).map(([id]) => id))
  t.ok(ofA.size > 0, `the dead instance left ${ofA.size} entries pending`)
  const tooEarly: string[] = []
  const takenOver = new Set<string>()
  await until(async () => {
    const now = Date.now()
    for (const [id, consumer, idle] of await owners()) {
      if (!ofA.has(id)) continue
      if (consumer === nameA) {
        seen.set(id, { idle: Number(idle), at: now })
      } else if (!takenOver.has(id)) {
        takenOver.add(id)
        const last = seen.get(id)!
        // Upper bound of its idle time at the claim: last seen idle plus the time since.
        if (last.idle + (now - last.at) < MIN_IDLE_MS) tooEarly.push(id)
      }
    }
    return [...ofA].every((id) => takenOver.has(id))
  }, 20_000, 'the survivor to take over the dead instance\'s entries')
  t.same(tooEarly, [], 'no entry was claimed before it was idle for RECLAIM_MIN_IDLE_MS')
  t.equal(takenOver.size, ofA.size, 'every entry of the dead instance was taken over')

  await lock.release()
  const summary = await check(t, running.calls)
  t.equal(summary.rows.length, summary.ok.length, 'nothing lost')
  t.equal(b.child.exitCode, null, 'the survivor is still running')
})
