// The Redis connection for requests, with the issue scripts defined on it.
import fp from 'fastify-plugin'
import type { RedisClient } from '../redis/client.js'
import { connectRedis, createRedis, redisDurabilityRisks } from '../redis/client.js'
import { createKeys, type Keys } from '../redis/keys.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    redis: RedisClient
    keys: Keys
  }
}

export default fp(async function redisPlugin (fastify, { config }: { config: Config }) {
  const redis = createRedis({ target: config.redis, commandTimeoutMs: config.redisCommandTimeoutMs, name: 'couponrush' })
  redis.on('error', (err) => fastify.log.warn({ err: err.message }, 'redis connection error'))
  await connectRedis(redis)
  fastify.decorate<RedisClient>('redis', redis)
  fastify.decorate('keys', createKeys(config.redisPrefix))
  fastify.addHook('onClose', async () => { await redis.quit().catch(() => redis.disconnect()) })

  const risks = await redisDurabilityRisks(redis, { waitReplicas: config.redisWait.replicas }).catch((err) => [`could not read Redis configuration (${(err as Error).message})`])
  if (risks.length > 0 && config.strictRedis) {
    throw new Error(`STRICT_REDIS=1 and Redis is not safe to run on:\n- ${risks.join('\n- ')}`)
  }
  for (const risk of risks) fastify.log.warn(`REDIS DURABILITY: ${risk}`)
  if (config.redis.kind === 'sentinel' && config.redisWait.replicas === 0) {
    // Said at every start unless REDIS_WAIT_REPLICAS closes this window. Persisted
    // issues the new master forgot are not at risk: the counters are rebuilt (src/issuing/server-change.ts).
    fastify.log.warn('REDIS DURABILITY: with Sentinel, a failover can lose answered issues the old master had neither ' +
      'replicated nor persisted to Postgres; REDIS_WAIT_REPLICAS=1 closes that window (README, Scaling out)')
  }
  if (config.redis.kind === 'cluster' && config.redisWait.replicas === 0) {
    // As with Sentinel: persisted issues a promoted replica forgot are not at risk (the server-change guard
    // runs per primary, src/issuing/server-change.ts); unreplicated, unpersisted answers are.
    fastify.log.warn('REDIS DURABILITY: with Redis Cluster, a primary that crashes can lose answered issues it had neither ' +
      'replicated nor persisted to Postgres; REDIS_WAIT_REPLICAS=<replicas per primary> closes that window (README, Scaling out)')
  }
}, { name: 'redis' })
