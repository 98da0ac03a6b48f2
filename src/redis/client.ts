// Redis connections with this service's Lua scripts defined as commands.
import { Redis, type RedisOptions } from 'ioredis'
import { defineScripts } from './scripts.js'

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
  defineScripts(redis)
  return redis
}

/** Resolves once the connection is ready; rejects with the connection error otherwise. */
export async function connectRedis (redis: Redis): Promise<Redis> {
  if (redis.status === 'wait') await redis.connect()
  return redis
}

/** Settings under which Redis may silently lose counters; each entry is a sentence for the log. */
export async function redisDurabilityRisks (redis: Redis): Promise<string[]> {
  const risks: string[] = []
  const [, policy] = await redis.config('GET', 'maxmemory-policy') as [string, string]
  if (policy.startsWith('allkeys-')) risks.push(`maxmemory-policy is ${policy}: Redis may evict stock counters and idempotency records; use noeviction`)
  if (policy.startsWith('volatile-')) risks.push(`maxmemory-policy is ${policy}: keys with a TTL (idempotency records) may be evicted early; noeviction is safest`)
  const [, aof] = await redis.config('GET', 'appendonly') as [string, string]
  const [, save] = await redis.config('GET', 'save') as [string, string]
  if (aof !== 'yes') {
    risks.push(save === ''
      ? 'Redis has no persistence (appendonly no, save ""): a Redis restart loses every issue not yet persisted to Postgres; run it with --appendonly yes'
      : 'Redis persists only by RDB snapshots: a crash loses issues since the last snapshot that were not yet persisted; run it with --appendonly yes')
  }
  return risks
}
