// `npm run consume`: the persistence loop in its own process. Run the web processes with
// CONSUMER_ENABLED=false and one (or more) of these: decoding stream entries and building inserts then
// no longer takes CPU from the request path (see docs/benchmarks.md, "What limits the issue endpoint").
// Stops on SIGINT/SIGTERM after committing and acknowledging the batch in hand.
import closeWithGrace from 'close-with-grace'
import { pino } from 'pino'
import { loadConfig } from '../config.js'
import { openDatabase } from '../db/client.js'
import { assertDurableCommits } from '../plugins/database.js'
import { connectRedis, createRedis } from '../redis/client.js'
import { createKeys } from '../redis/keys.js'
import { IssueEventConsumer, schedulePeriodicReclaim } from '../persistence/consumer.js'

async function main (): Promise<void> {
  const config = loadConfig()
  const log = pino({ level: config.logLevel })
  const redis = createRedis({ url: config.redisUrl, commandTimeoutMs: config.redisCommandTimeoutMs, name: 'couponrush-consume' })
  const blockingRedis = createRedis({ url: config.redisUrl, blocking: true, name: 'couponrush-consume-blocking' })
  redis.on('error', (err) => log.warn({ err: err.message }, 'redis connection error'))
  blockingRedis.on('error', (err) => log.warn({ err: err.message }, 'consumer redis connection error'))
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolSize: 2 })
  await connectRedis(redis)
  await connectRedis(blockingRedis)
  await database.migrate()
  await assertDurableCommits(database.db)
  const consumer = new IssueEventConsumer({
    redis, blockingRedis, db: database.db, keys: createKeys(config.redisPrefix), log: log.child({ component: 'consumer' }), ...config.consumer
  })
  const reclaimTask = schedulePeriodicReclaim(consumer, config.consumer.reclaimCron, log, { idempotencyTtlMs: config.idempotencyTtlSeconds * 1000 })
  consumer.start()
  log.info({ consumer: consumer.name }, 'consuming issue events')
  closeWithGrace({ delay: config.shutdownTimeoutMs }, async ({ signal, err }) => {
    if (err) log.error({ err }, 'stopping after an error')
    else log.info({ signal }, 'stopping: finishing the batch in hand')
    await reclaimTask.destroy()
    await consumer.stop()
    redis.disconnect()
    blockingRedis.disconnect()
    await database.close()
  })
}

main().catch((err) => {
  console.error(`consume failed: ${err instanceof Error ? err.message : err}`)
  process.exit(1)
})
