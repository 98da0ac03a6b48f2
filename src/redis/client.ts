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
