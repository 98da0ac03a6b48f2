// `npm run consume`: the persistence loop in its own process. Run the web processes with
// CONSUMER_ENABLED=false and one (or more) of these: decoding stream entries and building inserts then
// no longer takes CPU from the request path (see docs/benchmarks.md, "What limits the issue endpoint").
// Stops on SIGINT/SIGTERM after committing and acknowledging the batch in hand.
import closeWithGrace from 'close-with-grace'
import { pino } from 'pino'
import { loadConfig } from '../config.js'
import { assertDurableCommits, openDatabase } from '../db/client.js'
import { connectRedis, createRedis } from '../redis/client.js'
import { createKeys } from '../redis/keys.js'
import { startConsumer } from '../persistence/start-consumer.js'

async function main (): Promise<void> {
  const config = loadConfig()
  const log = pino({ level: config.logLevel })
  const redis = createRedis({ target: config.redis, commandTimeoutMs: config.redisCommandTimeoutMs, name: 'couponrush-consume' })
  redis.on('error', (err) => log.warn({ err: err.message }, 'redis connection error'))
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolSize: 2 })
  await connectRedis(redis)
  await database.migrate()
  await assertDurableCommits(database.db)
  const running = await startConsumer({ config, redis, db: database.db, keys: createKeys(config.redisPrefix), log: log.child({ component: 'consumer' }) })
  running.start()
  log.info({ consumer: running.consumer.name }, 'consuming issue events')
  closeWithGrace({ delay: config.shutdownTimeoutMs }, async ({ signal, err }) => {
    if (err) log.error({ err }, 'stopping after an error')
    else log.info({ signal }, 'stopping: finishing the batch in hand')
    await running.stop()
    redis.disconnect()
    await database.close()
  })
}

main().catch((err) => {
  console.error(`consume failed: ${err instanceof Error ? err.message : err}`)
  process.exit(1)
})
