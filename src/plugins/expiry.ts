// The expiry job (EXPIRY_CRON; empty = off): returns expired, unredeemed units of campaigns with
// returnExpiredToStock to stock (src/issuing/expiry.ts). Safe on every instance at once.
import fp from 'fastify-plugin'
import { ExpiryJob } from '../issuing/expiry.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    expiryJob: ExpiryJob
  }
}

export default fp(async function expiryPlugin (fastify, { config }: { config: Config }) {
  const job = new ExpiryJob({ redis: fastify.redis, keys: fastify.keys, couponStore: fastify.couponStore, log: fastify.log.child({ component: 'expiry' }) })
  fastify.decorate('expiryJob', job)
  if (config.expiryCron === '') return
  let task: ReturnType<ExpiryJob['schedule']> | null = null
  fastify.addHook('onReady', async () => { task = job.schedule(config.expiryCron) })
  fastify.addHook('onClose', async () => { await task?.destroy() })
}, { name: 'expiry', dependencies: ['redis', 'coupon-store'] })
