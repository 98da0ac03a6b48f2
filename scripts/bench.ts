// `npm run bench`: the issue endpoint and the consumer measured side by side with their baselines,
// in one run, under one load generator with one set of settings. See docs/load-and-bench.md.
//   A  bare Fastify route, same options and body schema as the service, no I/O
//   B  the same route plus one Redis round trip
//   issue    the real endpoint, stock that never runs out (every request wins)
//   soldout  the real endpoint on a sold-out coupon (every request loses)
//   nopersist  diagnostic: the winning run on a service with its consumer off (own key prefix), to show
//            what persisting in the same process costs the endpoint
//   split    the winning run on a service with its consumer off plus `npm run consume` as its own
//            process (own key prefix); CPU µs/req counts the web process only, the consumer's is shown apart
//   consumer the stream -> Postgres loop against a raw unnest INSERT loop on the same table
//   issue0, nopersist0  with --base DIR: issue and nopersist on the built service of another checkout (the
//            "before" tree of a change), in the same rounds, so a change is compared with its parent in one run
//   replicated, wait  (only when named in --only) the winning run against a Redis primary with one replica,
//            both started for the run: REDIS_WAIT_REPLICAS=0 and =1 (src/redis/replication-fence.ts), to
//            show what waiting for the replica costs
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import pg from 'pg'
import { createKeys } from '../src/redis/keys.js'
import { sampleBacklog, waitForRows } from './lib/backlog.js'
import { runCannon, type CannonResult } from './lib/cannon.js'
import { consumerBench, variantLabel, type ConsumerBenchResult } from './lib/consumer-bench.js'
import { int, machine, ms, table } from './lib/format.js'
import { ADMIN_TOKEN, REDIS_URL, createScratch, scratchConfig } from './lib/infra.js'
import { freePort } from './lib/ports.js'
import { startChildServer, startConsumerProcess, type RunningServer } from './lib/server.js'

const { values: f } = parseArgs({
  options: {
    connections: { type: 'string', default: '100' },
    duration: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '3' },
    rows: { type: 'string', default: '50000' },
    // rows per statement of the raw insert (and COPY) loops the consumer is measured against
    batches: { type: 'string', default: '500,1000,2000,4000' },
    // also measure COPY at those batch sizes (idempotent through a temp table, and bare)
    copy: { type: 'boolean', default: false },
    only: { type: 'string', default: 'a,b,issue,soldout,nopersist,split,consumer' },
    'log-level': { type: 'string' },
    'cpu-prof': { type: 'string' },
    // V8/Node flags for every server of the run (baselines too, so the ratios stay fair), space-separated
    'node-flags': { type: 'string', default: '' },
    // another checkout (built: npm run build there) whose service also runs issue and nopersist, as issue0 / nopersist0
    base: { type: 'string' },
    json: { type: 'boolean', default: false }
  }
})
const connections = Number(f.connections)
const duration = Number(f.duration)
const rounds = Number(f.rounds)
const warmup = Number(f.warmup)
const only = new Set(f.only.split(','))
const say = f.json ? () => {} : (s: string) => console.error(s)

type Target = 'a' | 'b' | 'issue' | 'issue0' | 'soldout' | 'nopersist' | 'nopersist0' | 'split' | 'replicated' | 'wait'
if (f.base) for (const t of ['issue', 'nopersist']) if (only.has(t)) only.add(`${t}0`)
const TARGETS: Target[] = (['a', 'b', 'issue', 'issue0', 'soldout', 'nopersist', 'nopersist0', 'split', 'replicated', 'wait'] as const).filter((t) => only.has(t))
const LABELS: Record<Target, string> = {
  a: 'A bare route',
  b: 'B + 1 Redis call',
  issue: 'issue (winning)',
  issue0: 'issue (winning), --base',
  soldout: 'issue (sold out)',
  nopersist: 'issue, consumer off',
  nopersist0: 'consumer off, --base',
  split: 'issue, consumer process',
  replicated: 'issue, replica, no WAIT',
  wait: 'issue, REDIS_WAIT_REPLICAS=1'
}
const WINNING: Target[] = ['issue', 'issue0', 'split', 'replicated', 'wait']

/** A Redis primary and one replica of it on free ports, for the WAIT targets; gone at close(). */
async function replicaPair () {
  const started: { child: ChildProcess, dir: string }[] = []
  const start = async (args: string[]) => {
    const port = await freePort()
    const dir = mkdtempSync(join(tmpdir(), 'couponrush-bench-redis-'))
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', ...args], { stdio: 'ignore' })
    started.push({ child, dir })
    // Not listening yet for a moment: a client that keeps retrying, and a PING that waits for it.
    const client = new Redis(port, '127.0.0.1', { retryStrategy: () => 50, maxRetriesPerRequest: null })
    client.on('error', () => {})
    await client.ping()
    return { port, client }
  }
  const primary = await start([])
  const replica = await start(['--replicaof', '127.0.0.1', String(primary.port)])
  for (let i = 0; !/master_link_status:up/.test(await replica.client.info('replication')); i++) {
    if (i > 200) throw new Error('the bench replica did not sync')
    await sleep(50)
  }
  replica.client.disconnect()
  return {
    url: `redis://127.0.0.1:${primary.port}`,
    client: primary.client,
    close () {
      primary.client.disconnect()
      for (const { child, dir } of started) {
        child.kill('SIGKILL')
        rmSync(dir, { recursive: true, force: true })
      }
    }
  }
}

/**
 * CPU time every process on the machine spent, µs (/proc/stat: user, nice, system, irq, softirq, steal;
 * 100 ticks a second), minus this process's (the load generator and the bench's own polling). So it
 * counts the service, its consumer, Redis and Postgres together: on a machine where they share the cores,
 * requests/s of two targets cannot differ by more than their machine CPU per request does.
 */
function othersCpuMicros (): number {
  const [, user, nice, system, , , irq, softirq, steal] = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!.trim().split(/\s+/).map(Number)
  const own = process.cpuUsage()
  return (user! + nice! + system! + irq! + softirq! + steal!) * 10_000 - (own.user + own.system)
}

/**
 * CPU time of every process whose name starts with `name` (redis-server, postgres), µs: what each live one
 * spent plus what its exited, waited-for children spent (Postgres backends that closed). Splits the
 * machine CPU of a winning request into Redis, Postgres and the rest, so a difference between two
 * trees can be placed.
 */
function processCpuMicros (name: string): number {
  let ticks = 0
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    let stat: string
    try { stat = readFileSync(`/proc/${pid}/stat`, 'latin1') } catch { continue } // exited meanwhile
    if (!stat.slice(stat.indexOf('(') + 1).startsWith(name)) continue
    const fields = stat.slice(stat.lastIndexOf(') ') + 2).split(' ')
    ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]) // utime stime cutime cstime
  }
  return ticks * 10_000
}

interface Slice {
  /** every process but the bench's own (service, consumer, Redis, Postgres) per request, µs, up to Postgres complete for winning runs */
  machineCpuUsPerRequest: number
  /** of which every redis-server, and every postgres process, per request, µs */
  redisCpuUsPerRequest: number
  postgresCpuUsPerRequest: number
  rps: number
  /** server process CPU (user + system) per request, µs: far less disturbed by other load than req/s */
  cpuUsPerRequest: number
  requests: number
  seconds: number
  latencyMs: CannonResult['latencyMs']
  statuses: Record<string, number>
  errors: number
  timeouts: number
  /** issue only: largest unpersisted backlog during the slice, ms from its last response to Postgres complete */
  maxBacklog?: number
  persistenceLagMs?: number
  /** split only: the consumer process's CPU per request, µs */
  consumerCpuUsPerRequest?: number
}
interface HttpRun {
  /** total requests / total seconds over every round */
  rps: number
  /** total server CPU / total requests over every round, µs */
  cpuUsPerRequest: number
  /** the same for the CPU of every process but the bench's own (Slice.machineCpuUsPerRequest) */
  machineCpuUsPerRequest: number
  /** of which Redis, and Postgres (Slice.redisCpuUsPerRequest) */
  redisCpuUsPerRequest: number
  postgresCpuUsPerRequest: number
  /**
   * winning runs only: total requests / (total seconds + the time Postgres needed after each slice's last
   * response to hold every issue) — the rate at which issues are answered AND persisted
   */
  rpsWithCatchUp?: number
  /** median over the rounds of each percentile */
  latencyMs: CannonResult['latencyMs']
  statuses: Record<string, number>
  errors: number
  slices: Slice[]
}

const child = { cpuProfDir: f['cpu-prof'], nodeFlags: f['node-flags'].split(' ').filter(Boolean) }
const scratch = await createScratch('bench')
const env: Record<string, string> = f['log-level'] ? { LOG_LEVEL: f['log-level'] } : {}
// The consumer's settings may be varied from the environment (e.g. CONSUMER_BATCH_SIZE=4000 npm run bench).
for (const name of ['CONSUMER_BATCH_SIZE', 'CONSUMER_LINGER_MS']) if (process.env[name]) env[name] = process.env[name]
const config = scratchConfig(scratch, env)
const http: Partial<Record<Target, HttpRun>> = {}
let consumer: ConsumerBenchResult | null = null
let serverRssMb: number[] = []
const started = new Date()
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!

try {
  if (TARGETS.length > 0) {
    // Every server is up for the whole run and the targets take turns, in a rotating order, so
    // background load on a shared machine falls on all of them alike instead of on whoever ran last.
    const servers = {
      a: only.has('a') ? await startChildServer('bare', config, child) : null,
      b: only.has('b') ? await startChildServer('redis', config, child) : null,
      app: only.has('issue') || only.has('soldout') ? await startChildServer('app', config, child) : null,
      // Its own prefix, so the other server's consumer does not persist its issues either.
      noConsumer: only.has('nopersist')
        // No backlog cap: with nothing persisting, the default cap would turn the run into cheap 503s.
        ? await startChildServer('app', { ...config, redisPrefix: `${config.redisPrefix}nc:`, consumer: { ...config.consumer, enabled: false }, backlogCap: 0 }, child)
        : null,
      split: only.has('split')
        ? await startChildServer('app', { ...config, redisPrefix: `${config.redisPrefix}sp:`, consumer: { ...config.consumer, enabled: false } }, child)
        : null,
      // --base: the other checkout's service, each on a prefix of its own (same database, other coupons)
      base: only.has('issue0') ? await startChildServer('app', { ...config, redisPrefix: `${config.redisPrefix}b0:` }, { ...child, root: f.base }) : null,
      baseNoConsumer: only.has('nopersist0')
        ? await startChildServer('app', { ...config, redisPrefix: `${config.redisPrefix}b0nc:`, consumer: { ...config.consumer, enabled: false }, backlogCap: 0 }, { ...child, root: f.base })
        : null
    }
    const pair = only.has('replicated') || only.has('wait') ? await replicaPair() : null
    const replicated = {
      replicated: pair && only.has('replicated')
        ? await startChildServer('app', { ...config, redis: { kind: 'url', url: pair.url, defaulted: false }, redisPrefix: `${config.redisPrefix}rp:` }, child)
        : null,
      wait: pair && only.has('wait')
        ? await startChildServer('app', { ...config, redis: { kind: 'url', url: pair.url, defaulted: false }, redisPrefix: `${config.redisPrefix}wt:`, redisWait: { replicas: 1, timeoutMs: 500 } }, child)
        : null
    }
    Object.assign(servers, replicated)
    const consumerProcess = only.has('split') ? await startConsumerProcess({ ...config, redisPrefix: `${config.redisPrefix}sp:` }) : null
    const redis = new Redis(REDIS_URL)
    const pool = new pg.Pool({ connectionString: scratch.databaseUrl, max: 2 })
    const keys = createKeys(scratch.prefix)
    try {
      const create = async (totalQuantity: number, server = servers.app) => {
        if (!server) return 0
        const response = await fetch(`${server.url}/coupons`, {
          method: 'POST',
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
          body: JSON.stringify({ name: 'bench', totalQuantity })
        })
        return (await response.json() as { id: number }).id
      }
      const winning = await create(10_000_000)
      // Sold out: 100 units, gone during the warm-up; every measured request loses.
      const soldOut = await create(100)
      const unpersisted = await create(10_000_000, servers.noConsumer)
      const splitCoupon = await create(10_000_000, servers.split)
      const baseWinning = await create(10_000_000, servers.base)
      const baseUnpersisted = await create(10_000_000, servers.baseNoConsumer)
      const replicatedCoupon = await create(10_000_000, replicated.replicated)
      const waitCoupon = await create(10_000_000, replicated.wait)
      // The consumer process discovers a new coupon's stream within a second.
      if (consumerProcess) await new Promise((resolve) => setTimeout(resolve, 1200))
      const serverOf: Record<Target, () => RunningServer> = {
        a: () => servers.a!,
        b: () => servers.b!,
        issue: () => servers.app!,
        issue0: () => servers.base!,
        nopersist0: () => servers.baseNoConsumer!,
        soldout: () => servers.app!,
        nopersist: () => servers.noConsumer!,
        split: () => servers.split!,
        replicated: () => replicated.replicated!,
        wait: () => replicated.wait!
      }
      const where: Record<Target, () => [string, string]> = {
        a: () => [servers.a!.url, '/coupons/1/issues'],
        b: () => [servers.b!.url, '/coupons/1/issues'],
        issue: () => [servers.app!.url, `/coupons/${winning}/issues`],
        issue0: () => [servers.base!.url, `/coupons/${baseWinning}/issues`],
        nopersist0: () => [servers.baseNoConsumer!.url, `/coupons/${baseUnpersisted}/issues`],
        soldout: () => [servers.app!.url, `/coupons/${soldOut}/issues`],
        nopersist: () => [servers.noConsumer!.url, `/coupons/${unpersisted}/issues`],
        split: () => [servers.split!.url, `/coupons/${splitCoupon}/issues`],
        replicated: () => [replicated.replicated!.url, `/coupons/${replicatedCoupon}/issues`],
        wait: () => [replicated.wait!.url, `/coupons/${waitCoupon}/issues`]
      }
      // Where each winning target's issues live: its Redis, its key prefix, its coupon.
      const winningStore: Partial<Record<Target, [Redis, ReturnType<typeof createKeys>, number]>> = {
        issue: [redis, keys, winning],
        issue0: [redis, createKeys(`${scratch.prefix}b0:`), baseWinning],
        split: [redis, createKeys(`${scratch.prefix}sp:`), splitCoupon],
        ...(pair ? { replicated: [pair.client, createKeys(`${scratch.prefix}rp:`), replicatedCoupon], wait: [pair.client, createKeys(`${scratch.prefix}wt:`), waitCoupon] } : {})
      }
      const persisted = async (since: number, target: Target) => {
        const [client, k, id] = winningStore[target]!
        const issued = Number(await client.hlen(k.coupon(id).holders)) - 1 // minus the completeness marker field
        return (await waitForRows(pool, id, issued, since)).lagMs
      }
      for (const target of TARGETS) {
        say(`warm-up ${LABELS[target]}: ${warmup} s`)
        const [url, path] = where[target]()
        const result = await runCannon({ url, path, connections, duration: warmup, userOf: (i) => `w${target}-${i}` })
        if (WINNING.includes(target)) await persisted(result.endedAt, target)
      }
      const slices: Record<string, Slice[]> = {}
      for (let round = 0; round < rounds; round++) {
        for (let k = 0; k < TARGETS.length; k++) {
          const target = TARGETS[(k + round) % TARGETS.length]!
          const [url, path] = where[target]()
          const store = winningStore[target]
          const sampler = store ? sampleBacklog(store[0], store[1].coupon(store[2]).events) : null
          const cpu0 = await serverOf[target]().cpuMicros()
          const machineCpu0 = othersCpuMicros()
          const redisCpu0 = processCpuMicros('redis-server')
          const postgresCpu0 = processCpuMicros('postgres')
          const consumerCpu0 = target === 'split' ? await consumerProcess!.cpuMicros() : 0
          const r = await runCannon({ url, path, connections, duration, userOf: (i) => `r${round}${target}-${i}`, progress: !f.json })
          // For the winning run this includes the consumer persisting the slice, which is part of its cost.
          const lag = sampler ? await persisted(r.endedAt, target) : undefined
          const machineCpu = othersCpuMicros() - machineCpu0
          const redisCpu = processCpuMicros('redis-server') - redisCpu0
          const postgresCpu = processCpuMicros('postgres') - postgresCpu0
          const cpu = await serverOf[target]().cpuMicros() - cpu0
          const slice: Slice = { machineCpuUsPerRequest: machineCpu / r.requests, redisCpuUsPerRequest: redisCpu / r.requests, postgresCpuUsPerRequest: postgresCpu / r.requests, rps: r.rps, cpuUsPerRequest: cpu / r.requests, requests: r.requests, seconds: r.seconds, latencyMs: r.latencyMs, statuses: r.statuses, errors: r.errors, timeouts: r.timeouts }
          if (sampler) {
            slice.persistenceLagMs = lag
            slice.maxBacklog = sampler.stop().max
          }
          if (target === 'split') slice.consumerCpuUsPerRequest = (await consumerProcess!.cpuMicros() - consumerCpu0) / r.requests
          ;(slices[target] ??= []).push(slice)
          say(`round ${round + 1}/${rounds} ${LABELS[target]}: ${int(r.rps)} req/s, p99 ${ms(r.latencyMs.p99)}, ${JSON.stringify(r.statuses)}` +
            (sampler ? `, max backlog ${slice.maxBacklog}, lag ${slice.persistenceLagMs} ms` : ''))
        }
      }
      for (const [target, list] of Object.entries(slices) as [Target, Slice[]][]) {
        const statuses: Record<string, number> = {}
        for (const s of list) for (const [code, n] of Object.entries(s.statuses)) statuses[code] = (statuses[code] ?? 0) + n
        const pick = (key: keyof CannonResult['latencyMs']) => median(list.map((s) => s.latencyMs[key]))
        const requests = list.reduce((n, s) => n + s.requests, 0)
        const seconds = list.reduce((n, s) => n + s.seconds, 0)
        const catchUpS = list.every((s) => s.persistenceLagMs !== undefined) ? list.reduce((n, s) => n + s.persistenceLagMs! / 1000, 0) : null
        http[target] = {
          rps: requests / seconds,
          ...(catchUpS === null ? {} : { rpsWithCatchUp: requests / (seconds + catchUpS) }),
          cpuUsPerRequest: list.reduce((n, s) => n + s.cpuUsPerRequest * s.requests, 0) / requests,
          machineCpuUsPerRequest: list.reduce((n, s) => n + s.machineCpuUsPerRequest * s.requests, 0) / requests,
          redisCpuUsPerRequest: list.reduce((n, s) => n + s.redisCpuUsPerRequest * s.requests, 0) / requests,
          postgresCpuUsPerRequest: list.reduce((n, s) => n + s.postgresCpuUsPerRequest * s.requests, 0) / requests,
          latencyMs: { p50: pick('p50'), p90: pick('p90'), p99: pick('p99'), max: Math.max(...list.map((s) => s.latencyMs.max)), mean: pick('mean') },
          statuses,
          errors: list.reduce((n, s) => n + s.errors + s.timeouts, 0),
          slices: list
        }
      }
      if (servers.app) serverRssMb = [await servers.app.rss() / 2 ** 20]
    } finally {
      redis.disconnect()
      await pool.end()
      for (const server of Object.values(servers)) await server?.close()
      await consumerProcess?.close()
      pair?.close()
    }
  }

  if (only.has('consumer')) {
    say(`consumer: ${rounds} rounds of ${int(Number(f.rows))} entries`)
    const batches = f.batches.split(',').map(Number)
    consumer = await consumerBench(config, Number(f.rows), batches, rounds, say, f.copy ? batches : [])
  }
} finally {
  await scratch.cleanup()
}

const ratio = (a?: number, b?: number) => (a && b ? a / b : null)
// The target compares like with like: raw inserts of the consumer's own largest batch (larger raw batches are shown for what they would buy).
const rawAtBatch = (c: ConsumerBenchResult) => c.raw[String(c.consumerBatchSize)] ?? Math.max(...Object.values(c.raw))
const ceiling = consumer ? rawAtBatch(consumer) : undefined
const ratios = {
  issueOverB: ratio(http.issue?.rps, http.b?.rps),
  /** the issue target: winning requests answered and persisted per second, against B */
  issueWithCatchUpOverB: ratio(http.issue?.rpsWithCatchUp, http.b?.rps),
  /** --base: the same two for the other checkout's service, and its consumer-off run */
  baseIssueWithCatchUpOverB: ratio(http.issue0?.rpsWithCatchUp, http.b?.rps),
  baseNoPersistOverB: ratio(http.nopersist0?.rps, http.b?.rps),
  cpuBOverBaseIssue: ratio(http.b?.cpuUsPerRequest, http.issue0?.cpuUsPerRequest),
  cpuBOverBaseNoPersist: ratio(http.b?.cpuUsPerRequest, http.nopersist0?.cpuUsPerRequest),
  issueOverA: ratio(http.issue?.rps, http.a?.rps),
  soldoutOverB: ratio(http.soldout?.rps, http.b?.rps),
  soldoutOverIssue: ratio(http.soldout?.rps, http.issue?.rps),
  bOverA: ratio(http.b?.rps, http.a?.rps),
  issueOverNoPersist: ratio(http.issue?.rps, http.nopersist?.rps),
  noPersistOverB: ratio(http.nopersist?.rps, http.b?.rps),
  consumerOverRaw: ratio(consumer?.consumer, ceiling),
  /** CPU-cost ratios: B's server CPU per request / the issue endpoint's (1.0 = the issue path costs no more) */
  cpuBOverIssue: ratio(http.b?.cpuUsPerRequest, http.issue?.cpuUsPerRequest),
  /**
   * B's machine CPU per request / the winning issue's (until persisted): when every process shares the
   * cores and they are saturated, "issue incl. catch-up / B" cannot exceed this
   */
  machineCpuBOverIssue: ratio(http.b?.machineCpuUsPerRequest, http.issue?.machineCpuUsPerRequest),
  machineCpuBOverSoldout: ratio(http.b?.machineCpuUsPerRequest, http.soldout?.machineCpuUsPerRequest),
  cpuBOverSoldout: ratio(http.b?.cpuUsPerRequest, http.soldout?.cpuUsPerRequest),
  cpuBOverNoPersist: ratio(http.b?.cpuUsPerRequest, http.nopersist?.cpuUsPerRequest),
  cpuAOverB: ratio(http.a?.cpuUsPerRequest, http.b?.cpuUsPerRequest),
  splitOverB: ratio(http.split?.rps, http.b?.rps),
  /** REDIS_WAIT_REPLICAS=1 against the same primary and replica without it, answered and persisted per second */
  waitOverReplicated: ratio(http.wait?.rpsWithCatchUp, http.replicated?.rpsWithCatchUp),
  cpuBOverSplit: ratio(http.b?.cpuUsPerRequest, http.split?.cpuUsPerRequest)
}
/** issue / B in each round, to show the spread behind the aggregate */
const perRound = (x?: HttpRun, y?: HttpRun) => x && y ? x.slices.map((s, i) => s.rps / (y.slices[i]?.rps ?? NaN)) : []
/** x / y per round, both counted as answered and persisted per second */
const withCatchUp = (x?: HttpRun, y?: HttpRun) => {
  const rate = (sl: Slice) => sl.requests / (sl.seconds + (sl.persistenceLagMs ?? 0) / 1000)
  return x && y ? x.slices.map((sl, i) => rate(sl) / (y.slices[i] ? rate(y.slices[i]!) : NaN)) : []
}
const spread = {
  issueOverB: perRound(http.issue, http.b),
  issueWithCatchUpOverB: http.issue && http.b
    ? http.issue.slices.map((s, i) => s.requests / (s.seconds + s.persistenceLagMs! / 1000) / (http.b!.slices[i]?.rps ?? NaN))
    : [],
  soldoutOverB: perRound(http.soldout, http.b),
  soldoutOverIssue: perRound(http.soldout, http.issue)
}
const report = {
  date: started.toISOString(),
  machine: machine(),
  settings: { connections, durationS: duration, rounds, warmupS: warmup, rows: Number(f.rows), logLevel: config.logLevel, base: f.base ?? null },
  http,
  consumer,
  ratios,
  ratiosPerRound: spread,
  issueServerRssMb: serverRssMb[0] ?? null
}

if (f.json) {
  console.log(JSON.stringify(report, null, 2))
} else {
  const r2 = (x: number | null) => (x === null ? '-' : x.toFixed(2))
  console.log(`\ncouponrush bench, ${report.date}\n${report.machine}`)
  console.log(`${connections} connections, ${warmup} s warm-up, then ${rounds} rounds x ${duration} s per target in rotating order; LOG_LEVEL ${config.logLevel}`)
  console.log('req/s = all requests / all seconds over the rounds; incl. catch-up = all requests / (all seconds + the time Postgres took after each slice to hold every issue);')
  console.log('CPU µs/req = server process CPU / requests; machine CPU µs/req = CPU of every process but the bench\'s own (service, consumer, Redis,')
  console.log('Postgres; for winning targets until Postgres is complete) / requests, of which Redis (every redis-server) and Postgres (every postgres')
  console.log('process); latency = median over the rounds (max = overall)\n')
  console.log(table([
    ['target', 'req/s', 'incl. catch-up', 'per round', 'CPU µs/req', 'machine CPU µs/req', 'of it Redis', 'of it Postgres', 'p50', 'p90', 'p99', 'max', 'non-2xx', 'errors'],
    ...(Object.entries(http) as [Target, HttpRun][]).map(([k, v]) => [LABELS[k], int(v.rps), v.rpsWithCatchUp === undefined ? '' : int(v.rpsWithCatchUp),
      v.slices.map((s) => int(s.rps)).join(' / '), int(v.cpuUsPerRequest), int(v.machineCpuUsPerRequest),
      v.redisCpuUsPerRequest.toFixed(1), v.postgresCpuUsPerRequest.toFixed(1),
      ms(v.latencyMs.p50), ms(v.latencyMs.p90), ms(v.latencyMs.p99), ms(v.latencyMs.max),
      int(Object.entries(v.statuses).filter(([s]) => !s.startsWith('2')).reduce((n, [, c]) => n + c, 0)), int(v.errors)])
  ]))
  if (http.issue) {
    const backlog = Math.max(...http.issue.slices.map((s) => s.maxBacklog!))
    const seconds = Math.max(...http.issue.slices.map((s) => s.maxBacklog! / s.rps))
    console.log(`\nissue slices: largest unpersisted backlog ${int(backlog)} entries (at most ${seconds.toFixed(2)} s of that slice's traffic); ` +
      `Postgres complete ${http.issue.slices.map((s) => ms(s.persistenceLagMs!)).join(' / ')} after each slice's last response; server RSS at the end ${serverRssMb[0]?.toFixed(0)} MB`)
  }
  if (http.split) {
    const sl = http.split.slices
    const consumerCpu = sl.reduce((n, x) => n + x.consumerCpuUsPerRequest! * x.requests, 0) / sl.reduce((n, x) => n + x.requests, 0)
    console.log(`split slices: consumer process ${int(consumerCpu)} µs CPU per request; largest backlog ${int(Math.max(...sl.map((x) => x.maxBacklog!)))} entries; ` +
      `Postgres complete ${sl.map((x) => ms(x.persistenceLagMs!)).join(' / ')} after each slice's last response`)
  }
  if (consumer) {
    console.log(`\nconsumer vs raw insert: ${consumer.rounds} rounds x ${int(consumer.rows)} rows each, rotating order, table emptied before each`)
    const row = (variant: string, rps: number) => [variantLabel(variant), int(rps), consumer!.perRound[variant]!.map(int).join(' / '), consumer!.cpuUsPerRow[variant]!.toFixed(1)]
    console.log(table([
      ['', 'rows/s', 'per round', 'client CPU µs/row'],
      [`consumer (batches up to ${consumer.consumerBatchSize})`, int(consumer.consumer), consumer.perRound.consumer!.map(int).join(' / '), consumer.consumerCpuUsPerEntry.toFixed(1)],
      ...Object.entries(consumer.raw).map(([batch, rps]) => row(batch, rps)),
      ...Object.entries(consumer.copy).map(([batch, rps]) => row(`copy-${batch}`, rps)),
      ...Object.entries(consumer.copyPlain).map(([batch, rps]) => row(`plain-${batch}`, rps))
    ]))
    console.log(`consumer: ${consumer.consumerCpuUsPerEntry.toFixed(1)} µs CPU per entry (its own process, while draining), ${int(consumer.consumerMeanBatch)} entries per batch on average; ` +
      `stream entries left after it: ${consumer.streamLeft}`)
  }
  console.log('\nratios')
  console.log(table([
    ['', 'all rounds', 'median round', 'target', 'per round'],
    ['issue incl. catch-up / B', r2(ratios.issueWithCatchUpOverB), r2(spread.issueWithCatchUpOverB.length ? median(spread.issueWithCatchUpOverB) : null), 'target >= 0.80', spread.issueWithCatchUpOverB.map(r2).join(' / ')],
    ['issue / B', r2(ratios.issueOverB), r2(spread.issueOverB.length ? median(spread.issueOverB) : null), '', spread.issueOverB.map(r2).join(' / ')],
    ...(f.base
      ? [['--base: issue incl. catch-up / B', r2(ratios.baseIssueWithCatchUpOverB), '', '', withCatchUp(http.issue0, http.b).map(r2).join(' / ')],
          ['--base: consumer off / B', r2(ratios.baseNoPersistOverB), '', '', perRound(http.nopersist0, http.b).map(r2).join(' / ')],
          ['--base: CPU/req: B / issue', r2(ratios.cpuBOverBaseIssue), '', '', ''],
          ['--base: CPU/req: B / consumer off', r2(ratios.cpuBOverBaseNoPersist), '', '', '']]
      : []),
    ['sold out / B', r2(ratios.soldoutOverB), r2(spread.soldoutOverB.length ? median(spread.soldoutOverB) : null), 'target >= 1.00', spread.soldoutOverB.map(r2).join(' / ')],
    ['sold out / issue', r2(ratios.soldoutOverIssue), r2(spread.soldoutOverIssue.length ? median(spread.soldoutOverIssue) : null), 'target >= 1.00', spread.soldoutOverIssue.map(r2).join(' / ')],
    ['issue / A', r2(ratios.issueOverA), '', '', ''],
    ['B / A', r2(ratios.bOverA), '', '', ''],
    ['consumer off / B', r2(ratios.noPersistOverB), '', '', ''],
    ['issue / consumer off', r2(ratios.issueOverNoPersist), '', '', ''],
    ['CPU/req: B / issue', r2(ratios.cpuBOverIssue), '', '>= 0.95 if server-bound', ''],
    ['machine CPU/req: B / issue (persisted)', r2(ratios.machineCpuBOverIssue), '', 'ceiling of issue / B on shared cores', ''],
    ['machine CPU/req: B / sold out', r2(ratios.machineCpuBOverSoldout), '', '', ''],
    ['CPU/req: B / sold out', r2(ratios.cpuBOverSoldout), '', '>= 0.95 if server-bound', ''],
    ['CPU/req: B / consumer off', r2(ratios.cpuBOverNoPersist), '', '', ''],
    ['CPU/req: A / B', r2(ratios.cpuAOverB), '', '', ''],
    ['consumer process / B', r2(ratios.splitOverB), '', '', ''],
    ['CPU/req: B / web process (split)', r2(ratios.cpuBOverSplit), '', '', ''],
    ['WAIT=1 / no WAIT, incl. catch-up', r2(ratios.waitOverReplicated), '', 'target >= 0.70', withCatchUp(http.wait, http.replicated).map(r2).join(' / ')],
    ['consumer / raw insert (same batch)', r2(ratios.consumerOverRaw), '', 'target >= 0.80',
      consumer ? consumer.perRound.consumer!.map((c, i) => r2(c / (consumer!.perRound[String(consumer!.consumerBatchSize)] ?? consumer!.perRound[Object.keys(consumer!.raw)[0]!]!)[i]!)).join(' / ') : '']
  ]))
}
