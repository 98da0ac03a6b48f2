// The rush: one coupon, many distinct users at once, then proof that exactly `quantity` went out,
// once each, in Redis and in Postgres, and how long Postgres took to catch up.
// Used by scripts/loadtest.ts (CLI) and test/loadtest-smoke.test.ts (in-process, small).
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { Redis } from 'ioredis'
import type { Config } from '../../src/config.js'
import { COMPLETE_MARKER, createKeys } from '../../src/redis/keys.js'
import { sampleBacklog, waitForRows } from './backlog.js'
import { runCannon, type CannonResult } from './cannon.js'
import { ADMIN_TOKEN, REDIS_URL, createScratch, scratchConfig } from './infra.js'
import { startChildServer, startConsumerProcess, startInProcessServer, type RunningServer } from './server.js'

export interface LoadtestOptions {
  quantity: number
  users: number
  connections: number
  /** extra requests by users who already asked, as a share of `users` (0.1 = 10% more requests) */
  repeatShare: number
  /** back-to-back rushes against the same server (each on a new coupon), to watch memory */
  rushes: number
  /** 'child' (default): the service in its own process; 'inprocess': in this one (tests) */
  server: 'child' | 'inprocess'
  /** target a running service instead of starting one */
  url?: string
  adminToken?: string
  /** with url: where to verify Postgres and Redis directly (otherwise via the admin API) */
  databaseUrl?: string
  redisUrl?: string
  redisPrefix?: string
  /** env-style overrides for the started service (e.g. LOG_LEVEL) */
  env?: Record<string, string>
  progress?: boolean
  cpuProfDir?: string
  /** how many single issues at idle to time into Postgres */
  idleProbes: number
  /** run the consumer as its own process (npm run consume) and the service with CONSUMER_ENABLED=false */
  split?: boolean
}

export const defaultLoadtestOptions: LoadtestOptions = {
  quantity: 1000, users: 50_000, connections: 200, repeatShare: 0, rushes: 1, server: 'child', idleProbes: 5
}

export interface Check { name: string, ok: boolean, detail: string }

export interface RushReport {
  couponId: number
  requests: number
  rps: number
  seconds: number
  latencyMs: CannonResult['latencyMs']
  statuses: Record<string, number>
  outcomes: Record<string, number>
  errors: number
  timeouts: number
  issued: number
  expected: number
  /** ms from the last response until Postgres held every issued row (-1: it never did) */
  persistenceLagMs: number
  /** largest unpersisted backlog seen while the rush ran (stream length), null when Redis is not reachable */
  maxBacklog: number | null
  /** when the largest backlog was seen, seconds into the rush */
  maxBacklogAtS: number | null
  /** largest backlog in each second of the rush */
  backlogPerSecond: number[]
  rssBeforeMb: number | null
  rssAfterMb: number | null
  checks: Check[]
}

export interface LoadtestReport {
  options: Omit<LoadtestOptions, 'adminToken'>
  target: string
  rushes: RushReport[]
  /** RSS after the last rush minus after the first, MB (the first rush warms up the JIT and pools) */
  rssGrowthMb: number | null
  idlePersistMs: number[]
  ok: boolean
}

/** Request i's userId: new users in order, with repeats of earlier users spread evenly among them. */
export function userSequence (tag: string, users: number, repeatShare: number): string[] {
  const seq: string[] = []
  let seed = 42
  const random = () => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31 }
  // Counted from n each time (not accumulated) so 0.1 x 3000 is 300 repeats, not 299.
  const owedBy = (n: number) => Math.floor(n * repeatShare + 1e-9)
  for (let n = 0; n < users; n++) {
    seq.push(`${tag}-u${n}`)
    for (let k = owedBy(n); k < owedBy(n + 1); k++) seq.push(`${tag}-u${Math.floor(random() * (n + 1))}`)
  }
  return seq
}

const ALLOWED = new Set(['201 ISSUED', '409 SOLD_OUT', '409 ALREADY_ISSUED', '503 BACKLOG_FULL'])

export async function runLoadtest (options: Partial<LoadtestOptions> = {}, log: (line: string) => void = () => {}): Promise<LoadtestReport> {
  const o: LoadtestOptions = { ...defaultLoadtestOptions, ...options }
  const cleanups: (() => Promise<unknown>)[] = []
  try {
    let server: RunningServer | null = null
    let base: string
    let adminToken: string
    let databaseUrl = o.databaseUrl
    let redisPrefix = o.redisPrefix
    const redisUrl = o.redisUrl ?? REDIS_URL
    if (o.url) {
      base = o.url.replace(/\/$/, '')
      adminToken = o.adminToken ?? ''
    } else {
      const scratch = await createScratch('loadtest')
      cleanups.push(() => scratch.cleanup())
      const config: Config = scratchConfig(scratch, { ...o.env, ...(o.split ? { CONSUMER_ENABLED: 'false' } : {}) })
      server = o.server === 'inprocess' ? await startInProcessServer(config) : await startChildServer('app', config, { cpuProfDir: o.cpuProfDir })
      cleanups.unshift(() => server!.close())
      if (o.split) {
        const consumer = await startConsumerProcess(config)
        cleanups.unshift(() => consumer.close())
      }
      base = server.url
      adminToken = ADMIN_TOKEN
      databaseUrl = scratch.databaseUrl
      redisPrefix = scratch.prefix
    }
    const pool = databaseUrl ? new pg.Pool({ connectionString: databaseUrl, max: 2 }) : null
    if (pool) cleanups.unshift(() => pool.end())
    // Connect now, so the persistence lag does not include opening the connection.
    if (pool) await pool.query('SELECT 1')
    const redis = redisPrefix !== undefined ? new Redis(redisUrl, { maxRetriesPerRequest: 1 }) : null
    if (redis) cleanups.unshift(async () => redis.disconnect())
    const keys = createKeys(redisPrefix ?? '')
    const admin = { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' }

    const api = async (method: string, path: string, body?: unknown) => {
      const response = await fetch(`${base}${path}`, { method, headers: admin, body: body === undefined ? undefined : JSON.stringify(body) })
      const json = await response.json() as any
      if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(json)}`)
      return json
    }
    const persistedViaApi = async (couponId: number) =>
      (await api('GET', `/coupons?after=${couponId - 1}&limit=1`)).items[0]?.persistedIssued as number

    const rushes: RushReport[] = []
    for (let r = 0; r < o.rushes; r++) {
      const rssBefore = server ? await server.rss() : null
      const coupon = await api('POST', '/coupons', { name: `loadtest rush ${r + 1}`, totalQuantity: o.quantity })
      const users = userSequence(`lt${coupon.id}`, o.users, o.repeatShare)
      log(`rush ${r + 1}/${o.rushes}: coupon ${coupon.id}, ${o.quantity} units, ${users.length} requests from ${o.users} users over ${o.connections} connections`)
      const sampler = redis ? sampleBacklog(redis, keys.coupon(coupon.id).events) : null
      const result = await runCannon({
        url: base,
        path: `/coupons/${coupon.id}/issues`,
        connections: o.connections,
        amount: users.length,
        userOf: (i) => users[i % users.length]!,
        collectOutcomes: true,
        progress: o.progress,
        headers: o.adminToken ? { authorization: admin.authorization } : {}
      })
      const issued = result.issuedUsers.length
      // Persistence lag: from the last response until Postgres holds every issued row.
      let persistenceLagMs = -1
      let rows = -1
      if (pool) {
        ({ lagMs: persistenceLagMs, rows } = await waitForRows(pool, coupon.id, issued, result.endedAt))
      } else {
        for (;;) {
          rows = await persistedViaApi(coupon.id)
          if (rows >= issued) { persistenceLagMs = Date.now() - result.endedAt; break }
          if (Date.now() - result.endedAt > 30_000) break
          await sleep(5)
        }
      }
      const backlog = sampler?.stop() ?? null
      const checks: Check[] = []
      const check = (name: string, ok: boolean, detail: string) => checks.push({ name, ok, detail })
      const remaining = (await api('GET', `/coupons/${coupon.id}`)).remaining as number
      // Requests shed with 503 BACKLOG_FULL changed nothing, so fewer than quantity may go out; then
      // the stock must still account for every 201 exactly.
      const shed = result.outcomes['503 BACKLOG_FULL'] ?? 0
      const expected = shed > 0 ? o.quantity - remaining : Math.min(o.quantity, o.users)
      check(shed > 0 ? `201s match the stock taken (${shed} shed with 503 BACKLOG_FULL)` : 'exactly quantity answered 201', issued === expected, `${issued} issued, expected ${expected}`)
      check('no user issued twice (responses)', new Set(result.issuedUsers).size === issued, `${new Set(result.issuedUsers).size} distinct of ${issued}`)
      const unexpected = Object.entries(result.outcomes).filter(([k]) => !ALLOWED.has(k))
      check('no unexpected outcome (5xx only as deliberate 503 BACKLOG_FULL)', unexpected.length === 0 && result.errors === 0 && result.timeouts === 0,
        unexpected.length === 0 && result.errors === 0 && result.timeouts === 0 ? 'none' : `${JSON.stringify(Object.fromEntries(unexpected))}, ${result.errors} socket errors, ${result.timeouts} timeouts`)
      check('Redis: stock went down by exactly the issued count', o.quantity - remaining === issued, `remaining ${remaining} of ${o.quantity}`)
      if (redis) {
        const { [COMPLETE_MARKER]: _marker, ...holders } = await redis.hgetall(keys.coupon(coupon.id).holders)
        const values = Object.values(holders)
        check('Redis: one holder per 201, one unit each', values.length === expected && values.every((v) => v === '1'), `${values.length} holders`)
      }
      check('Postgres: one row per 201 once persisted', rows === expected && persistenceLagMs >= 0, `${rows} rows`)
      if (pool) {
        const { rows: [d] } = await pool.query('SELECT count(DISTINCT user_id)::int AS users, count(*)::int AS n FROM coupon_issues WHERE coupon_id = $1', [coupon.id])
        check('Postgres: no user twice', d.users === d.n && d.n === expected, `${d.users} distinct users in ${d.n} rows`)
        // Acknowledged entries are trimmed from the stream right after their commit.
        if (redis) {
          let left = -1
          for (let i = 0; i < 200; i++) {
            left = await redis.xlen(keys.coupon(coupon.id).events)
            if (left === 0) break
            await sleep(10)
          }
          check('stream trimmed after persistence', left === 0, `${left} entries left`)
        }
      }
      const rssAfter = server ? await server.rss() : null
      rushes.push({
        couponId: coupon.id,
        requests: result.requests,
        rps: result.rps,
        seconds: result.seconds,
        latencyMs: result.latencyMs,
        statuses: result.statuses,
        outcomes: result.outcomes,
        errors: result.errors,
        timeouts: result.timeouts,
        issued,
        expected,
        persistenceLagMs,
        maxBacklog: backlog?.max ?? null,
        maxBacklogAtS: backlog?.atS ?? null,
        backlogPerSecond: backlog?.perSecondMax ?? [],
        rssBeforeMb: rssBefore === null ? null : rssBefore / 2 ** 20,
        rssAfterMb: rssAfter === null ? null : rssAfter / 2 ** 20,
        checks
      })
    }

    // At idle: how long one issue takes to appear in Postgres after its 201.
    const idlePersistMs: number[] = []
    if (pool && o.idleProbes > 0) {
      const coupon = await api('POST', '/coupons', { name: 'loadtest idle probe', totalQuantity: o.idleProbes })
      // A separate consumer process notices a new coupon's stream within a second (no wake-up call).
      await sleep(o.split ? 1200 : 200)
      for (let i = 0; i < o.idleProbes; i++) {
        await api('POST', `/coupons/${coupon.id}/issues`, { userId: `idle-${i}` })
        const answered = Date.now()
        const { lagMs } = await waitForRows(pool, coupon.id, i + 1, answered, 5000)
        idlePersistMs.push(lagMs)
        await sleep(100)
      }
    }

    const first = rushes[0]?.rssAfterMb
    const last = rushes[rushes.length - 1]?.rssAfterMb
    const { adminToken: _, ...shown } = o
    return {
      options: shown,
      target: o.url ? o.url : `${o.server === 'inprocess' ? 'in-process' : 'child-process'} service${o.split ? ' + consumer process' : ''}`,
      rushes,
      rssGrowthMb: first != null && last != null && rushes.length > 1 ? last - first : null,
      idlePersistMs,
      ok: rushes.every((r) => r.checks.every((c) => c.ok))
    }
  } finally {
    for (const cleanup of cleanups) await cleanup().catch((err) => log(`cleanup failed: ${(err as Error).message}`))
  }
}
