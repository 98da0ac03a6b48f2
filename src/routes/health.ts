import type { FastifyPluginAsync } from 'fastify'
import { pingDatabase } from '../db/client.js'
import { checkRedisReady } from '../redis/client.js'

// A readiness probe that hangs is as bad as one that fails.
const PROBE_TIMEOUT_MS = 1000

const healthRoutes: FastifyPluginAsync = async (fastify) => {
  fastify.get('/health', {
    schema: { summary: 'Liveness: the process answers', tags: ['health'], response: { 200: { type: 'object', properties: { status: { type: 'string' } } } } }
  }, async () => ({ status: 'ok' }))

  fastify.get('/ready', {
    schema: {
      summary: 'Readiness: Redis (on a cluster: every primary, cluster_state ok) and Postgres reachable (503 otherwise)',
      tags: ['health'],
      response: {
        200: { type: 'object', properties: { status: { type: 'string' }, redis: { type: 'string' }, database: { type: 'string' } } },
        503: { type: 'object', properties: { status: { type: 'string' }, redis: { type: 'string' }, database: { type: 'string' } } }
      }
    }
  }, async (_request, reply) => {
    const check = async (probe: Promise<unknown>) => {
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<string>((resolve) => { timer = setTimeout(resolve, PROBE_TIMEOUT_MS, 'down: no answer within 1 s') })
      try {
        return await Promise.race([probe.then(() => 'ok', (err: Error) => `down: ${err.message}`), timeout])
      } finally {
        clearTimeout(timer)
      }
    }
    const [redis, database] = await Promise.all([check(checkRedisReady(fastify.redis)), check(pingDatabase(fastify.db))])
    const ready = redis === 'ok' && database === 'ok'
    return reply.status(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready', redis, database })
  })
}

export default healthRoutes
