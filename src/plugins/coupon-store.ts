import fp from 'fastify-plugin'
import { CouponStore } from '../issuing/coupon-store.js'
import { databaseId } from '../db/queries/coupons.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    couponStore: CouponStore
  }
}

export default fp(async function couponStorePlugin (fastify, { config }: { config: Config }) {
  const id = await databaseId(fastify.db)
  await fastify.redis.set(fastify.keys.databaseId, id, 'NX')
  const bound = await fastify.redis.get(fastify.keys.databaseId)
  if (bound !== id) {
    throw new Error(`Redis keys under REDIS_PREFIX "${config.redisPrefix}" belong to another database (${bound}, this one is ${id}). ` +
      'Use a different REDIS_PREFIX for this database, or delete those keys if that database is gone.')
  }
  fastify.decorate('couponStore', new CouponStore({
    redis: fastify.redis,
    db: fastify.db,
    keys: fastify.keys,
    backlogCap: config.backlogCap,
    idempotencyTtlSeconds: config.idempotencyTtlSeconds
  }))
}, { name: 'coupon-store', dependencies: ['redis', 'database'] })
