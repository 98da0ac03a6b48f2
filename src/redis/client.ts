// Redis connections with this service's Lua scripts defined as commands.
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis'
import type { RedisTarget } from '../config.js'
import { defineScripts } from './scripts.js'

/**
 * What the service talks to: one Redis (a URL or a Sentinel-managed master) or a Redis Cluster. Every
 * command the service sends touches the keys of one coupon (one hash tag, one slot) or one global key,
 * so both run the same commands; what differs (CLIENT ID, SCAN, CONFIG, readiness) goes through the
 * helpers below.
 */
export type RedisClient = Redis | Cluster

export interface RedisConnectOptions {
  /** config.redis: a URL, or Sentinels that name the current master */
  target: RedisTarget
  /** Fail a command after this long instead of hanging (not for blocking reads). */
  commandTimeoutMs?: number
  /** The connection for blocking XREADGROUP: must not share a socket with anything else. */
  blocking?: boolean
  name?: string
}

/** Every connection of the service is made here, to the one Redis (or Sentinel-managed master, or Cluster) config.redis names. */
export function createRedis (options: RedisConnectOptions & { target: { kind: 'url' | 'sentinel' } }): Redis
export function createRedis (options: RedisConnectOptions): RedisClient
export function createRedis ({ target, commandTimeoutMs, blocking = false, name }: RedisConnectOptions): RedisClient {
  if (target.kind === 'cluster') return createCluster(target, { commandTimeoutMs, blocking, name })
  const options: RedisOptions = {
    lazyConnect: true,
    connectionName: name,
    // Requests must fail fast with 503 while Redis is down, not queue up and hang.
    enableOfflineQueue: blocking,
    maxRetriesPerRequest: blocking ? null : 1,
    enableAutoPipelining: !blocking,
    // A command in flight when the connection closed may have run (the reply was lost, not the write).
    // ioredis would send it again after reconnecting, and an issue without an Idempotency-Key would run
    // twice (a second unit for perUserLimit > 1). Left unsent, it ends at commandTimeout as
    // REDIS_UNAVAILABLE: outcome unknown, a keyed retry tells. The blocking connection's reads are
    // safe to repeat and have no timeout, so it keeps the resend.
    autoResendUnfulfilledCommands: blocking,
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
 * Redis Cluster: one client that follows the slot map. What matters for "never oversold, nothing lost":
 * - scaleReads 'master': every command goes to the slot's primary (a replica may lag behind the counters).
 * - retryDelayOnFailover 0: ioredis would otherwise send a command again after its node's connection
 *   closed, although the node may have run it (the reply was lost, not the write); an issue without an
 *   Idempotency-Key sent twice could hand out a second unit. The caller gets the error instead and
 *   answers REDIS_UNAVAILABLE (outcome unknown: retry with the same Idempotency-Key).
 * - MOVED/ASK/TRYAGAIN/CLUSTERDOWN are retried by ioredis (bounded by maxRedirections): a node that
 *   answers them did not run the command, so sending it again is safe.
 * - the blocking option (the consumer's client) keeps an offline queue, like the single-node one, and
 *   never shares its node connections with requests.
 */
function createCluster (target: Extract<RedisTarget, { kind: 'cluster' }>, { commandTimeoutMs, blocking, name }: Omit<RedisConnectOptions, 'target'>): Cluster {
  const options: ClusterOptions = {
    lazyConnect: true,
    scaleReads: 'master',
    enableOfflineQueue: blocking,
    enableAutoPipelining: !blocking,
    // The auto-pipeline groups a command by the slot of its first argument. recordStats takes its key
    // count first (a variable number of keys), so it would join the pipeline of the wrong node, and
    // ioredis refuses a pipeline whose keys sit on different nodes: every command batched with it
    // (issues of unrelated coupons) would fail. Sent on its own, it is routed by its real first key.
    autoPipeliningIgnoredCommands: ['recordStats'],
    retryDelayOnFailover: 0,
    retryDelayOnClusterDown: 100,
    retryDelayOnTryAgain: 100,
    // 16 by default; every redirect of a failover costs retryDelayOnClusterDown, so this bounds a
    // refused command at about a second before the caller gets its 503.
    maxRedirections: 10,
    slotsRefreshTimeout: 2000,
    // The server-change guard (src/issuing/server-change.ts) learns from each refresh which slots a node
    // no longer serves, so a node that is demoted and promoted again is checked again before use. A
    // failover takes at least cluster-node-timeout, so a refresh every second sees the demotion.
    slotsRefreshInterval: blocking ? undefined : 1000,
    clusterRetryStrategy: (attempt) => Math.min(100 * attempt, 1000),
    redisOptions: {
      connectionName: name,
      maxRetriesPerRequest: blocking ? null : 1,
      commandTimeout: blocking ? undefined : commandTimeoutMs,
      // For what the service sends on a node's own connection (the coupon scripts, see server-change.ts);
      // what the Cluster client routes bypasses it.
      enableAutoPipelining: !blocking
    }
  }
  const cluster = new Cluster(target.nodes, options)
  defineScripts(cluster)
  // The coupon scripts also run on a primary's own connection (never redirected: see server-change.ts).
  cluster.on('+node', (node: Redis) => defineScripts(node))
  return cluster
}

/** host:port of a node connection, as the Cluster client's slot map names it. */
export function nodeKey (node: Redis): string {
  return `${node.options.host}:${node.options.port}`
}

/**
 * What a cluster node says about itself (CLUSTER NODES, its `myself` line): whether it is a primary, and
 * the slots it serves (ranges, ascending; a slot it is migrating away is still its own until the end).
 */
export async function ownSlots (node: Redis): Promise<{ primary: boolean, ranges: Array<[number, number]> }> {
  const text = await node.call('CLUSTER', 'NODES') as string
  const mine = text.split('\n').map((line) => line.trim().split(' ')).find((fields) => fields[2]?.split(',').includes('myself'))
  if (!mine) throw new Error('CLUSTER NODES names no `myself` line')
  const primary = mine[2]!.split(',').includes('master')
  const ranges = mine.slice(8).filter((range) => !range.startsWith('[')).map((range) => {
    const [from, to] = range.split('-').map(Number)
    return [from!, to ?? from!] as [number, number]
  }).sort(([a], [b]) => a - b)
  return { primary, ranges }
}

/** The primaries of a cluster (their node connections, shared with requests), or the one Redis. */
export function primaries (redis: RedisClient): Redis[] {
  return redis.isCluster ? (redis as Cluster).nodes('master') : [redis as Redis]
}

/** Every node of a cluster, replicas included, or the one Redis. */
export function everyNode (redis: RedisClient): Redis[] {
  return redis.isCluster ? (redis as Cluster).nodes('all') : [redis as Redis]
}

/**
 * SCAN over every primary (on a Cluster client SCAN reaches one node only): each key matching `pattern`
 * (of `type`, when given) once, per page.
 */
export async function * scanEveryPrimary (redis: RedisClient, pattern: string, type?: string): AsyncGenerator<string[]> {
  for (const node of primaries(redis)) {
    let cursor = '0'
    do {
      const [next, keys] = type
        ? await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000, 'TYPE', type)
        : await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
      cursor = next
      if (keys.length > 0) yield keys
    } while (cursor !== '0')
  }
}

/**
 * A standalone connection for pub/sub. On a cluster a classic PUBLISH (the scripts' stock-returned
 * message) reaches every node, so one connection to any node hears it; a plain connection (not the
 * Cluster client's subscriber, which moves to another node silently) reports each loss of the
 * subscription with 'close', which the sold-out markers need. It starts on a primary and, when its node
 * is lost, reconnects to the next node the cluster client knows (a dead node must not silence it for good).
 */
export function dedicatedConnection (redis: RedisClient, options: RedisOptions): Redis {
  if (!redis.isCluster) return (redis as Redis).duplicate(options)
  const cluster = redis as Cluster
  const [first] = primaries(cluster)
  if (!first) throw new Error('the Redis Cluster client knows no primary yet')
  let turn = 0
  const connection: Redis = new Redis({
    ...cluster.options.redisOptions,
    enableAutoPipelining: false,
    ...options,
    host: first.options.host,
    port: first.options.port,
    retryStrategy: (attempt) => {
      const nodes = cluster.nodes('all')
      const next = nodes[turn++ % Math.max(nodes.length, 1)]
      // The connector reads host and port from these options at every (re)connect.
      if (next) Object.assign(connection.options, { host: next.options.host, port: next.options.port })
      return Math.min(50 * attempt, 1000)
    }
  })
  return connection
}

/** Readiness: PING, and on a cluster CLUSTER INFO on every primary (cluster_state:ok); throws what is wrong. */
export async function checkRedisReady (redis: RedisClient): Promise<void> {
  if (!redis.isCluster) {
    await redis.ping()
    return
  }
  const nodes = primaries(redis)
  if (nodes.length === 0) throw new Error('no primary known')
  await Promise.all(nodes.map(async (node) => {
    const info = await node.cluster('INFO') as string
    if (!/^cluster_state:ok\r?$/m.test(info)) throw new Error(`${node.options.host}:${node.options.port} cluster_state is not ok`)
  }))
}

/**
 * ioredis's quit() ends the connection but not the failover detector's subscriptions to the sentinels,
 * which then reconnect forever (and keep a closing process alive): end them with the connection.
 * For every Sentinel-mode connection, duplicates included; nothing to do for a URL.
 */
export function releaseSentinelsOnEnd (redis: RedisClient): void {
  if (!redis.isCluster && (redis as Redis).options.sentinels) redis.on('end', () => redis.disconnect())
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
export async function connectRedis<R extends RedisClient> (redis: R): Promise<R> {
  if (redis.status === 'wait') await redis.connect()
  return redis
}

/**
 * Settings under which Redis may silently lose counters; each entry is a sentence for the log. On a
 * cluster every node is asked (a replica is promoted with its own settings), each risk named with its node.
 */
export async function redisDurabilityRisks (redis: RedisClient, { waitReplicas = 0 } = {}): Promise<string[]> {
  if (!redis.isCluster) return await nodeDurabilityRisks(redis as Redis, { waitReplicas })
  const nodes = everyNode(redis)
  if (nodes.length === 0) return ['the Redis Cluster client knows no node: nothing could be checked']
  // Replicas are asked too (a replica becomes a primary with its own settings); the replica count that
  // REDIS_WAIT_REPLICAS needs is each primary's.
  const asPrimary = new Set(primaries(redis))
  const perNode = await Promise.all(nodes.map(async (node) =>
    (await nodeDurabilityRisks(node, { waitReplicas: asPrimary.has(node) ? waitReplicas : 0 })).map((risk) => `${nodeKey(node)}: ${risk}`)))
  return perNode.flat()
}

async function nodeDurabilityRisks (redis: Redis, { waitReplicas = 0 }: { waitReplicas?: number }): Promise<string[]> {
  const risks: string[] = []
  if (waitReplicas > 0) {
    const connected = Number(/^connected_slaves:(\d+)\r?$/m.exec(await redis.info('replication'))?.[1] ?? 0)
    if (connected < waitReplicas) {
      risks.push(`REDIS_WAIT_REPLICAS=${waitReplicas} but the master has ${connected} connected replica(s): every issue will answer 503 REPLICATION_TIMEOUT until enough replicas connect`)
    } else if (connected > waitReplicas) {
      // A failover may promote a replica that never acknowledged: what the fence vouched for is then lost.
      risks.push(`REDIS_WAIT_REPLICAS=${waitReplicas} but the master has ${connected} connected replicas: a failover may promote one that did not acknowledge, losing answered issues; wait for every replica that can be promoted (README, Scaling out)`)
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
