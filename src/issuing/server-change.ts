// Counters are trusted only on the Redis server they were last checked against. After every (re)connect
// the first request (or startup) compares the server's run_id with the one recorded in Redis; on another
// server (a replica promoted by Sentinel, a server restarted from its AOF or RDB) every coupon's counters
// are dropped in one script (adoptServer.lua) and rebuild from Postgres plus the stream on next use.
//
// What it closes: issues the consumer had already written to Postgres but the new server never received
// (replication lag, the last second of an `appendfsync everysec` AOF) are missing from its counters, and
// would be sold again. After the drop, the rebuild counts them from their rows.
// What it cannot close: issues lost from Redis before the consumer persisted them are gone (their 201s
// were answered; nothing in Postgres or the stream remembers them). README, "Guarantees".
//
// Cost on the hot path: one boolean read while connected to a checked server.
//
// Redis Cluster: every primary is a server of its own, with its own record (ClusterServerGuard below).
import type { FastifyBaseLogger } from 'fastify'
import type { Cluster, Redis } from 'ioredis'
import type { Keys } from '../redis/keys.js'
import { AdoptCode, adoptServer, AdoptShardCode, adoptShard } from '../redis/scripts.js'
import { nodeKey, ownSlots, serverRunId, type RedisClient } from '../redis/client.js'
import { SLOTS } from '../redis/slots.js'
import { RedisReconfiguring } from '../errors.js'

export { serverRunId }

const SCAN_COUNT = 1000
const MAX_RELISTS = 5

export type ServerCheckOutcome = { outcome: 'same' | 'first', runId: string } | { outcome: 'adopted', runId: string, previousRunId: string, coupons: number }

/** The server a connection reaches, as a request sees it: its run_id once checked, and its generation. */
export interface ServerWatch {
  /** the run_id of the server the connection reaches; null until checked after the last (re)connect */
  readonly runId: string | null
  /** bumped by every close of the connection: unchanged across a call = the call stayed on one server */
  readonly connection: number
}

/** Where a coupon's scripts are sent, and how to tell afterwards that they stayed on one checked server. */
export interface CounterRoute {
  /** the one Redis; on a cluster, the own connection of the primary serving the coupon's slot */
  redis: RedisClient
  /** that connection's guard; null when no guard runs */
  watch: ServerWatch | null
  /** watch.connection when the route was taken */
  connection: number
  /** on a cluster, that primary's host:port (its replication fence); null on one Redis */
  node: string | null
}

/** Every coupon's counters on one Redis, or one primary's coupons on a cluster: the keys adoption drops. */
function counterKeysOf (keys: Keys, couponIds: string[]): string[] {
  return couponIds.flatMap((id) => {
    const k = keys.coupon(id)
    return [k.meta, k.stock, k.holders, k.claims, k.revoked, k.discarded, k.codes, k.redemptions, k.expiring, ...k.legacyCodeKeys]
  })
}

/** Every coupon id with counters (a meta hash) under this prefix: SCAN, so never one long blocking call. */
async function couponsWithCounters (redis: Redis, keys: Keys): Promise<string[]> {
  const ids = new Set<string>()
  let cursor = '0'
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', keys.couponMetaPattern, 'COUNT', SCAN_COUNT)
    cursor = next
    for (const key of found) {
      const id = /\{(\d+)\}:meta$/.exec(key)?.[1]
      if (id !== undefined) ids.add(id)
    }
  } while (cursor !== '0')
  return [...ids]
}

/** One check: records this server, or adopts it by dropping every coupon's counters. */
export async function checkServer (redis: Redis, keys: Keys): Promise<ServerCheckOutcome> {
  const runId = await serverRunId(redis)
  for (let attempt = 0; attempt < MAX_RELISTS; attempt++) {
    const record = await redis.get(keys.serverRunId)
    if (record === runId) return { outcome: 'same', runId }
    let listed: { couponIds: string[], counterKeys: string[] } | null = null
    if (record !== null) {
      const couponIds = await couponsWithCounters(redis, keys)
      listed = { couponIds, counterKeys: counterKeysOf(keys, couponIds) }
    }
    const code = await adoptServer(redis, { recordKey: keys.serverRunId, runId, stockReturned: keys.stockReturned, listed })
    if (code === AdoptCode.SAME) return { outcome: 'same', runId }
    if (code === AdoptCode.FIRST) return { outcome: 'first', runId }
    if (code === AdoptCode.ADOPTED) return { outcome: 'adopted', runId, previousRunId: record!, coupons: listed!.couponIds.length }
  }
  throw new Error('the server run_id record kept changing while it was checked')
}

/**
 * Watches one connection: stale from construction and after every close, checked again before the next
 * counter is used. Requests wait for a running check (bounded by the command timeout); while the
 * connection is down the check fails at once and the request gets its 503, as any Redis call would.
 */
export class ServerChangeGuard implements ServerWatch {
  readonly #redis: Redis
  readonly #keys: Keys
  readonly #log: FastifyBaseLogger | undefined
  /** true until a check succeeded on the current connection */
  #stale = true
  /** the server the current connection reaches, once checked */
  #runId: string | null = null
  /** bumped by every close: a check that straddles a reconnect does not count */
  #connection = 0
  #checking: Promise<void> | null = null

  constructor (redis: Redis, keys: Keys, log?: FastifyBaseLogger) {
    this.#redis = redis
    this.#keys = keys
    this.#log = log
    redis.on('close', () => {
      this.#connection++
      this.#stale = true
      this.#runId = null
    })
  }

  /** The run_id of the server the connection reaches; null until checked after the last (re)connect. */
  get runId (): string | null {
    return this.#runId
  }

  /** Bumped by every close of the connection: unchanged across a call = the call stayed on one server. */
  get connection (): number {
    return this.#connection
  }

  /** Cheap: the hot path calls `if (guard.stale) await guard.check()`. */
  get stale (): boolean {
    return this.#stale
  }

  /** Where the next script goes (the one Redis), once its counters may be used there. */
  route (): CounterRoute | Promise<CounterRoute> {
    if (this.#stale) return this.check().then(() => this.route())
    return { redis: this.#redis, watch: this, connection: this.#connection, node: null }
  }

  /** Resolves once the counters on the current server may be used; throws when Redis cannot be reached. */
  async check (): Promise<void> {
    // Again while a reconnect came in the middle of a check: its answer was about the old connection.
    while (this.#stale) {
      this.#checking ??= this.#run().finally(() => { this.#checking = null })
      await this.#checking
    }
  }

  async #run (): Promise<void> {
    const connection = this.#connection
    const result = await checkServer(this.#redis, this.#keys)
    if (result.outcome === 'adopted') {
      this.#log?.warn({ runId: result.runId, previousRunId: result.previousRunId, coupons: result.coupons },
        'Redis is another server than the counters were checked against (failover or restart from disk): ' +
        'every coupon\'s counters dropped; each rebuilds from Postgres plus the stream on its next request')
    }
    if (connection === this.#connection) {
      this.#runId = result.runId
      this.#stale = false
    }
  }
}

/** One primary (or node) of a cluster as the guard tracks it: its own connection, as the Cluster client's pool holds it. */
class Shard implements ServerWatch {
  node: Redis
  runId: string | null = null
  connection = 0
  /** true until a check succeeded on the current connection */
  stale = true
  /** 1 for each slot the node served, by its own word, at its last check (cleared as refreshes see it lose one) */
  served = new Uint8Array(SLOTS)
  checking: Promise<void> | null = null

  constructor (readonly key: string, node: Redis) {
    this.node = node
  }

  /** The connection changed (closed, or the pool made a new one): nothing about its server is known. */
  reset (): void {
    this.connection++
    this.stale = true
    this.runId = null
  }
}

const MAX_ROUTE_ROUNDS = 3

/**
 * Redis Cluster: the server-change guard per primary. Each primary records the run_id of the server its
 * coupons' counters were last checked against, under a key in the lowest slot it serves (a promoted
 * replica inherits that slot, and the record, from its primary). Before a coupon's counters are used, the
 * primary serving its slot must have been checked on its current connection, and for that slot: after a
 * reconnect, a failover, or when it serves a slot it did not serve at its last check. A check compares
 * the record with the node's run_id; on another server it drops the counters of the coupons on that node
 * only (SCAN of that node, adoptShard.lua), and each rebuilds from Postgres plus the stream.
 *
 * Slot migration: a coupon whose slot moved between healthy primaries keeps its counters (a migration
 * moves keys whole). When the lowest slot of a node changes, its record may be one that came along with
 * the slot from the primary that served it: kept (not dropped) when that primary is alive, answers with
 * that run_id, and no longer serves the slot. A slot whose primary is still claiming it, or is dead, or
 * a replica, means a failover: dropped.
 *
 * The scripts of a route run on the node's own connection, never through the Cluster client: it would
 * follow a MOVED to a node (a just-promoted replica) that nobody checked yet, and run the script on
 * counters it inherited. A node that no longer serves the slot answers MOVED, which is refused (503
 * REDIS_RECONFIGURING, nothing ran) and makes the client refresh its slot map.
 */
export class ClusterServerGuard {
  readonly #cluster: Cluster
  readonly #keys: Keys
  readonly #log: FastifyBaseLogger | undefined
  readonly #shards = new Map<string, Shard>()

  constructor (cluster: Cluster, keys: Keys, log?: FastifyBaseLogger) {
    this.#cluster = cluster
    this.#keys = keys
    this.#log = log
    cluster.on('+node', (node: Redis) => this.#attach(node))
    cluster.on('refresh', () => this.#forgetLostSlots())
    for (const node of cluster.nodes('all')) this.#attach(node)
  }

  #attach (node: Redis): void {
    const key = nodeKey(node)
    let shard = this.#shards.get(key)
    if (!shard) {
      shard = new Shard(key, node)
      this.#shards.set(key, shard)
    } else if (shard.node !== node) {
      shard.node = node
      shard.reset()
    }
    const watched = shard
    node.on('close', () => { if (watched.node === node) watched.reset() })
  }

  /** A refresh of the slot map: a slot that moved away from a node must be checked again if it comes back. */
  #forgetLostSlots (): void {
    const slots = this.#cluster.slots
    for (const shard of this.#shards.values()) {
      const served = shard.served
      for (let slot = 0; slot < SLOTS; slot++) if (served[slot] === 1 && slots[slot]?.[0] !== shard.key) served[slot] = 0
    }
  }

  /** The shard the slot map names for the slot; REDIS_RECONFIGURING (nothing ran) when it names none known. */
  #shardServing (slot: number): Shard {
    const key = this.#cluster.slots[slot]?.[0]
    const shard = key === undefined ? undefined : this.#shards.get(key)
    if (!shard) {
      this.#cluster.refreshSlotsCache()
      throw new RedisReconfiguring({ cause: new Error(`no known primary serves slot ${slot}`) })
    }
    return shard
  }

  /** Where a script on the slot's keys goes: the connection of its primary, checked for that slot. */
  route (slot: number): CounterRoute | Promise<CounterRoute> {
    const shard = this.#shardServing(slot)
    if (shard.stale || shard.served[slot] !== 1) return this.#checkThenRoute(slot)
    return { redis: shard.node, watch: shard, connection: shard.connection, node: shard.key }
  }

  async #checkThenRoute (slot: number): Promise<CounterRoute> {
    const checkedNow = new Set<Shard>()
    for (let round = 0; round < MAX_ROUTE_ROUNDS; round++) {
      const shard = this.#shardServing(slot)
      if (!shard.stale && shard.served[slot] === 1) return { redis: shard.node, watch: shard, connection: shard.connection, node: shard.key }
      if (checkedNow.has(shard)) break
      // A slot it did not serve when last checked (promoted again, or a slot migrated to it): check again.
      shard.stale = true
      await this.#check(shard)
      checkedNow.add(shard)
    }
    // Checked just now and it does not serve the slot: the slot map is behind.
    this.#cluster.refreshSlotsCache()
    throw new RedisReconfiguring({ cause: new Error(`the primary named for slot ${slot} does not serve it`) })
  }

  /**
   * A script on the route was refused. MOVED/ASK: the node does not serve the slot (any more, or yet);
   * forget that it did, and refresh the map.
   */
  refused (route: CounterRoute, slot: number, err: unknown): void {
    if (!/^(?:MOVED|ASK) /.test((err as Error)?.message ?? '')) return
    const shard = route.node === null ? undefined : this.#shards.get(route.node)
    if (shard) shard.served[slot] = 0
    this.#cluster.refreshSlotsCache()
  }

  async #check (shard: Shard): Promise<void> {
    while (shard.stale) {
      shard.checking ??= this.#run(shard).finally(() => { shard.checking = null })
      await shard.checking
    }
  }

  async #run (shard: Shard): Promise<void> {
    const { node, connection } = shard
    const [runId, own] = await Promise.all([serverRunId(node), ownSlots(node)])
    const served = new Uint8Array(SLOTS)
    if (own.primary) for (const [from, to] of own.ranges) served.fill(1, from, to + 1)
    // A replica (or a primary without slots) serves no coupon: nothing to check on it.
    if (own.primary && own.ranges.length > 0) await this.#adopt(shard, runId, own.ranges[0]![0])
    if (connection === shard.connection && node === shard.node) {
      shard.runId = runId
      shard.served = served
      shard.stale = false
    }
  }

  async #adopt (shard: Shard, runId: string, lowestSlot: number): Promise<void> {
    const { node } = shard
    const recordKey = this.#keys.shardServerRunId(lowestSlot)
    for (let attempt = 0; attempt < MAX_RELISTS; attempt++) {
      const seen = await node.get(recordKey)
      if (seen === runId) return
      const keep = seen === null || await this.#gaveSlotAway(shard, seen, lowestSlot)
      const couponIds = keep ? [] : await couponsWithCounters(node, this.#keys)
      const code = await adoptShard(node, {
        recordKey,
        runId,
        stockReturned: this.#keys.stockReturned,
        seen,
        decision: keep ? 'keep' : 'drop',
        listed: { couponIds, counterKeys: counterKeysOf(this.#keys, couponIds) }
      })
      if (code === AdoptShardCode.SAME) return
      if (code === AdoptShardCode.KEPT) {
        if (seen !== null) this.#log?.info({ node: shard.key, runId, previousRunId: seen }, 'a Redis Cluster primary took over its lowest slot from a healthy primary (slot migration): its counters are kept')
        return
      }
      if (code === AdoptShardCode.ADOPTED) {
        this.#log?.warn({ node: shard.key, runId, previousRunId: seen, coupons: couponIds.length },
          'a Redis Cluster primary is another server than its counters were checked against (failover or restart from disk): ' +
          'the counters of its coupons dropped; each rebuilds from Postgres plus the stream on its next request')
        return
      }
    }
    throw new Error(`the server run_id record of ${shard.key} kept changing while it was checked`)
  }

  /**
   * The record names another server: did it come with the slot from a primary that gave the slot away
   * (a migration, nothing lost) rather than from a primary this node replaced (a failover)? Only when that
   * server is a primary we reach, still with that run_id, that no longer serves the slot. Any doubt: no.
   */
  async #gaveSlotAway (self: Shard, previousRunId: string, slot: number): Promise<boolean> {
    const previous = [...this.#shards.values()].find((s) => s !== self && s.runId === previousRunId)
    if (!previous) return false
    try {
      const [runId, own] = await Promise.all([serverRunId(previous.node), ownSlots(previous.node)])
      return runId === previousRunId && own.primary && !own.ranges.some(([from, to]) => slot >= from && slot <= to)
    } catch {
      return false
    }
  }
}
