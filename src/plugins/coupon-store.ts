import fp from 'fastify-plugin'
import { CouponStore } from '../issuing/coupon-store.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    couponStore: CouponStore
  }
}

export default fp(async function couponStorePlugin (fastify, { config }: { config: Config }) {
  fastify.decorate('couponStore', new CouponStore({
    redis: fastify.redis,
    db: fastify.db,
    keys: fastify.keys,
    backlogCap: config.backlogCap,
    idempotencyTtlSeconds: config.idempotencyTtlSeconds
  }))
}, { name: 'coupon-store', dependencies: ['redis', 'database'] })
