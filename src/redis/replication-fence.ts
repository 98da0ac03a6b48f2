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
// WAIT round trip, however many requests).
//
// A fence only vouches for the server it ran on. It reports that server's run_id, and a caller checks
// that its own write went to the same one (src/issuing/server-change.ts tracks the request connection's
// server): during a failover the two connections can briefly reach different masters.
import type { Redis } from 'ioredis'
import type { RedisTarget } from '../config.js'
import { connectRedis, createRedis, serverRunId } from './client.js'

export class ReplicationNotConfirmed extends Error {
  override name = 'ReplicationNotConfirmed'
}

/**
 * Entries a consumer read are not on the server that fenced: read from a master that has since been
 * replaced (a failover). Retrying cannot help; the batch must be dropped and read again from this server.
 */
export class EntriesNotOnServer extends ReplicationNotConfirmed {
  override name = 'EntriesNotOnServer'
}

export interface ReplicationFenceOptions {
  /** the fence's own connection: nothing else may use it (WAIT blocks it) */
  redis: Redis
  /** keys.replicationFence */
  key: string
  replicas: number
  timeoutMs: number
}

export class ReplicationFence {
  readonly #o: ReplicationFenceOptions
  #runId: string | null = null
  #connection = 0
  #inFlight: Promise<string> | null = null
  #next: Promise<string> | null = null

  constructor (options: ReplicationFenceOptions) {
    this.#o = options
    options.redis.on('close', () => {
      this.#connection++
      this.#runId = null
    })
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
    const next = current.then(noop, noop).then(() => {
      this.#next = null
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

  async #fence (): Promise<string> {
    const { redis, key, replicas, timeoutMs } = this.#o
    const connection = this.#connection
    const runId = this.#runId ?? await serverRunId(redis)
    await redis.incr(key)
    const acknowledged = Number(await redis.call('WAIT', replicas, timeoutMs))
    if (connection !== this.#connection) throw new ReplicationNotConfirmed('the fence connection changed server while it waited')
    this.#runId = runId
    if (acknowledged < replicas) {
      throw new ReplicationNotConfirmed(`${acknowledged} of ${replicas} replica(s) acknowledged within ${timeoutMs} ms`)
    }
    return runId
  }
}

const noop = () => {}

/** The fence with its own connection when REDIS_WAIT_REPLICAS > 0; null when off. */
export async function createReplicationFence ({ target, replicas, timeoutMs, commandTimeoutMs, key, name, onError }: {
  target: RedisTarget, replicas: number, timeoutMs: number, commandTimeoutMs: number, key: string, name: string, onError: (err: Error) => void
}): Promise<ReplicationFence | null> {
  if (replicas === 0) return null
  // One connection, one server: the fence cannot speak for a cluster's shards (loadConfig refuses the pair).
  if (target.kind === 'cluster') throw new Error('REDIS_WAIT_REPLICAS is not supported with REDIS_CLUSTER_NODES yet')
  // The command timeout must outlast WAIT's own timeout, or the connection would give up first.
  const redis = createRedis({ target, commandTimeoutMs: timeoutMs + commandTimeoutMs, name })
  redis.on('error', onError)
  await connectRedis(redis)
  return new ReplicationFence({ redis, key, replicas, timeoutMs })
}
