// Issue throughput for many coupons at once: one Redis against a Redis Cluster of 3 primaries and 3
// replicas (issue 10). Both targets are throwaway redis-servers on free loopback ports with the same
// settings (AOF, appendfsync everysec), the service is the built one (`node dist/server.js`) in a child
// process, and the load is the same: one autocannon per coupon, fresh userIds, stock that never runs out.
// Afterwards: how long until Postgres holds every 201 (the consumer's lag at the end of the rush).
// Target cluster-wait is the cluster with REDIS_WAIT_REPLICAS=1 (each primary waits for its replica);
// --rounds repeats the targets in turn, so a busy machine's swings hit each of them alike.
//   npm run bench:cluster -- [--coupons 12] [--connections 96] [--seconds 10] [--rounds 1] [--targets single,cluster,cluster-wait]
import { parseArgs } from 'node:util'
import { availableParallelism, loadavg } from 'node:os'
import { loadConfig } from '../src/config.js'
import { ADMIN_TOKEN, createScratchDatabase, scratchPrefix } from './lib/infra.js'
import { startChildServer } from './lib/server.js'
import { runCannon } from './lib/cannon.js'
import { throwawayCluster, throwawayRedis } from '../test/faults/helpers/procs.js'

const { values } = parseArgs({
  options: {
    coupons: { type: 'string', default: '12' },
    connections: { type: 'string', default: '96' },
    seconds: { type: 'string', default: '10' },
    targets: { type: 'string', default: 'single,cluster' },
    rounds: { type: 'string', default: '1' }
  }
})
const coupons = Number(values.coupons)
const connections = Number(values.connections)
const seconds = Number(values.seconds)
const SETTINGS = ['--appendfsync', 'everysec']

async function measure (target: string) {
  const teardowns: Array<() => unknown> = []
  const t = { teardown: (fn: () => unknown) => { teardowns.push(fn) } }
  try {
    const redisEnv = target.startsWith('cluster')
      ? { ...(await throwawayCluster(t, { args: SETTINGS })).env, ...(target === 'cluster-wait' ? { REDIS_WAIT_REPLICAS: '1' } : {}) }
      : { REDIS_URL: (await throwawayRedis(t, { args: SETTINGS })).url }
    const database = await createScratchDatabase('clusterbench')
    teardowns.push(database.drop)
    const config = loadConfig({ ...redisEnv, DATABASE_URL: database.url, REDIS_PREFIX: scratchPrefix('clusterbench'), ADMIN_TOKEN, LOG_LEVEL: 'warn' })
    const server = await startChildServer('app', config)
    teardowns.push(() => server.close())
    const admin = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }
    const ids: number[] = []
    for (let i = 0; i < coupons; i++) {
      // the largest stock the API takes: no coupon sells out during a run
      const created = await fetch(`${server.url}/coupons`, { method: 'POST', headers: admin, body: JSON.stringify({ name: `bench ${i}`, totalQuantity: 10_000_000 }) })
      if (created.status !== 201) throw new Error(`coupon not created: ${created.status} ${await created.text()}`)
      ids.push((await created.json() as { id: number }).id)
    }
    const load = loadavg()[0]!
    const results = await Promise.all(ids.map((id, i) => runCannon({
      url: server.url,
      path: `/coupons/${id}/issues`,
      connections: Math.max(1, Math.round(connections / coupons)),
      duration: seconds,
      userOf: (j) => `c${i}-u${j}`,
      collectOutcomes: true
    })))
    const ended = Math.max(...results.map((r) => r.endedAt))
    const issued = results.reduce((n, r) => n + (r.statuses['201'] ?? 0), 0)
    const others: Record<string, number> = {}
    for (const r of results) for (const [key, n] of Object.entries(r.outcomes)) if (!key.startsWith('201')) others[key] = (others[key] ?? 0) + n
    const persisted = async () => {
      const page = await (await fetch(`${server.url}/coupons?limit=200`, { headers: admin })).json() as { items: Array<{ persistedIssued: number }> }
      return page.items.reduce((n, c) => n + c.persistedIssued, 0)
    }
    while (await persisted() < issued) await new Promise((resolve) => setTimeout(resolve, 100))
    const persistedAfterMs = Date.now() - ended
    return {
      target,
      rps: Math.round(results.reduce((n, r) => n + r.requests, 0) / seconds),
      p50: Math.max(...results.map((r) => r.latencyMs.p50)),
      p99: Math.max(...results.map((r) => r.latencyMs.p99)),
      issued,
      notIssued: others,
      errors: results.reduce((n, r) => n + r.errors + r.timeouts, 0),
      persistedAfterMs,
      /** 201s answered and persisted per second: the rush's seconds plus the time Postgres needed after it */
      issuedWithCatchUp: Math.round(issued / (seconds + persistedAfterMs / 1000)),
      loadBefore: load.toFixed(2)
    }
  } finally {
    for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => {})
  }
}

console.log(`${coupons} coupons, ${connections} connections, ${seconds} s, ${availableParallelism()} cores`)
const targets = String(values.targets).split(',')
for (let round = 0; round < Number(values.rounds); round++) {
  for (const target of targets) {
    const r = await measure(target)
    console.log(`round ${round + 1} ${r.target}: ${r.rps} req/s, p50 ${r.p50} ms, p99 ${r.p99} ms, ${r.issued} issued (${r.issuedWithCatchUp}/s incl. catch-up), ` +
      `other answers ${JSON.stringify(r.notIssued)}, ${r.errors} socket errors/timeouts; all persisted ${r.persistedAfterMs} ms after the last answer (load average before: ${r.loadBefore})`)
  }
}
process.exit(0)
