import fp from 'fastify-plugin'
import { CouponStore } from '../issuing/coupon-store.js'
import { CampaignStats } from '../issuing/campaign-stats.js'
import { followStockReturns, SoldOutMarkers } from '../issuing/sold-out-markers.js'
import { databaseId } from '../db/queries/coupons.js'
import { ClusterServerGuard, ServerChangeGuard } from '../issuing/server-change.js'
import { createReplication } from '../redis/replication-fence.js'
import type { Cluster, Redis } from 'ioredis'
import type { Config } from '../config.js'

/** How often this instance adds what it counted to the shared statistics. */
const STATS_FLUSH_MS = 1000

declare module 'fastify' {
  interface FastifyInstance {
    couponStore: CouponStore
    /** this instance's share of the campaign statistics, added to Redis once a second */
    campaignStats: CampaignStats
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
  // Before the first request: records this server, or drops counters inherited from another one. On a
  // cluster every primary is a server of its own, checked on its first use (and again after a reconnect,
  // a failover, a slot it did not serve), and the coupon scripts run on the primary's own connection.
  let serverGuard: ServerChangeGuard | ClusterServerGuard
  if (fastify.redis.isCluster) {
    serverGuard = new ClusterServerGuard(fastify.redis as Cluster, fastify.keys, fastify.log)
  } else {
    serverGuard = new ServerChangeGuard(fastify.redis as Redis, fastify.keys, fastify.log)
    await serverGuard.check()
  }
  const replicationFence = await createReplication({
    target: config.redis,
    redis: fastify.redis,
    keys: fastify.keys,
    ...config.redisWait,
    commandTimeoutMs: config.redisCommandTimeoutMs,
    name: 'couponrush-fence',
    onError: (err) => fastify.log.warn({ err: err.message }, 'replication fence connection error')
  })
  if (replicationFence) fastify.addHook('onClose', async () => { await replicationFence.close() })
  const soldOutMarkers = new SoldOutMarkers({ ttlMs: config.soldOutMarkerTtlMs })
  const unfollow = await followStockReturns(fastify.redis, fastify.keys.stockReturned, soldOutMarkers, fastify.log)
  fastify.addHook('onClose', unfollow)
  fastify.decorate('couponStore', new CouponStore({
    redis: fastify.redis,
    db: fastify.db,
    keys: fastify.keys,
    backlogCap: config.backlogCap,
    idempotencyTtlSeconds: config.idempotencyTtlSeconds,
    soldOutMarkers,
    serverGuard,
    replicationFence
  }))

  const campaignStats = new CampaignStats(fastify.redis, fastify.keys)
  fastify.decorate('campaignStats', campaignStats)
  let flushing: Promise<void> = Promise.resolve()
  const timer = setInterval(() => { flushing = flushing.then(() => campaignStats.flush()) }, STATS_FLUSH_MS).unref()
  // Registered after the redis plugin's hook, so it runs before the connection closes.
  fastify.addHook('onClose', async () => {
    clearInterval(timer)
    await flushing
    await campaignStats.flush()
  })
}, { name: 'coupon-store', dependencies: ['redis', 'database'] })
