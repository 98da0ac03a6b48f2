// The one way to run the persistence loop, for the web process (plugins/consumer.ts) and for
// `npm run consume` alike: its own blocking connection, the consumer, and the maintenance schedule.
import type { Redis } from 'ioredis'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config.js'
import type { Db } from '../db/client.js'
import { connectRedis, createRedis } from '../redis/client.js'
import type { Keys } from '../redis/keys.js'
import { IssueEventConsumer } from './consumer.js'
import { scheduleMaintenance, type MaintenanceOptions } from './maintenance.js'

export interface StartConsumerOptions {
  config: Config
  /** the connection for acks, claims and maintenance (the blocking read gets its own) */
  redis: Redis
  db: Db
  keys: Keys
  log: FastifyBaseLogger
  strandedCoupons?: MaintenanceOptions['strandedCoupons']
}

export interface RunningConsumer {
  consumer: IssueEventConsumer
  /** Starts the loop (it reclaims what a dead consumer left behind first). */
  start (): void
  /** Stops the schedule, finishes the batch in hand, closes the blocking connection. */
  stop (): Promise<void>
}

/** Connects the blocking connection and wires the consumer and its maintenance; start() runs the loop. */
export async function startConsumer ({ config, redis, db, keys, log, strandedCoupons }: StartConsumerOptions): Promise<RunningConsumer> {
  const blockingRedis = createRedis({ url: config.redisUrl, blocking: true, name: 'couponrush-consumer' })
  blockingRedis.on('error', (err) => log.warn({ err: err.message }, 'consumer redis connection error'))
  await connectRedis(blockingRedis)
  const consumer = new IssueEventConsumer({ redis, blockingRedis, db, keys, log, ...config.consumer })
  const schedule = scheduleMaintenance(consumer, config.consumer.reclaimCron, log, {
    strandedCoupons,
    idempotencyTtlMs: config.idempotencyTtlSeconds * 1000
  })
  return {
    consumer,
    start: () => consumer.start(),
    async stop () {
      await schedule.destroy()
      await consumer.stop()
      blockingRedis.disconnect()
    }
  }
}
