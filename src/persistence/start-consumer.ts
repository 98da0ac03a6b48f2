// The one way to run the persistence loop, for the web process (plugins/consumer.ts) and for
// `npm run consume` alike: its own blocking connection, the consumer, and the maintenance schedule.
import type { RedisClient } from '../redis/client.js'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config.js'
import type { Db } from '../db/client.js'
import { connectRedis, createRedis } from '../redis/client.js'
import { createReplication } from '../redis/replication-fence.js'
import type { Keys } from '../redis/keys.js'
import { CampaignStats } from '../issuing/campaign-stats.js'
import { IssueEventConsumer } from './consumer.js'
import { scheduleMaintenance, type MaintenanceOptions } from './maintenance.js'

export interface StartConsumerOptions {
  config: Config
  /** the connection for acks, claims and maintenance (the blocking read gets its own) */
  redis: RedisClient
  db: Db
  keys: Keys
  log: FastifyBaseLogger
  strandedCoupons?: MaintenanceOptions['strandedCoupons']
  strandedAgain?: MaintenanceOptions['strandedAgain']
}

export interface RunningConsumer {
  consumer: IssueEventConsumer
  /** Starts the loop (it reclaims what a dead consumer left behind first). */
  start (): void
  /** Stops the schedule, finishes the batch in hand, closes the blocking connection. */
  stop (): Promise<void>
}

/** Connects the blocking connection and wires the consumer and its maintenance; start() runs the loop. */
export async function startConsumer ({ config, redis, db, keys, log, strandedCoupons, strandedAgain }: StartConsumerOptions): Promise<RunningConsumer> {
  const blockingRedis = createRedis({ target: config.redis, blocking: true, name: 'couponrush-consumer' })
  blockingRedis.on('error', (err) => log.warn({ err: err.message }, 'consumer redis connection error'))
  await connectRedis(blockingRedis)
  // REDIS_WAIT_REPLICAS: nothing is committed to Postgres before the replicas have it (its own connection).
  const replicationFence = await createReplication({
    target: config.redis,
    redis,
    keys,
    ...config.redisWait,
    commandTimeoutMs: config.redisCommandTimeoutMs,
    name: 'couponrush-consumer-fence',
    onError: (err) => log.warn({ err: err.message }, 'consumer replication fence connection error')
  })
  const consumer = new IssueEventConsumer({ redis, blockingRedis, db, keys, log, replicationFence, announceEvents: config.eventsEnabled, ...config.consumer })
  // The worst persistence lag per campaign, for GET /admin/coupons/:id/stats (flushed once a second).
  const lagStats = new CampaignStats(redis, keys)
  consumer.on('batch', ({ lagMsByCoupon }) => { for (const [couponId, ms] of lagMsByCoupon) lagStats.noteLag(couponId, ms) })
  const flushTimer = setInterval(() => { lagStats.flush().catch(() => {}) }, 1000).unref()
  const schedule = scheduleMaintenance(consumer, config.consumer.reclaimCron, log, {
    strandedCoupons,
    strandedAgain,
    idempotencyTtlMs: config.idempotencyTtlSeconds * 1000
  })
  return {
    consumer,
    start: () => consumer.start(),
    async stop () {
      await schedule.destroy()
      await consumer.stop()
      clearInterval(flushTimer)
      await lagStats.flush()
      blockingRedis.disconnect()
      await replicationFence?.close()
    }
  }
}
