// Redis connections with this service's Lua scripts defined as commands.
import { Redis, type RedisOptions } from 'ioredis'
import type { RedisTarget } from '../config.js'
import { defineScripts } from './scripts.js'

export interface RedisConnectOptions {
  /** config.redis: a URL, or Sentinels that name the current master */
  target: RedisTarget
  /** Fail a command after this long instead of hanging (not for blocking reads). */
  commandTimeoutMs?: number
  /** The connection for blocking XREADGROUP: must not share a socket with anything else. */
  blocking?: boolean
  name?: string
}

/** Every connection of the service is made here, to the one Redis (or Sentinel-managed master) config.redis names. */
export function createRedis ({ target, commandTimeoutMs, blocking = false, name }: RedisConnectOptions): Redis {
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
  const redis = target.kind === 'url'
    ? new Redis(target.url, options)
    : new Redis({ ...options, ...sentinelOptions(target) })
  defineScripts(redis)
  releaseSentinelsOnEnd(redis)
  return redis
}

/**
 * ioredis's quit() ends the connection but not the failover detector's subscriptions to the sentinels,
 * which then reconnect forever (and keep a closing process alive): end them with the connection.
 * For every Sentinel-mode connection, duplicates included; nothing to do for a URL.
 */
export function releaseSentinelsOnEnd (redis: Redis): void {
  if (redis.options.sentinels) redis.on('end', () => redis.disconnect())
}

/**
 * Sentinel mode: every (re)connect asks the sentinels for the current master (role master is ioredis's
 * default) and checks the ROLE of the server it reaches, so after a failover the connections, the
 * blocking reader and the sold-out subscriber (a duplicate()) follow the new master on their own.
 */
function sentinelOptions (target: Extract<RedisTarget, { kind: 'sentinel' }>): RedisOptions {
  return {
    sentinels: target.sentinels,
    name: target.name,
    // All sentinels unreachable: keep asking, at most a second apart, like retryStrategy (never give up:
    // Redis out of reach is a 503 per request, not a dead process).
    sentinelRetryStrategy: (attempt) => Math.min(100 * attempt, 1000),
    // Subscribe to +switch-master on the sentinels and reconnect the moment they promote a replica,
    // instead of writing to a demoted (or partitioned) old master until its connection breaks.
    failoverDetector: true,
    // A write that reaches a demoted master is refused (READONLY, nothing ran; the request gets its
    // 503): reconnect, which asks the sentinels again, instead of staying on a replica.
    reconnectOnError: (err) => err.message.startsWith('READONLY') ? 1 : false
  }
}

/** Resolves once the connection is ready; rejects with the connection error otherwise. */
export async function connectRedis (redis: Redis): Promise<Redis> {
  if (redis.status === 'wait') await redis.connect()
  return redis
}

/** Settings under which Redis may silently lose counters; each entry is a sentence for the log. */
export async function redisDurabilityRisks (redis: Redis, { waitReplicas = 0 } = {}): Promise<string[]> {
  const risks: string[] = []
  if (waitReplicas > 0) {
    const connected = Number(/^connected_slaves:(\d+)\r?$/m.exec(await redis.info('replication'))?.[1] ?? 0)
    if (connected < waitReplicas) {
      risks.push(`REDIS_WAIT_REPLICAS=${waitReplicas} but the master has ${connected} connected replica(s): every issue will answer 503 REPLICATION_TIMEOUT until enough replicas connect`)
    }
  }
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

/** The run_id of the server this connection reaches (new at every start; a promoted replica has its own). */
export async function serverRunId (redis: Redis): Promise<string> {
  const info = await redis.info('server')
  const runId = /^run_id:([0-9a-f]+)\r?$/m.exec(info)?.[1]
  if (runId === undefined) throw new Error('INFO server has no run_id')
  return runId
}
