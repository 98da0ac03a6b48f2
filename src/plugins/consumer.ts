// Runs the persistence loop inside the web process, plus a periodic reclaim of abandoned entries.
import fp from 'fastify-plugin'
import { connectRedis, createRedis } from '../redis/client.js'
import { IssueEventConsumer, schedulePeriodicReclaim } from '../persistence/consumer.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    consumer: IssueEventConsumer | null
  }
}

export default fp(async function consumerPlugin (fastify, { config }: { config: Config }) {
  if (!config.consumer.enabled) {
    fastify.decorate('consumer', null)
    return
  }
  const blockingRedis = createRedis({ url: config.redisUrl, blocking: true, name: 'couponrush-consumer' })
  blockingRedis.on('error', (err) => fastify.log.warn({ err: err.message }, 'consumer redis connection error'))
  await connectRedis(blockingRedis)
  const log = fastify.log.child({ component: 'consumer' })
  const consumer = new IssueEventConsumer({
    redis: fastify.redis,
    blockingRedis,
    db: fastify.db,
    keys: fastify.keys,
    log,
    ...config.consumer
  })
  fastify.decorate('consumer', consumer)
  const reclaimTask = schedulePeriodicReclaim(consumer, config.consumer.reclaimCron, log, {
    strandedCoupons: () => fastify.couponStore.takeStranded(),
    idempotencyTtlMs: config.idempotencyTtlSeconds * 1000
  })

  fastify.addHook('onReady', async () => { consumer.start() })
  // Registered after the redis plugin, so this runs before its connection closes.
  fastify.addHook('onClose', async () => {
    await reclaimTask.destroy()
    await consumer.stop()
    blockingRedis.disconnect()
  })
}, { name: 'consumer', dependencies: ['redis', 'database', 'coupon-store'] })
