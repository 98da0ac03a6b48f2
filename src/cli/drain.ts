// `npm run drain`: persist everything in the coupons' streams now, then exit.
// Reclaims every pending entry regardless of idle time, so run it when the service is stopped or stuck.
import { pino } from 'pino'
import { loadConfig } from '../config.js'
import { openDatabase } from '../db/client.js'
import { connectRedis, createRedis } from '../redis/client.js'
import { createKeys } from '../redis/keys.js'
import { IssueEventConsumer } from '../persistence/consumer.js'

async function main (): Promise<number> {
  const config = loadConfig()
  const log = pino({ level: config.logLevel === 'info' ? 'warn' : config.logLevel })
  const redis = createRedis({ url: config.redisUrl, commandTimeoutMs: 30_000, name: 'couponrush-drain' })
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolSize: 2 })
  try {
    await connectRedis(redis).catch((err) => { throw new Error(`cannot reach Redis at ${config.redisUrl}: ${err.message}`) })
    await database.migrate().catch((err) => { throw new Error(`cannot reach the database: ${err.message}`) })
    const consumer = new IssueEventConsumer({
      redis,
      blockingRedis: redis,
      db: database.db,
      keys: createKeys(config.redisPrefix),
      log,
      ...config.consumer,
      name: `drain-${process.pid}`
    })
    const report = await consumer.drain()
    const coupons = Object.entries(report.perCoupon)
    console.log(coupons.length === 0 ? 'drain: nothing to persist' : 'drain: entries handled per coupon')
    for (const [couponId, entries] of coupons) console.log(`  coupon ${couponId}: ${entries}`)
    const { inserted, duplicates, failed, deletedWhilePending } = report.stats
    console.log(`drain: ${inserted} rows inserted, ${duplicates} already persisted, ${failed} parked in failed_issue_events, ${deletedWhilePending} pending entries found deleted`)
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
