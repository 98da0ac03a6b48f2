// Runs the persistence loop inside the web process, plus a periodic reclaim of abandoned entries.
import fp from 'fastify-plugin'
import cron from 'node-cron'
import { connectRedis, createRedis } from '../redis/client.js'
import { IssueEventConsumer } from '../persistence/consumer.js'
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
  const blockingRedis = createRedis({ url: config.redisUrl || 'redis://127.0.0.1:6379', blocking: true, name: 'couponrush-consumer' })
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
  const reclaimTask = cron.schedule(config.consumer.reclaimCron, async () => {
    // While our own writes fail, a reclaim cannot write either; it would only claim entries again
    // (our own batch in hand included) and push their delivery count past MAX_DELIVERIES, so that good
    // entries get parked as poison once the database is back.
    if (consumer.backingOff) return
    const perCoupon = await consumer.reclaim().catch((err) => { log.error({ err }, 'periodic reclaim failed') })
    if (perCoupon && Object.keys(perCoupon).length > 0) log.info({ perCoupon }, 'reclaimed abandoned entries')
  }, { noOverlap: true, name: 'reclaim-pending-issue-events' })

  fastify.addHook('onReady', async () => { consumer.start() })
  // Registered after the redis plugin, so this runs before its connection closes.
  fastify.addHook('onClose', async () => {
    await reclaimTask.destroy()
    await consumer.stop()
    blockingRedis.disconnect()
  })
}, { name: 'consumer', dependencies: ['redis', 'database'] })
