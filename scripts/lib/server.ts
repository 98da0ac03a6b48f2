// Starting the measured server: in a child process (the default: the load generator keeps its own
// core) or in this process (the CI smoke test), behind one interface. The real service in a child
// process is the built one, `node dist/server.js` (and `node dist/cli/consume.js`): what the image
// ships is what the load test measures (npm run loadtest and bench build first). The baselines A and B
// have no compiled form and still run from scripts/lib/server-child.ts through tsx.
import { fork, spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { isDeepStrictEqual } from 'node:util'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../src/app.js'
import { formatAddress, loadConfig, type Config, type RedisTarget } from '../../src/config.js'
import type { ConsumerStats } from '../../src/persistence/consumer.js'
import { distEntry } from './dist.js'
import type { ServerMode } from './server-child.js'
import { freePort } from './ports.js'

/**
 * The environment for a measured child: without a test runner's coverage and loader hooks (tap sets
 * NODE_V8_COVERAGE and NODE_OPTIONS), which would slow the child down and, merged back, hid src/ from
 * the suite's coverage report.
 */
function childEnv (extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const { NODE_V8_COVERAGE: _coverage, NODE_OPTIONS: _options, ...env } = process.env
  return { ...env, ...extra }
}

export interface RunningServer {
  url: string
  pid: number
  rss (): Promise<number>
  /** CPU time (user + system) the server process has used so far, µs */
  cpuMicros (): Promise<number>
  /** null for the built server in a child process (it has no channel to ask) */
  consumerStats (): Promise<ConsumerStats | null>
  close (): Promise<void>
}

export interface ChildOptions {
  /** write a V8 CPU profile of the server into this directory (node --cpu-prof) */
  cpuProfDir?: string
  /** extra V8/Node flags for the child (e.g. --max-semi-space-size=32), the same for every target of a run */
  nodeFlags?: string[]
  /** the built service: start this checkout's dist/ instead of our own (bench --base) */
  root?: string
}

/** REDIS_URL, REDIS_SENTINELS + REDIS_SENTINEL_NAME or REDIS_CLUSTER_NODES, as loadConfig reads them back into config.redis. */
function redisEnv (redis: RedisTarget): Record<string, string> {
  const none = { REDIS_URL: '', REDIS_SENTINELS: '', REDIS_SENTINEL_NAME: '', REDIS_CLUSTER_NODES: '' }
  if (redis.kind === 'url') return { ...none, REDIS_URL: redis.defaulted ? '' : redis.url }
  if (redis.kind === 'cluster') return { ...none, REDIS_CLUSTER_NODES: redis.nodes.map(formatAddress).join(',') }
  return { ...none, REDIS_SENTINELS: redis.sentinels.map(formatAddress).join(','), REDIS_SENTINEL_NAME: redis.name }
}

/** The environment that makes `loadConfig` return this config (checked: a Config field missing here throws). */
export function configEnv (config: Config): Record<string, string> {
  const env: Record<string, string> = {
    NODE_ENV: config.nodeEnv,
    PORT: String(config.port),
    HOST: config.host,
    LOG_LEVEL: config.logLevel,
    LOG_REQUESTS: String(config.logRequests),
    ...redisEnv(config.redis),
    REDIS_PREFIX: config.redisPrefix,
    DATABASE_URL: config.databaseUrl,
    DATA_DIR: config.dataDir,
    ADMIN_TOKEN: config.adminToken,
    API_KEYS: config.apiKeys.join(','),
    TRUST_PROXY: String(config.trustProxy),
    RATE_LIMIT_PER_IP: String(config.rateLimit.perIp),
    RATE_LIMIT_PER_USER: String(config.rateLimit.perUser),
    RATE_LIMIT_WINDOW_MS: String(config.rateLimit.windowMs),
    STRICT_REDIS: String(config.strictRedis),
    CONSUMER_ENABLED: String(config.consumer.enabled),
    CONSUMER_NAME: config.consumer.name ?? '',
    CONSUMER_BATCH_SIZE: String(config.consumer.batchSize),
    CONSUMER_BLOCK_MS: String(config.consumer.blockMs),
    CONSUMER_LINGER_MS: String(config.consumer.lingerMs),
    RECLAIM_MIN_IDLE_MS: String(config.consumer.reclaimMinIdleMs),
    RECLAIM_CRON: config.consumer.reclaimCron,
    MAX_DELIVERIES: String(config.consumer.maxDeliveries),
    WEBHOOKS_ENABLED: String(config.webhooks.enabled),
    WEBHOOK_CONCURRENCY: String(config.webhooks.concurrency),
    WEBHOOK_TIMEOUT_MS: String(config.webhooks.timeoutMs),
    WEBHOOK_POLL_MS: String(config.webhooks.pollMs),
    WEBHOOK_BACKOFF_BASE_MS: String(config.webhooks.backoffBaseMs),
    WEBHOOK_BACKOFF_MAX_MS: String(config.webhooks.backoffMaxMs),
    WEBHOOK_RETRY_FOR_MS: String(config.webhooks.retryForMs),
    BACKLOG_CAP: String(config.backlogCap),
    IDEMPOTENCY_TTL_SECONDS: String(config.idempotencyTtlSeconds),
    SOLD_OUT_MARKER_TTL_MS: String(config.soldOutMarkerTtlMs),
    CONSISTENCY_CRON: config.consistencyCron,
    CONSISTENCY_WATCH_MAX_HOLDERS: String(config.consistencyWatchMaxHolders),
    EXPIRY_CRON: config.expiryCron,
    REDIS_COMMAND_TIMEOUT_MS: String(config.redisCommandTimeoutMs),
    EVENTS_ENABLED: String(config.eventsEnabled),
    EVENTS_RETENTION_DAYS: String(config.eventRetention.days),
    EVENTS_PRUNE_CRON: config.eventRetention.cron,
    REDIS_WAIT_REPLICAS: String(config.redisWait.replicas),
    REDIS_WAIT_TIMEOUT_MS: String(config.redisWait.timeoutMs),
    SHUTDOWN_TIMEOUT_MS: String(config.shutdownTimeoutMs),
    REQUEST_TIMEOUT_MS: String(config.requestTimeoutMs),
    CONNECTION_TIMEOUT_MS: String(config.connectionTimeoutMs),
    KEEP_ALIVE_TIMEOUT_MS: String(config.keepAliveTimeoutMs)
  }
  // A generated admin token is passed on as set; everything else must come back as it was.
  const back = { ...loadConfig(env), adminTokenGenerated: config.adminTokenGenerated }
  if (!isDeepStrictEqual(back, config)) {
    const differing = Object.keys(config).filter((key) => !isDeepStrictEqual(back[key as keyof Config], config[key as keyof Config]))
    throw new Error(`configEnv does not reproduce the config (${differing.join(', ')}): add the new field to scripts/lib/server.ts`)
  }
  return env
}

/** CPU time (user + system) a process has used so far, µs (from /proc, 10 ms resolution). */
function procCpuMicros (pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
  const ticksToMicros = 1e6 / 100 // USER_HZ is 100 on Linux
  return (Number(fields[11]) + Number(fields[12])) * ticksToMicros
}

/** Resident set size of a process, bytes (from /proc). */
function procRss (pid: number): number {
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return kb ? Number(kb[1]) * 1024 : 0
}

/** `node dist/server.js` with the config as its environment, ready once /health answers. */
async function startBuiltServer (config: Config, { cpuProfDir, nodeFlags = [], root }: ChildOptions): Promise<RunningServer> {
  const port = await freePort()
  const args = [...nodeFlags, ...(cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : []), distEntry('server.js', root)]
  // stdout is discarded (the service logs there, as it would in production); stderr shows crashes.
  const child = spawn(process.execPath, args, {
    env: childEnv(configEnv({ ...config, port, host: '127.0.0.1' })),
    stdio: ['ignore', 'ignore', 'inherit']
  })
  const url = `http://127.0.0.1:${port}`
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  const deadline = Date.now() + 60_000
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the built server (node dist/server.js) exited with ${child.exitCode ?? child.signalCode} before listening`)
    if (Date.now() > deadline) { child.kill('SIGKILL'); throw new Error('the built server did not answer /health within 60 s') }
    const ok = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) }).then((r) => r.ok, () => false)
    if (ok) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return {
    url,
    pid: child.pid!,
    rss: async () => procRss(child.pid!),
    cpuMicros: async () => procCpuMicros(child.pid!),
    consumerStats: async () => null,
    async close () {
      // SIGTERM: the graceful shutdown (close-with-grace) a container stop would trigger.
      child.kill('SIGTERM')
      await exited
    }
  }
}

export async function startChildServer (mode: ServerMode, config: Config, options: ChildOptions = {}): Promise<RunningServer> {
  if (mode === 'app') return startBuiltServer(config, options)
  const { cpuProfDir, nodeFlags = [] } = options
  const entry = fileURLToPath(new URL('./server-child.ts', import.meta.url))
  const execArgv = ['--import', 'tsx', ...nodeFlags, ...(cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : [])]
  // stdout is discarded (the service logs there, as it would in production); stderr shows crashes.
  const child: ChildProcess = fork(entry, [mode, JSON.stringify(config)], { execArgv, env: childEnv(), stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
  let nextId = 0
  const waiting = new Map<number, (value: unknown) => void>()
  const port = await new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`server child (${mode}) exited with ${code} before listening`)))
    child.on('message', (msg: any) => {
      if (typeof msg.port === 'number') resolve(msg.port)
      else waiting.get(msg.id)?.(msg.value)
    })
  })
  const call = (cmd: string) => new Promise<any>((resolve) => {
    const id = nextId++
    waiting.set(id, (value) => { waiting.delete(id); resolve(value) })
    child.send({ id, cmd })
  })
  return {
    url: `http://127.0.0.1:${port}`,
    pid: child.pid!,
    rss: () => call('rss'),
    cpuMicros: () => call('cpu'),
    consumerStats: () => call('stats'),
    async close () {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      await call('close')
      await exited
    }
  }
}

export async function startInProcessServer (config: Config): Promise<RunningServer & { app: FastifyInstance }> {
  const app = await buildApp(config)
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  return {
    app,
    url,
    pid: process.pid,
    rss: async () => process.memoryUsage().rss,
    cpuMicros: async () => { const { user, system } = process.cpuUsage(); return user + system },
    consumerStats: async () => app.consumer?.stats ?? null,
    close: () => app.close()
  }
}

export interface ConsumerProcess {
  pid: number
  /** CPU time used so far, µs (from /proc, 10 ms resolution) */
  cpuMicros (): Promise<number>
  close (): Promise<void>
}

/** `npm run consume` (node dist/cli/consume.js) as a child process, configured like the given service. */
export async function startConsumerProcess (config: Config): Promise<ConsumerProcess> {
  const entry = distEntry('cli/consume.js')
  const env = childEnv({
    DATABASE_URL: config.databaseUrl,
    ...redisEnv(config.redis),
    REDIS_PREFIX: config.redisPrefix,
    // At least info: readiness is its 'consuming issue events' line (its log is discarded after that).
    LOG_LEVEL: ['silent', 'fatal', 'error', 'warn'].includes(config.logLevel) ? 'info' : config.logLevel,
    CONSUMER_BATCH_SIZE: String(config.consumer.batchSize),
    CONSUMER_BLOCK_MS: String(config.consumer.blockMs)
  })
  const child = spawn(process.execPath, [entry], { env, stdio: ['ignore', 'pipe', 'inherit'] })
  // Ready once it logs that it consumes (its log goes to stdout).
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { child.kill(); reject(new Error('consumer process did not start within 30 s')) }, 30_000)
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`consumer process exited with ${code} before starting`)) })
    child.stdout!.on('data', (chunk: Buffer) => { if (chunk.toString().includes('consuming issue events')) { clearTimeout(timer); resolve() } })
  })
  child.stdout!.resume()
  return {
    pid: child.pid!,
    cpuMicros: async () => procCpuMicros(child.pid!),
    async close () {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      await exited
    }
  }
}
