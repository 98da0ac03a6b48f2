// `npm run drain [-- --json]`: persist everything in the coupons' streams now, then exit.
// Reclaims every pending entry regardless of idle time, so run it when the service is stopped or stuck.
// Shows a progress bar on a terminal, plain lines otherwise, one JSON document with --json
// (src/persistence/drain-run.ts).
import { parseArgs } from 'node:util'
import { pino } from 'pino'
import { describeRedis, loadConfig } from '../config.js'
import { openDatabase } from '../db/client.js'
import { connectRedis, createRedis } from '../redis/client.js'
import { createKeys } from '../redis/keys.js'
import { IssueEventConsumer } from '../persistence/consumer.js'
import { runDrain, streamBacklog } from '../persistence/drain-run.js'

async function main (): Promise<number> {
  const { values } = parseArgs({ args: process.argv.slice(2), options: { json: { type: 'boolean', default: false } } })
  const config = loadConfig()
  // Logs go to stderr: stdout carries the progress and the summary (or the JSON document).
  const log = pino({ level: config.logLevel === 'info' ? 'warn' : config.logLevel }, pino.destination(2))
  const redis = createRedis({ target: config.redis, commandTimeoutMs: 30_000, name: 'couponrush-drain' })
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolSize: 2 })
  try {
    await connectRedis(redis).catch((err) => { throw new Error(`cannot reach Redis (${describeRedis(config.redis)}): ${err.message}`) })
    await database.migrate().catch((err) => { throw new Error(`cannot reach the database: ${err.message}`) })
    const keys = createKeys(config.redisPrefix)
    const consumer = new IssueEventConsumer({
      redis,
      blockingRedis: redis,
      db: database.db,
      keys,
      log,
      ...config.consumer,
      name: `drain-${process.pid}`
    })
    // Streams off the read list with entries waiting are put back first, so the total counts them.
    await consumer.maintenance.discoverStreams()
    await runDrain({ consumer, backlog: () => streamBacklog(redis, keys), out: process.stdout, json: values.json })
    return 0
  } finally {
    redis.disconnect()
    await database.close()
  }
}

main().then((code) => process.exit(code), (err) => {
  console.error(`drain failed: ${err instanceof Error ? err.message : err}`)
  process.exit(1)
})
