// Runs the webhook delivery loop in this process (WEBHOOKS_ENABLED; several instances share the work
// through leases, see src/db/queries/webhooks.ts).
import fp from 'fastify-plugin'
import { DeliveryLoop } from '../webhooks/delivery-loop.js'
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
  if (!config.webhooks.enabled) {
    fastify.decorate('deliveryLoop', null)
    return
  }
  const loop = new DeliveryLoop({ db: fastify.db, log: fastify.log.child({ component: 'webhooks' }), ...config.webhooks })
  fastify.decorate('deliveryLoop', loop)
  fastify.addHook('onReady', async () => { loop.start() })
  fastify.addHook('onClose', async () => { await loop.stop() })
}, { name: 'webhooks', dependencies: ['database'] })
