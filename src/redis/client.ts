// Redis connections with this service's Lua scripts defined as commands.
import { readFileSync } from 'node:fs'
import { Redis, type RedisOptions, type Result } from 'ioredis'

const read = (path: string) => readFileSync(new URL(`./scripts/${path}`, import.meta.url), 'utf8')
// `-- @include x.lua` lines are replaced by scripts/includes/x.lua, so scripts share helpers (as BullMQ does).
const scriptSource = (name: string) => read(`${name}.lua`).replace(/^-- @include (\S+)$/gm, (_, file: string) => read(`includes/${file}`))

const SCRIPTS = {
  issueCoupon: { file: 'issue', numberOfKeys: 6 },
  revokeCoupon: { file: 'revoke', numberOfKeys: 5 },
  restoreCoupon: { file: 'restore', numberOfKeys: 5 },
  updateCoupon: { file: 'update-coupon', numberOfKeys: 2 },
  ackAndTrim: { file: 'ack-and-trim', numberOfKeys: 1 }
} as const

type Arg = string | number

/** Raw script replies, decoded into typed results in src/issuing and src/persistence. */
declare module 'ioredis' {
  interface RedisCommander<Context> {
    issueCoupon (...keysThenArgs: Arg[]): Result<[number, number, number, string, number], Context>
    revokeCoupon (...keysThenArgs: Arg[]): Result<[number, number, number, string, number], Context>
    restoreCoupon (keysThenArgs: Arg[]): Result<number, Context>
    updateCoupon (...keysThenArgs: Arg[]): Result<number, Context>
    ackAndTrim (...keysThenArgs: Arg[]): Result<[number, number], Context>
  }
}

export interface RedisConnectOptions {
  url: string
  /** Fail a command after this long instead of hanging (not for blocking reads). */
  commandTimeoutMs?: number
  /** The connection for blocking XREADGROUP: must not share a socket with anything else. */
  blocking?: boolean
  name?: string
}

export function createRedis ({ url, commandTimeoutMs, blocking = false, name }: RedisConnectOptions): Redis {
  const options: RedisOptions = {
    lazyConnect: true,
    connectionName: name,
    // Requests must fail fast with 503 while Redis is down, not queue up and hang.
    enableOfflineQueue: blocking,
    maxRetriesPerRequest: blocking ? null : 1,
    enableAutoPipelining: !blocking,
    commandTimeout: blocking ? undefined : commandTimeoutMs,
    retryStrategy: (attempt) => Math.min(50 * attempt, 1000)
  }
  const redis = new Redis(url, options)
  for (const [command, { file, numberOfKeys }] of Object.entries(SCRIPTS)) {
    redis.defineCommand(command, { lua: scriptSource(file), numberOfKeys })
  }
  return redis
}

/** Resolves once the connection is ready; rejects with the connection error otherwise. */
export async function connectRedis (redis: Redis): Promise<Redis> {
  if (redis.status === 'wait') await redis.connect()
  return redis
}
