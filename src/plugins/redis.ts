// The Redis connection for requests, with the issue scripts defined on it.
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import { connectRedis, createRedis } from '../redis/client.js'
import { createKeys, type Keys } from '../redis/keys.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    redis: Redis
    keys: Keys
  }
}

/** Settings under which Redis may silently lose counters; each entry is a sentence for the log. */
export async function redisDurabilityRisks (redis: Redis): Promise<string[]> {
  const risks: string[] = []
  const [, policy] = await redis.config('GET', 'maxmemory-policy') as [string, string]
  if (policy.startsWith('allkeys-')) risks.push(`maxmemory-policy is ${policy}: Redis may evict stock counters and idempotency records; use noeviction`)
  if (policy.startsWith('volatile-')) risks.push(`maxmemory-policy is ${policy}: keys with a TTL (idempotency records) may be evicted early; noeviction is safest`)
  const [, aof] = await redis.config('GET', 'appendonly') as [string, string]
  const [, save] = await redis.config('GET', 'save') as [string, string]
  if (aof !== 'yes') {
    risks.push(save === ''
      ? 'Redis has no persistence (appendonly no, save ""): a Redis restart loses every issue not yet persisted to Postgres; run it with --appendonly yes'
      : 'Redis persists only by RDB snapshots: a crash loses issues since the last snapshot that were not yet persisted; run it with --appendonly yes')
  }
  return risks
}

export default fp(async function redisPlugin (fastify, { config }: { config: Config }) {
  const redis = createRedis({ url: config.redisUrl, commandTimeoutMs: config.redisCommandTimeoutMs, name: 'couponrush' })
  redis.on('error', (err) => fastify.log.warn({ err: err.message }, 'redis connection error'))
  await connectRedis(redis)
  fastify.decorate('redis', redis)
  fastify.decorate('keys', createKeys(config.redisPrefix))
  fastify.addHook('onClose', async () => { await redis.quit().catch(() => redis.disconnect()) })

  const risks = await redisDurabilityRisks(redis).catch((err) => [`could not read Redis configuration (${(err as Error).message})`])
  if (risks.length > 0 && config.strictRedis) {
    throw new Error(`STRICT_REDIS=1 and Redis is not safe to run on:\n- ${risks.join('\n- ')}`)
  }
  for (const risk of risks) fastify.log.warn(`REDIS DURABILITY: ${risk}`)
}, { name: 'redis' })
