// The periodic consistency check of active campaigns (CONSISTENCY_CRON; empty = off), read-only.
import fp from 'fastify-plugin'
import { ConsistencyWatch } from '../consistency/watch.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    consistencyWatch: ConsistencyWatch
  }
}

export default fp(async function consistencyWatchPlugin (fastify, { config }: { config: Config }) {
  const watch = new ConsistencyWatch({ redis: fastify.redis, db: fastify.db, keys: fastify.keys }, fastify.log.child({ component: 'consistency' }),
    { maxHolders: config.consistencyWatchMaxHolders })
  fastify.decorate('consistencyWatch', watch)
  if (config.consistencyCron === '') return
  let task: ReturnType<ConsistencyWatch['schedule']> | null = null
  fastify.addHook('onReady', async () => { task = watch.schedule(config.consistencyCron) })
  fastify.addHook('onClose', async () => { await task?.destroy() })
}, { name: 'consistency-watch', dependencies: ['redis', 'database'] })
