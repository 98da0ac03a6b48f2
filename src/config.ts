// The one place that reads process.env. Everything else receives a Config.
import { randomBytes } from 'node:crypto'
import { envSchema } from 'env-schema'
import cron from 'node-cron'

/** Where Redis is looked for when REDIS_URL is empty (server.ts starts a local redis-server there if nothing listens). */
export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379'

const schema = {
  type: 'object',
  properties: {
    NODE_ENV: { type: 'string', default: 'development' },
    PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 3000 },
    HOST: { type: 'string', default: '127.0.0.1' },
    LOG_LEVEL: { type: 'string', enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
    // Two log lines per request (Fastify's "incoming request"/"request completed") cost the issue endpoint
    // about a third of its throughput; failures (5xx) are logged either way.
    LOG_REQUESTS: { type: 'boolean', default: false },
    // Empty means: use 127.0.0.1:6379, or start a local redis-server when nothing listens there.
    REDIS_URL: { type: 'string', default: '' },
    // Comma-separated host:port of Redis Sentinels, instead of REDIS_URL; REDIS_SENTINEL_NAME names the master.
    REDIS_SENTINELS: { type: 'string', default: '' },
    REDIS_SENTINEL_NAME: { type: 'string', default: '' },
    // Comma-separated host:port seeds of a Redis Cluster, instead of REDIS_URL or REDIS_SENTINELS.
    REDIS_CLUSTER_NODES: { type: 'string', default: '' },
    // Keys look like `${REDIS_PREFIX}coupon:{42}:stock`; braces would break the per-coupon hash tag.
    REDIS_PREFIX: { type: 'string', pattern: '^[^{}]*$', default: 'couponrush:' },
    // Empty means: embedded Postgres (PGlite) with its data under DATA_DIR.
    DATABASE_URL: { type: 'string', default: '' },
    DATA_DIR: { type: 'string', default: './data' },
    // Empty outside production means: a random token is generated and logged at startup.
    ADMIN_TOKEN: { type: 'string', default: '' },
    // Comma-separated shop API keys; when any is set, shop routes require one.
    API_KEYS: { type: 'string', default: '' },
    TRUST_PROXY: { type: 'boolean', default: false },
    RATE_LIMIT_PER_IP: { type: 'integer', minimum: 0, default: 0 },
    RATE_LIMIT_PER_USER: { type: 'integer', minimum: 0, default: 0 },
    RATE_LIMIT_WINDOW_MS: { type: 'integer', minimum: 1, default: 1000 },
    STRICT_REDIS: { type: 'boolean', default: false },
    CONSUMER_ENABLED: { type: 'boolean', default: true },
    // This process's name in the consumer group; empty means <hostname>-<pid>. Two processes must never share one.
    CONSUMER_NAME: { type: 'string', pattern: '^[A-Za-z0-9._:@-]{0,100}$', default: '' },
    // The largest read COUNT; reads start smaller after idle and grow toward it while they come back full (consumer.ts, ReadSize).
    CONSUMER_BATCH_SIZE: { type: 'integer', minimum: 1, maximum: 10000, default: 1000 },
    CONSUMER_BLOCK_MS: { type: 'integer', minimum: 1, default: 1000 },
    // The longest wait before the next read after a batch that did not fill its read; none after idle or a full one.
    CONSUMER_LINGER_MS: { type: 'integer', minimum: 0, maximum: 1000, default: 50 },
    RECLAIM_MIN_IDLE_MS: { type: 'integer', minimum: 0, default: 30000 },
    RECLAIM_CRON: { type: 'string', default: '*/15 * * * * *' },
    MAX_DELIVERIES: { type: 'integer', minimum: 1, default: 5 },
    // How often the active campaigns' books are checked (src/consistency/watch.ts; node-cron with seconds); empty = never.
    CONSISTENCY_CRON: { type: 'string', default: '30 * * * * *' },
    // The periodic check leaves campaigns with more holders than this to the on-demand report.
    CONSISTENCY_WATCH_MAX_HOLDERS: { type: 'integer', minimum: 0, default: 50000 },
    // How often the expiry job returns expired, unredeemed units of campaigns with returnExpiredToStock to
    // stock (src/issuing/expiry.ts; node-cron with seconds); empty = never. Safe on every instance at once.
    EXPIRY_CRON: { type: 'string', default: '*/10 * * * * *' },
    BACKLOG_CAP: { type: 'integer', minimum: 0, default: 200000 },
    IDEMPOTENCY_TTL_SECONDS: { type: 'integer', minimum: 1, default: 86400 },
    // How long an instance that saw a coupon sold out answers SOLD_OUT from memory before asking Redis
    // again (src/issuing/sold-out-markers.ts); anything that returns stock ends it at once. 0 = off.
    SOLD_OUT_MARKER_TTL_MS: { type: 'integer', minimum: 0, maximum: 60000, default: 1000 },
    // The webhook delivery loop (src/webhooks/delivery-loop.ts); off, events still go to the outbox and the
    // feed and wait there for an instance that has it on.
    // Write the event outbox (webhooks, GET /admin/events) with every persisted fact. Off by default: it
    // about doubles the consumer's time per batch (docs/benchmarks.md), a cost only users of events should pay.
    EVENTS_ENABLED: { type: 'boolean', default: false },
    // Days the outbox keeps events and settled webhook deliveries (src/events/retention.ts); 0 = forever.
    // Pending deliveries and their events stay whatever their age.
    EVENTS_RETENTION_DAYS: { type: 'integer', minimum: 0, maximum: 36500, default: 30 },
    EVENTS_PRUNE_CRON: { type: 'string', default: '0 17 * * * *' },
    WEBHOOKS_ENABLED: { type: 'boolean', default: true },
    WEBHOOK_CONCURRENCY: { type: 'integer', minimum: 1, maximum: 1000, default: 8 },
    WEBHOOK_TIMEOUT_MS: { type: 'integer', minimum: 1, default: 10000 },
    WEBHOOK_POLL_MS: { type: 'integer', minimum: 1, default: 1000 },
    // Retry n waits base·2^(n−1) (±25 % jitter), at most the max; retries go on for WEBHOOK_RETRY_FOR_MS (24 h).
    WEBHOOK_BACKOFF_BASE_MS: { type: 'integer', minimum: 1, default: 10000 },
    WEBHOOK_BACKOFF_MAX_MS: { type: 'integer', minimum: 1, default: 3600000 },
    WEBHOOK_RETRY_FOR_MS: { type: 'integer', minimum: 0, default: 86400000 },
    REDIS_COMMAND_TIMEOUT_MS: { type: 'integer', minimum: 1, default: 2000 },
    // Answer an issue, a cancel or a change, and persist an entry, only once this many replicas have it
    // (src/redis/replication-fence.ts); 0 = off. REDIS_WAIT_TIMEOUT_MS bounds each wait.
    REDIS_WAIT_REPLICAS: { type: 'integer', minimum: 0, maximum: 16, default: 0 },
    REDIS_WAIT_TIMEOUT_MS: { type: 'integer', minimum: 1, maximum: 60000, default: 500 },
    SHUTDOWN_TIMEOUT_MS: { type: 'integer', minimum: 1, default: 10000 },
    // A whole request (headers and body) must arrive within this; 0 turns the check off. A valid request is
    // under 4 KiB, so only a stalled or deliberately slow client needs more.
    REQUEST_TIMEOUT_MS: { type: 'integer', minimum: 0, default: 10000 },
    // A connection on which nothing moves (no byte in either direction) for this long is closed; 0 = never.
    // Longer than any handler may take, since it also runs while a request is being handled.
    CONNECTION_TIMEOUT_MS: { type: 'integer', minimum: 0, default: 60000 },
    // An idle keep-alive connection is closed after this; above the idle timeout of load balancers in front.
    KEEP_ALIVE_TIMEOUT_MS: { type: 'integer', minimum: 1, default: 72000 }
  }
} as const

/** How Redis is reached: exactly one of REDIS_URL (or its default), REDIS_SENTINELS and REDIS_CLUSTER_NODES. */
export type RedisTarget =
  | {
    kind: 'url'
    /** REDIS_URL, or DEFAULT_REDIS_URL when it is empty */
    url: string
    /** REDIS_URL was empty: server.ts may start a local redis-server on DEFAULT_REDIS_URL */
    defaulted: boolean
  }
  | {
    kind: 'sentinel'
    /** REDIS_SENTINELS, in the given order */
    sentinels: Array<{ host: string, port: number }>
    /** REDIS_SENTINEL_NAME: the master name the sentinels monitor */
    name: string
  }
  | {
    kind: 'cluster'
    /** REDIS_CLUSTER_NODES, in the given order: seeds, the client learns the rest from CLUSTER SLOTS */
    nodes: Array<{ host: string, port: number }>
  }

export interface Config {
  nodeEnv: string
  port: number
  host: string
  logLevel: string
  logRequests: boolean
  redis: RedisTarget
  redisPrefix: string
  databaseUrl: string
  dataDir: string
  adminToken: string
  adminTokenGenerated: boolean
  apiKeys: string[]
  trustProxy: boolean
  rateLimit: { perIp: number, perUser: number, windowMs: number }
  strictRedis: boolean
  consumer: {
    enabled: boolean
    /** undefined: <hostname>-<pid> */
    name?: string
    batchSize: number
    blockMs: number
    lingerMs: number
    reclaimMinIdleMs: number
    reclaimCron: string
    maxDeliveries: number
  }
  /** CONSISTENCY_CRON: '' = the periodic consistency check is off */
  consistencyCron: string
  consistencyWatchMaxHolders: number
  /** EXPIRY_CRON: '' = the expiry job is off */
  expiryCron: string
  backlogCap: number
  idempotencyTtlSeconds: number
  /** SOLD_OUT_MARKER_TTL_MS: 0 = the sold-out short-circuit is off */
  soldOutMarkerTtlMs: number
  /** EVENTS_ENABLED: persisted facts are announced in the event outbox (webhooks, the event feed) */
  eventsEnabled: boolean
  /** EVENTS_RETENTION_DAYS (0 = keep forever) and EVENTS_PRUNE_CRON ('' = never prune) */
  eventRetention: { days: number, cron: string }
  webhooks: {
    /** WEBHOOKS_ENABLED: this instance runs the delivery loop */
    enabled: boolean
    /** deliveries in flight at most, per instance */
    concurrency: number
    /** one request's time limit (connect, send, response headers) */
    timeoutMs: number
    /** how often due deliveries are looked for while nothing is in flight */
    pollMs: number
    /** first retry delay; doubles per attempt up to backoffMaxMs, with ±25 % jitter */
    backoffBaseMs: number
    backoffMaxMs: number
    /** after this long since the first attempt (or a redeliver), a failed attempt marks the delivery failed */
    retryForMs: number
  }
  redisCommandTimeoutMs: number
  /** REDIS_WAIT_REPLICAS (0 = off) and REDIS_WAIT_TIMEOUT_MS */
  redisWait: { replicas: number, timeoutMs: number }
  shutdownTimeoutMs: number
  requestTimeoutMs: number
  connectionTimeoutMs: number
  keepAliveTimeoutMs: number
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}

const SENTINEL_ADDRESS = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/

/** host:port entries of a comma-separated list (REDIS_SENTINELS, REDIS_CLUSTER_NODES). */
function addressList (variable: string, list: string, example: string): Array<{ host: string, port: number }> {
  return list.split(',').map((entry) => {
    const match = SENTINEL_ADDRESS.exec(entry.trim())
    const port = Number(match?.[3])
    if (!match || port < 1 || port > 65535) {
      throw new ConfigError(`Invalid configuration: ${variable} entry "${entry.trim()}" is not host:port (e.g. ${example}, [::1]:${example.split(':')[1]})`)
    }
    return { host: match[1] ?? match[2]!, port }
  })
}

/**
 * Exactly one of REDIS_URL, REDIS_SENTINELS (+ REDIS_SENTINEL_NAME) and REDIS_CLUSTER_NODES: two ways to
 * Redis would be one too many, and guessing which one wins could point two instances at two stores.
 */
function redisTarget (raw: Record<string, any>): RedisTarget {
  const url = String(raw.REDIS_URL)
  const list = String(raw.REDIS_SENTINELS).trim()
  const name = String(raw.REDIS_SENTINEL_NAME).trim()
  const cluster = String(raw.REDIS_CLUSTER_NODES).trim()
  const given = [url !== '' && 'REDIS_URL', list !== '' && 'REDIS_SENTINELS', cluster !== '' && 'REDIS_CLUSTER_NODES'].filter((v): v is string => v !== false)
  if (given.length > 1) {
    throw new ConfigError(`Invalid configuration: ${given.join(' and ')} are ${given.length === 2 ? 'both' : 'all'} set; set exactly one ` +
      '(REDIS_URL for one Redis, REDIS_SENTINELS with REDIS_SENTINEL_NAME for a Sentinel-managed one, REDIS_CLUSTER_NODES for a Redis Cluster)')
  }
  if (list === '' && name !== '') throw new ConfigError('Invalid configuration: REDIS_SENTINEL_NAME is set without REDIS_SENTINELS')
  if (cluster !== '') return { kind: 'cluster', nodes: addressList('REDIS_CLUSTER_NODES', cluster, '10.0.0.5:6379') }
  if (list === '') return { kind: 'url', url: url !== '' ? url : DEFAULT_REDIS_URL, defaulted: url === '' }
  if (name === '') throw new ConfigError('Invalid configuration: REDIS_SENTINELS needs REDIS_SENTINEL_NAME, the master name the sentinels monitor')
  return { kind: 'sentinel', sentinels: addressList('REDIS_SENTINELS', list, '10.0.0.5:26379'), name }
}

/** Where Redis is, for log lines and error messages (a URL's password is not shown). */
export function describeRedis (target: RedisTarget): string {
  if (target.kind === 'cluster') return `Redis Cluster via ${target.nodes.map(formatAddress).join(',')}`
  if (target.kind === 'sentinel') {
    return `Sentinel master "${target.name}" via ${target.sentinels.map(formatAddress).join(',')}`
  }
  try {
    const url = new URL(target.url)
    if (url.password !== '') url.password = '***'
    return url.toString()
  } catch {
    return target.url
  }
}

/** host:port as REDIS_SENTINELS spells it (an IPv6 address in brackets). */
export function formatAddress ({ host, port }: { host: string, port: number }): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

/** Validates the environment and returns a typed config; throws ConfigError with a readable message. */
export function loadConfig (env: Record<string, string | undefined> = process.env): Config {
  let raw: Record<string, any>
  try {
    raw = envSchema({ schema, data: env, dotenv: false }) as Record<string, any>
  } catch (err) {
    throw new ConfigError(`Invalid configuration: ${(err as Error).message}`)
  }
  const production = raw.NODE_ENV === 'production'
  if (production && raw.ADMIN_TOKEN === '') {
    throw new ConfigError('Invalid configuration: ADMIN_TOKEN must be set in production (e.g. `openssl rand -hex 24`)')
  }
  if (raw.ADMIN_TOKEN !== '' && raw.ADMIN_TOKEN.length < 12) {
    throw new ConfigError('Invalid configuration: ADMIN_TOKEN must be at least 12 characters long')
  }
  // Checked here, so a typo stops the start with the setting's name rather than failing when the job is scheduled.
  // RECLAIM_CRON cannot be empty: without the reclaim, entries of a dead consumer would stay pending forever.
  for (const [setting, mayBeOff] of [['RECLAIM_CRON', false], ['CONSISTENCY_CRON', true], ['EXPIRY_CRON', true], ['EVENTS_PRUNE_CRON', true]] as const) {
    if (mayBeOff && raw[setting] === '') continue
    if (!cron.validate(raw[setting])) {
      throw new ConfigError(`Invalid configuration: ${setting} "${raw[setting]}" is not a cron expression (node-cron, seconds first optional, e.g. '0 17 * * * *')` +
        (mayBeOff ? '; empty turns the job off' : ''))
    }
  }
  const redis = redisTarget(raw)
  const adminToken = raw.ADMIN_TOKEN !== '' ? raw.ADMIN_TOKEN : randomBytes(18).toString('base64url')
  return {
    nodeEnv: raw.NODE_ENV,
    port: raw.PORT,
    host: raw.HOST,
    logLevel: raw.LOG_LEVEL,
    logRequests: raw.LOG_REQUESTS,
    redis,
    redisPrefix: raw.REDIS_PREFIX,
    databaseUrl: raw.DATABASE_URL,
    dataDir: raw.DATA_DIR,
    adminToken,
    adminTokenGenerated: raw.ADMIN_TOKEN === '',
    apiKeys: String(raw.API_KEYS).split(',').map((k) => k.trim()).filter((k) => k !== ''),
    trustProxy: raw.TRUST_PROXY,
    rateLimit: { perIp: raw.RATE_LIMIT_PER_IP, perUser: raw.RATE_LIMIT_PER_USER, windowMs: raw.RATE_LIMIT_WINDOW_MS },
    strictRedis: raw.STRICT_REDIS,
    consumer: {
      enabled: raw.CONSUMER_ENABLED,
      ...(raw.CONSUMER_NAME === '' ? {} : { name: raw.CONSUMER_NAME }),
      batchSize: raw.CONSUMER_BATCH_SIZE,
      blockMs: raw.CONSUMER_BLOCK_MS,
      lingerMs: raw.CONSUMER_LINGER_MS,
      reclaimMinIdleMs: raw.RECLAIM_MIN_IDLE_MS,
      reclaimCron: raw.RECLAIM_CRON,
      maxDeliveries: raw.MAX_DELIVERIES
    },
    consistencyCron: raw.CONSISTENCY_CRON,
    consistencyWatchMaxHolders: raw.CONSISTENCY_WATCH_MAX_HOLDERS,
    expiryCron: raw.EXPIRY_CRON,
    backlogCap: raw.BACKLOG_CAP,
    idempotencyTtlSeconds: raw.IDEMPOTENCY_TTL_SECONDS,
    soldOutMarkerTtlMs: raw.SOLD_OUT_MARKER_TTL_MS,
    eventsEnabled: raw.EVENTS_ENABLED,
    eventRetention: { days: raw.EVENTS_RETENTION_DAYS, cron: raw.EVENTS_PRUNE_CRON },
    webhooks: {
      enabled: raw.WEBHOOKS_ENABLED,
      concurrency: raw.WEBHOOK_CONCURRENCY,
      timeoutMs: raw.WEBHOOK_TIMEOUT_MS,
      pollMs: raw.WEBHOOK_POLL_MS,
      backoffBaseMs: raw.WEBHOOK_BACKOFF_BASE_MS,
      backoffMaxMs: raw.WEBHOOK_BACKOFF_MAX_MS,
      retryForMs: raw.WEBHOOK_RETRY_FOR_MS
    },
    redisCommandTimeoutMs: raw.REDIS_COMMAND_TIMEOUT_MS,
    redisWait: { replicas: raw.REDIS_WAIT_REPLICAS, timeoutMs: raw.REDIS_WAIT_TIMEOUT_MS },
    shutdownTimeoutMs: raw.SHUTDOWN_TIMEOUT_MS,
    requestTimeoutMs: raw.REQUEST_TIMEOUT_MS,
    connectionTimeoutMs: raw.CONNECTION_TIMEOUT_MS,
    keepAliveTimeoutMs: raw.KEEP_ALIVE_TIMEOUT_MS
  }
}
