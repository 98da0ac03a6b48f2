// `npx tsx scripts/lua-cost.ts [--base DIR] [--calls N] [--keep DIR]`: what one issue.lua call costs Redis, counted in
// instructions (valgrind's callgrind), which repeat to a fraction of a per cent whatever else the machine
// does; on two shared cores a timed run cannot resolve a few per cent (docs/benchmarks.md). For this tree,
// and with --base for another checkout's issue.lua too, plus B's PING for scale: a throwaway redis-server
// under callgrind takes 1,000 calls, another one 1,000 + N, and the difference over N is the cost of a
// call (start-up, setup and shutdown cancel out). Each call issues a unit to a new user of a coupon with
// stock that never runs out, 50 in flight on one auto-pipelined connection, as the service sends them.
import { spawn, spawnSync } from 'node:child_process'
import { copyFileSync, readFileSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import { freePort } from './lib/ports.js'

const { values: f } = parseArgs({ options: { base: { type: 'string' }, calls: { type: 'string', default: '3000' }, keep: { type: 'string' } } })
const CALLS = Number(f.calls)
const WARM = 1000
const IN_FLIGHT = 50

if (spawnSync('valgrind', ['--version']).status !== 0) {
  console.error('lua-cost: valgrind is not installed (Debian: apt-get install valgrind)')
  process.exit(2)
}

/** issue.lua of a checkout with its includes inlined, as src/redis/scripts.ts loads it. */
function issueSource (root: string): string {
  const read = (path: string) => readFileSync(join(root, 'src/redis/scripts', path), 'utf8')
  return read('issue.lua').replace(/^-- @include (\S+)$/gm, (_, file: string) => read(`includes/${file}`))
}

type Workload = (redis: Redis, calls: number) => Promise<void>

const KEYS = ['meta', 'stock', 'holders', 'claims', 'events', 'idempotency', 'stats', 'codes', 'expiring'].map((k) => `lua-cost:coupon:{1}:${k}`)

const issues = (source: string): Workload => async (redis, calls) => {
  const sha = await redis.script('LOAD', source) as string
  // The counters a rebuild installs for a coupon of 10^9 units with codes (12 characters, no prefix), its
  // secret as long as the ones Postgres draws (32 hex digits, src/db/schema.ts): one sha1 block per code.
  await redis.hset(KEYS[0]!, { total: 1e9, perUserLimit: 1, startsAt: 0, codeSecret: '0123456789abcdef'.repeat(2), codePrefix: '', codeLength: 12, codeTail: '11' })
  await redis.set(KEYS[1]!, 1e9)
  for (const hash of [KEYS[2]!, KEYS[3]!, KEYS[7]!]) await redis.hset(hash, '#', 1)
  let next = 0
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next < calls) {
      const reply = await redis.evalsha(sha, KEYS.length, ...KEYS, `user-${next++}`, 0) as string
      if (!reply.startsWith('0|')) throw new Error(`issue.lua answered ${reply}`)
    }
  }))
}

const pings: Workload = async (redis, calls) => {
  let next = 0
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => { while (next++ < calls) await redis.ping() }))
}

/** Instructions a redis-server under callgrind executed from start to shutdown, with `calls` calls in between. */
async function instructions (workload: Workload, calls: number, keepAs?: string): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'lua-cost-'))
  const port = await freePort()
  const server = spawn('valgrind', ['--tool=callgrind', `--callgrind-out-file=${dir}/out`, 'redis-server', '--port', String(port), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  const exited = new Promise((resolve) => server.once('exit', resolve))
  // Under valgrind the server takes a few seconds to listen: ioredis retries until it does.
  const redis = new Redis({ port, enableAutoPipelining: true, maxRetriesPerRequest: null, retryStrategy: (times) => times > 300 ? null : 100 })
  redis.on('error', () => {})
  try {
    await redis.ping()
    await workload(redis, calls)
    await redis.shutdown('NOSAVE').catch(() => {})
  } finally {
    redis.disconnect()
  }
  await exited
  const summary = /^(?:summary|totals): (\d+)/m.exec(readFileSync(`${dir}/out`, 'utf8'))
  if (keepAs) copyFileSync(`${dir}/out`, keepAs)
  rmSync(dir, { recursive: true, force: true })
  if (!summary) throw new Error('no totals in the callgrind output')
  return Number(summary[1])
}

async function perCall (workload: Workload, keepAs?: string): Promise<number> {
  const [warm, more] = [await instructions(workload, WARM), await instructions(workload, WARM + CALLS, keepAs)]
  return Math.round((more - warm) / CALLS)
}

const targets: Array<[string, Workload]> = [['B\'s PING', pings], ['issue.lua, this tree', issues(issueSource(process.cwd()))]]
if (f.base) targets.push([`issue.lua, --base ${f.base}`, issues(issueSource(resolve(f.base)))])

console.log(`instructions per call in redis-server (callgrind; (${WARM} + ${CALLS} calls) - (${WARM} calls), ${IN_FLIGHT} in flight)`)
const results: number[] = []
for (const [[name, workload], i] of targets.map((t, i) => [t, i] as const)) {
  // --keep DIR: the larger run's callgrind file of each target, for callgrind_annotate (where the instructions go)
  const count = await perCall(workload, f.keep ? join(f.keep, `target-${i}.callgrind`) : undefined)
  results.push(count)
  console.log(`${name.padEnd(60)} ${count.toLocaleString('en-US').padStart(10)}`)
}
if (f.base) console.log(`this tree / --base: ${(results[1]! / results[2]!).toFixed(3)}`)
