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
import type { FastifyBaseLogger } from 'fastify'
import type { Redis } from 'ioredis'
import type { Keys } from '../redis/keys.js'
import { AdoptCode, adoptServer } from '../redis/scripts.js'
import { serverRunId } from '../redis/client.js'

export { serverRunId }

const SCAN_COUNT = 1000
const MAX_RELISTS = 5

export type ServerCheckOutcome = { outcome: 'same' | 'first', runId: string } | { outcome: 'adopted', runId: string, previousRunId: string, coupons: number }

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
      const counterKeys = couponIds.flatMap((id) => {
        const k = keys.coupon(id)
        return [k.meta, k.stock, k.holders, k.claims, k.revoked, k.discarded, k.codes, k.redemptions, k.expiring]
      })
      listed = { couponIds, counterKeys }
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
export class ServerChangeGuard {
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
