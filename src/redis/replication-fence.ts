// REDIS_WAIT_REPLICAS: nothing is answered (an issue, a cancel, a change) and nothing is persisted
// until that many replicas have the write, so a failover cannot lose what a client was told or what
// Postgres holds.
//
// Redis's WAIT blocks its connection until the replicas acknowledged that connection's last write. Run
// on the shared request connection it would stall every other request (a replica down: every request
// waits the whole timeout), and one WAIT per request halves the throughput (measured, issue 10). So a
// fence runs on a connection of its own: it writes a counter (INCR, so WAIT has an offset to wait for:
// the master's offset after that write, which covers every write executed before it, from any
// connection) and WAITs. Callers whose write was answered before a fence was SENT share it; a caller
// that arrives while a fence is in flight cannot know whether that fence's INCR ran before its write,
// so it joins the next one, which starts as soon as the current one ends (group commit: one fence per
// WAIT round trip, however many requests). When the current one times out (replicas missing), the
// callers queued for the next are refused at once instead: an answer within one timeout, not two.
//
// A fence only vouches for the server it ran on. It reports that server's run_id, and a caller checks
// that its own write went to the same one (src/issuing/server-change.ts tracks the request connection's
// server): during a failover the two connections can briefly reach different masters.
//
// Redis Cluster (ShardFences): replication is one ordered stream per primary, so each primary gets a
// fence of its own (its own connection, a counter in a slot it serves, group commit per primary). A
// request waits for the fence of the primary its script ran on; the consumer, for each stream, for the
// fence of the primary serving it now, after proving on that fence's connection that the entries are there.
import type { Cluster, Redis } from 'ioredis'
import { formatAddress, type RedisTarget } from '../config.js'
import { connectRedis, createRedis, ownSlots, serverRunId, type RedisClient } from './client.js'
import type { Keys } from './keys.js'
import { keySlot } from './slots.js'

export class ReplicationNotConfirmed extends Error {
  override name = 'ReplicationNotConfirmed'
}

/** WAIT returned with fewer replicas than asked for: a replica is down, frozen or far behind. */
export class ReplicasTooSlow extends ReplicationNotConfirmed {
  override name = 'ReplicasTooSlow'
}

/**
 * Entries a consumer read are not on the server that fenced: read from a master that has since been
 * replaced (a failover). Retrying cannot help; the batch must be dropped and read again from this server.
 */
export class EntriesNotOnServer extends ReplicationNotConfirmed {
  override name = 'EntriesNotOnServer'
}

/**
 * Redis Cluster: a batch's entries were confirmed on some primaries and not on others (a replica down, a
 * failover). The entries of `confirmed` streams may be committed; those of `unconfirmed` may not, for
 * the reason in `failure` (an EntriesNotOnServer when the primary serving the stream now lacks them).
 */
export class StreamsNotConfirmed extends ReplicationNotConfirmed {
  override name = 'StreamsNotConfirmed'
  constructor (readonly confirmed: Set<string>, readonly unconfirmed: Set<string>, readonly failure: unknown) {
    super(`${unconfirmed.size} stream(s) of the batch not confirmed: ${(failure as Error)?.message ?? failure}`, { cause: failure })
  }
}

export interface ReplicationFenceOptions {
  /** the fence's own connection: nothing else may use it (WAIT blocks it) */
  redis: Redis
  /**
   * keys.replicationFence; on a cluster a function that finds a key in a slot the node serves, asked
   * again after the node refused the fence's write (its slots changed)
   */
  key: string | (() => Promise<string>)
  replicas: number
  timeoutMs: number
}

/**
 * REDIS_WAIT_REPLICAS as the store and the consumer use it: one fence on one Redis, one per primary on a cluster.
 */
export interface Replication {
  readonly replicas: number
  /**
   * Resolves with the run_id of the server `node` names (null: the one Redis) once every write executed
   * on it before this call has the replicas; rejects with ReplicationNotConfirmed otherwise.
   */
  confirmWrites (node: string | null): Promise<string>
  /**
   * For the consumer, before it commits entries it read (the last entry of each stream): resolves once
   * the replicas of the server that holds them have them; EntriesNotOnServer when that server does not
   * have them (read from a master a failover replaced).
   */
  confirmEntries (lastEntryOfStream: Map<string, string>): Promise<void>
  close (): Promise<void>
}

export class ReplicationFence implements Replication {
  readonly #o: ReplicationFenceOptions
  #runId: string | null = null
  #connection = 0
  #inFlight: Promise<string> | null = null
  #next: Promise<string> | null = null
  #key: string | null

  constructor (options: ReplicationFenceOptions) {
    this.#o = options
    this.#key = typeof options.key === 'string' ? options.key : null
    options.redis.on('close', () => {
      this.#connection++
      this.#runId = null
    })
  }

  confirmWrites (): Promise<string> {
    return this.sync()
  }

  get replicas (): number {
    return this.#o.replicas
  }

  async close (): Promise<void> {
    await this.#o.redis.quit().catch(() => this.#o.redis.disconnect())
  }

  /**
   * Resolves with the run_id of the server on which every write executed before this call now has
   * `replicas` replicas; rejects with ReplicationNotConfirmed when WAIT timed out or the fence's
   * connection changed server, and with the connection's error when Redis cannot be reached.
   */
  sync (): Promise<string> {
    if (this.#next) return this.#next
    if (!this.#inFlight) return this.#start()
    const current = this.#inFlight
    const next = current.then(() => {
      this.#next = null
      return this.#start()
    }, (err) => {
      this.#next = null
      // The fence before this one waited the whole timeout for replicas that did not come: a second
      // WAIT right after it would most likely wait as long again, so the callers that queued behind it
      // are refused now (REPLICATION_TIMEOUT: outcome unknown, which is what a 503 after a WAIT says
      // anyway) and answered within one timeout, not two. The next caller sends a fence again.
      if (err instanceof ReplicasTooSlow) throw new ReplicasTooSlow(`the fence before this one timed out (${err.message})`, { cause: err })
      return this.#start()
    })
    this.#next = next
    return next
  }

  #start (): Promise<string> {
    const fence = this.#fence()
    this.#inFlight = fence
    const done = () => { if (this.#inFlight === fence) this.#inFlight = null }
    fence.then(done, done)
    return fence
  }

  /**
   * For the consumer, before it commits entries it read: a fence after the read, then proof that the
   * entries are on the server that fenced (the last entry of each stream: a stream's entries reach a
   * replica in order). A reader left on a demoted master reads entries the new one may not have.
   */
  async confirmEntries (lastEntryOfStream: Map<string, string>): Promise<void> {
    const runId = await this.sync()
    const connection = this.#connection
    const { redis } = this.#o
    const found = await Promise.all([...lastEntryOfStream].map(([stream, id]) => redis.xrange(stream, id, id)))
    if (connection !== this.#connection || this.#runId !== runId) throw new ReplicationNotConfirmed('the fence connection changed server')
    const missing = found.filter((entries) => entries.length === 0).length
    if (missing > 0) throw new EntriesNotOnServer(`${missing} stream(s) of the batch are not on the server that confirmed replication`)
  }

  /**
   * Runs `prove` on the fence's connection, then waits for a fence sent after it, on the same server:
   * whatever `prove` found there then has the replicas. Resolves with that server's run_id.
   */
  async proveThenSync (prove: (redis: Redis) => Promise<void>): Promise<string> {
    const connection = this.#connection
    await prove(this.#o.redis)
    const runId = await this.sync()
    if (connection !== this.#connection) throw new ReplicationNotConfirmed('the fence connection changed server')
    return runId
  }

  async #fence (): Promise<string> {
    const { redis, replicas, timeoutMs } = this.#o
    const connection = this.#connection
    const runId = this.#runId ?? await serverRunId(redis)
    const key = this.#key ??= await (this.#o.key as () => Promise<string>)()
    try {
      await redis.incr(key)
    } catch (err) {
      // A cluster node that no longer serves the key's slot (MOVED: demoted, or the slot moved): the
      // next fence looks for a key again. This one vouches for nothing.
      if (typeof this.#o.key !== 'string') this.#key = null
      throw new ReplicationNotConfirmed(`the fence's write was refused: ${(err as Error).message}`, { cause: err })
    }
    const acknowledged = Number(await redis.call('WAIT', replicas, timeoutMs))
    if (connection !== this.#connection) throw new ReplicationNotConfirmed('the fence connection changed server while it waited')
    this.#runId = runId
    if (acknowledged < replicas) {
      throw new ReplicasTooSlow(`${acknowledged} of ${replicas} replica(s) acknowledged within ${timeoutMs} ms`)
    }
    return runId
  }
}

interface FenceConnectionOptions {
  replicas: number
  timeoutMs: number
  commandTimeoutMs: number
  name: string
  onError: (err: Error) => void
}

/** A connected connection of the fence's own; its command timeout outlasts WAIT's, or it would give up first. */
async function fenceConnection (target: Exclude<RedisTarget, { kind: 'cluster' }>, { timeoutMs, commandTimeoutMs, name, onError }: FenceConnectionOptions): Promise<Redis> {
  const redis = createRedis({ target, commandTimeoutMs: timeoutMs + commandTimeoutMs, name })
  redis.on('error', onError)
  await connectRedis(redis)
  return redis
}

/**
 * Redis Cluster: one ReplicationFence per primary, made on first use, each with its own connection to
 * that primary and a counter in the lowest slot it serves (asked of the node itself).
 */
export class ShardFences implements Replication {
  readonly #cluster: Cluster
  readonly #keys: Keys
  readonly #o: FenceConnectionOptions
  readonly #fences = new Map<string, Promise<ReplicationFence>>()
  #closed = false

  constructor (cluster: Cluster, keys: Keys, options: FenceConnectionOptions) {
    this.#cluster = cluster
    this.#keys = keys
    this.#o = options
    cluster.on('refresh', this.#closeFormerPrimaries)
  }

  /**
   * After each slot-map refresh: a node the map no longer names as a primary (demoted by a failover, or
   * gone) takes no more coupon writes, so its fence's connection is closed rather than kept until
   * shutdown. A sync in flight on it fails (ReplicationNotConfirmed: its confirmation would speak for a
   * replica); a node that becomes primary again gets a new fence on first use. An empty map (a refresh
   * that found no node) closes nothing.
   */
  readonly #closeFormerPrimaries = (): void => {
    if (this.#closed || this.#fences.size === 0) return
    const primaries = new Set<string>()
    for (const owners of this.#cluster.slots) if (owners?.[0] !== undefined) primaries.add(owners[0])
    if (primaries.size === 0) return
    for (const [node, fence] of this.#fences) {
      if (primaries.has(node)) continue
      this.#fences.delete(node)
      fence.then((f) => f.close(), () => {}).catch(() => {})
    }
  }

  get replicas (): number {
    return this.#o.replicas
  }

  /** The fence of the node at host:port (made on first use; a failed connect is tried again next time). */
  fenceOf (node: string): Promise<ReplicationFence> {
    if (this.#closed) return Promise.reject(new ReplicationNotConfirmed('the replication fences are closed'))
    let fence = this.#fences.get(node)
    if (!fence) {
      const colon = node.lastIndexOf(':')
      const address = formatAddress({ host: node.slice(0, colon), port: Number(node.slice(colon + 1)) })
      fence = fenceConnection({ kind: 'url', url: `redis://${address}`, defaulted: false }, this.#o).then((redis) =>
        new ReplicationFence({
          redis,
          replicas: this.#o.replicas,
          timeoutMs: this.#o.timeoutMs,
          key: async () => {
            const { primary, ranges } = await ownSlots(redis)
            if (!primary || ranges.length === 0) throw new ReplicationNotConfirmed(`${node} serves no slot`)
            return this.#keys.shardReplicationFence(ranges[0]![0])
          }
        }))
      fence.catch(() => { if (this.#fences.get(node) === fence) this.#fences.delete(node) })
      this.#fences.set(node, fence)
    }
    return fence
  }

  async confirmWrites (node: string | null): Promise<string> {
    if (node === null) throw new ReplicationNotConfirmed('a cluster write must name the primary it ran on')
    return await (await this.fenceOf(node)).sync()
  }

  /**
   * Per primary serving the streams now (the slot map): prove on its fence's connection that the last
   * entry of each stream is there (a node that does not serve the slot refuses the read), then fence.
   * A stream's entries reach a replica in order, so the last one stands for all. Each primary on its own:
   * when some do not confirm, StreamsNotConfirmed says which streams did, so the consumer commits those.
   */
  async confirmEntries (lastEntryOfStream: Map<string, string>): Promise<void> {
    const byNode = new Map<string, Array<[string, string]>>()
    const unconfirmed = new Set<string>()
    let failure: unknown = null
    for (const [stream, id] of lastEntryOfStream) {
      const node = this.#cluster.slots[keySlot(stream)]?.[0]
      if (node === undefined) {
        unconfirmed.add(stream)
        failure ??= new ReplicationNotConfirmed(`no known primary serves ${stream}`)
      } else {
        byNode.set(node, [...(byNode.get(node) ?? []), [stream, id]])
      }
    }
    const confirmed = new Set<string>()
    await Promise.all([...byNode].map(async ([node, entries]) => {
      try {
        await this.#confirmOnNode(node, entries)
        for (const [stream] of entries) confirmed.add(stream)
      } catch (err) {
        for (const [stream] of entries) unconfirmed.add(stream)
        failure ??= err
      }
    }))
    if (unconfirmed.size > 0) throw new StreamsNotConfirmed(confirmed, unconfirmed, failure)
  }

  async #confirmOnNode (node: string, entries: Array<[stream: string, id: string]>): Promise<void> {
    let missing = 0
    const fence = await this.fenceOf(node)
    await fence.proveThenSync(async (redis) => {
      let found: Array<Array<unknown>>
      try {
        found = await Promise.all(entries.map(([stream, id]) => redis.xrange(stream, id, id)))
      } catch (err) {
        this.#cluster.refreshSlotsCache()
        throw new ReplicationNotConfirmed(`${node} did not answer for the batch's streams: ${(err as Error).message}`, { cause: err })
      }
      missing = found.filter((replies) => replies.length === 0).length
    })
    if (missing > 0) throw new EntriesNotOnServer(`${missing} stream(s) of the batch are not on the primary (${node}) that confirmed replication`)
  }

  async close (): Promise<void> {
    this.#closed = true
    this.#cluster.off('refresh', this.#closeFormerPrimaries)
    const fences = await Promise.allSettled(this.#fences.values())
    await Promise.all(fences.map((f) => f.status === 'fulfilled' ? f.value.close() : undefined))
  }
}

/** The fence (one Redis) or the fences (one per primary of a cluster) when REDIS_WAIT_REPLICAS > 0; null when off. */
export async function createReplication ({ target, redis, keys, replicas, timeoutMs, commandTimeoutMs, name, onError }: {
  target: RedisTarget
  /** the client whose slot map tells a cluster's primaries apart (unused on one Redis) */
  redis: RedisClient
  keys: Keys
  replicas: number
  timeoutMs: number
  commandTimeoutMs: number
  name: string
  onError: (err: Error) => void
}): Promise<Replication | null> {
  if (replicas === 0) return null
  const options = { replicas, timeoutMs, commandTimeoutMs, name, onError }
  if (target.kind === 'cluster') return new ShardFences(redis as Cluster, keys, options)
  return new ReplicationFence({ redis: await fenceConnection(target, options), key: keys.replicationFence, replicas, timeoutMs })
}
