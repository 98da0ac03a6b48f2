// The one place that reads process.env. Everything else receives a Config.
import { randomBytes } from 'node:crypto'
import { envSchema } from 'env-schema'

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
    CONSUMER_BATCH_SIZE: { type: 'integer', minimum: 1, maximum: 10000, default: 1000 },
    CONSUMER_BLOCK_MS: { type: 'integer', minimum: 1, default: 1000 },
    CONSUMER_LINGER_MS: { type: 'integer', minimum: 0, maximum: 1000, default: 50 },
    RECLAIM_MIN_IDLE_MS: { type: 'integer', minimum: 0, default: 30000 },
    RECLAIM_CRON: { type: 'string', default: '*/15 * * * * *' },
    MAX_DELIVERIES: { type: 'integer', minimum: 1, default: 5 },
    BACKLOG_CAP: { type: 'integer', minimum: 0, default: 200000 },
    IDEMPOTENCY_TTL_SECONDS: { type: 'integer', minimum: 1, default: 86400 },
    REDIS_COMMAND_TIMEOUT_MS: { type: 'integer', minimum: 1, default: 2000 },
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

export interface Config {
  nodeEnv: string
  port: number
  host: string
  logLevel: string
  logRequests: boolean
  /** REDIS_URL, or DEFAULT_REDIS_URL when it is empty */
  redisUrl: string
  /** REDIS_URL was empty: server.ts may start a local redis-server on DEFAULT_REDIS_URL */
  redisUrlDefaulted: boolean
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
  backlogCap: number
  idempotencyTtlSeconds: number
  redisCommandTimeoutMs: number
  shutdownTimeoutMs: number
  requestTimeoutMs: number
  connectionTimeoutMs: number
  keepAliveTimeoutMs: number
}

export class ConfigError extends Error {
  override name = 'ConfigError'
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
  const adminToken = raw.ADMIN_TOKEN !== '' ? raw.ADMIN_TOKEN : randomBytes(18).toString('base64url')
  return {
    nodeEnv: raw.NODE_ENV,
    port: raw.PORT,
    host: raw.HOST,
    logLevel: raw.LOG_LEVEL,
    logRequests: raw.LOG_REQUESTS,
    redisUrl: raw.REDIS_URL !== '' ? raw.REDIS_URL : DEFAULT_REDIS_URL,
    redisUrlDefaulted: raw.REDIS_URL === '',
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
    backlogCap: raw.BACKLOG_CAP,
    idempotencyTtlSeconds: raw.IDEMPOTENCY_TTL_SECONDS,
    redisCommandTimeoutMs: raw.REDIS_COMMAND_TIMEOUT_MS,
    shutdownTimeoutMs: raw.SHUTDOWN_TIMEOUT_MS,
    requestTimeoutMs: raw.REQUEST_TIMEOUT_MS,
    connectionTimeoutMs: raw.CONNECTION_TIMEOUT_MS,
    keepAliveTimeoutMs: raw.KEEP_ALIVE_TIMEOUT_MS
  }
}
