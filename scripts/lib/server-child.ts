// A baseline server in its own process, so the load generator never shares the measured event loop.
// argv: <mode> <config as JSON>; modes:
//   bare   baseline A: the service's Fastify options, a POST route with the issue body schema, no I/O
//   redis  baseline B: the same route plus one Redis round trip (PING) on the service's Redis client
// The real service ('app') is not started here but as the built `node dist/server.js` (scripts/lib/server.ts).
// Talks to the parent over IPC: sends { port } once listening; answers 'rss', 'cpu' (µs used), 'close'.
import Fastify, { type FastifyInstance } from 'fastify'
import { serverOptions } from '../../src/app.js'
import type { Config } from '../../src/config.js'
import { connectRedis, createRedis } from '../../src/redis/client.js'
import { userId } from '../../src/routes/schemas.js'

export type ServerMode = 'bare' | 'redis' | 'app'

const body = { type: 'object', required: ['userId'], additionalProperties: false, properties: { userId } } as const
const okBody = { type: 'object', required: ['ok'], properties: { ok: { type: 'boolean' }, userId: { type: 'string' } } } as const

async function baseline (config: Config, withRedis: boolean): Promise<FastifyInstance> {
  const fastify = Fastify(serverOptions(config))
  const redis = withRedis ? await connectRedis(createRedis({ target: config.redis, commandTimeoutMs: config.redisCommandTimeoutMs })) : null
  if (redis) fastify.addHook('onClose', async () => { redis.disconnect() })
  fastify.post<{ Params: { couponId: number }, Body: { userId: string } }>('/coupons/:couponId/issues', {
    schema: {
      params: { type: 'object', properties: { couponId: { type: 'integer' } } },
      body,
      response: { 201: okBody }
    }
  }, async (request, reply) => {
    if (redis) await redis.ping()
    return reply.status(201).send({ ok: true, userId: request.body.userId })
  })
  return fastify
}

async function main () {
  const mode = process.argv[2] as ServerMode
  if (mode !== 'bare' && mode !== 'redis') throw new Error(`unknown baseline mode ${mode}`)
  const config = JSON.parse(process.argv[3]!) as Config
  const app = await baseline(config, mode === 'redis')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  const port = typeof address === 'object' && address ? address.port : 0
  process.on('message', (msg: { id: number, cmd: string }) => {
    let value: unknown = null
    if (msg.cmd === 'rss') value = process.memoryUsage().rss
    if (msg.cmd === 'cpu') { const { user, system } = process.cpuUsage(); value = user + system }
    if (msg.cmd === 'close') {
      // The listener's promise would be dropped by the emitter: a failed close must still end the child.
      app.close().then(
        () => process.send!({ id: msg.id, value: null }, () => process.exit(0)),
        (err) => { console.error('server child: close failed:', err); process.exit(1) })
      return
    }
    process.send!({ id: msg.id, value })
  })
  process.send!({ port })
}

main().catch((err) => {
  console.error('server child failed:', err)
  process.exit(1)
})
