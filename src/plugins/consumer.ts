// Runs the persistence loop inside the web process, with its maintenance (reclaim, pruning) on a schedule.
import fp from 'fastify-plugin'
import type { IssueEventConsumer } from '../persistence/consumer.js'
import { startConsumer } from '../persistence/start-consumer.js'
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
  const running = await startConsumer({
    config,
    redis: fastify.redis,
    db: fastify.db,
    keys: fastify.keys,
    log: fastify.log.child({ component: 'consumer' }),
    strandedCoupons: () => fastify.couponStore.takeStranded(),
    strandedAgain: (ids) => fastify.couponStore.strand(ids)
  })
  fastify.decorate('consumer', running.consumer)
  fastify.addHook('onReady', async () => { running.start() })
  // Registered after the redis plugin, so this runs before its connection closes.
  fastify.addHook('onClose', async () => { await running.stop() })
}, { name: 'consumer', dependencies: ['redis', 'database', 'coupon-store'] })
