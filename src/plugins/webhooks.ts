// Runs the webhook delivery loop in this process (WEBHOOKS_ENABLED; several instances share the work
// through leases, see src/db/queries/webhooks.ts), and the outbox's pruning (EVENTS_RETENTION_DAYS).
import fp from 'fastify-plugin'
import { DeliveryLoop } from '../webhooks/delivery-loop.js'
import { scheduleEventPruning } from '../events/retention.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    deliveryLoop: DeliveryLoop | null
    /** EVENTS_ENABLED: whether persisted facts are announced (routes refuse webhooks and the feed otherwise) */
    eventsEnabled: boolean
  }
}

export default fp(async function webhooksPlugin (fastify, { config }: { config: Config }) {
  fastify.decorate('eventsEnabled', config.eventsEnabled)
  // Prunes whatever the outbox holds, also when events were switched off after a while.
  const { days, cron } = config.eventRetention
  if (days > 0 && cron !== '') {
    let pruning: ReturnType<typeof scheduleEventPruning> | null = null
    fastify.addHook('onReady', async () => { pruning = scheduleEventPruning(fastify.db, fastify.log.child({ component: 'events' }), { cronExpression: cron, retentionDays: days }) })
    fastify.addHook('onClose', async () => { await pruning?.destroy() })
  }
  if (!config.webhooks.enabled) {
    fastify.decorate('deliveryLoop', null)
    return
  }
  const loop = new DeliveryLoop({ db: fastify.db, log: fastify.log.child({ component: 'webhooks' }), ...config.webhooks })
  fastify.decorate('deliveryLoop', loop)
  fastify.addHook('onReady', async () => { loop.start() })
  fastify.addHook('onClose', async () => { await loop.stop() })
}, { name: 'webhooks', dependencies: ['database'] })
