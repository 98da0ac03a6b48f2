// `npm run reconcile -- [couponId] [--json]`: do the books balance? See src/consistency/reconcile.ts.
// Read-only: safe to run against a live service. Exit 0 balanced, 1 a coupon disagrees, 2 the check failed.
import { describeRedis, loadConfig } from '../config.js'
import { openDatabase } from '../db/client.js'
import { connectRedis, createRedis } from '../redis/client.js'
import { createKeys } from '../redis/keys.js'
import { EXIT_FAILED, parseReconcileArgs, runReconcile } from '../consistency/reconcile.js'

async function main (): Promise<number> {
  const args = parseReconcileArgs(process.argv.slice(2))
  const config = loadConfig()
  const redis = createRedis({ target: config.redis, commandTimeoutMs: 30_000, name: 'couponrush-reconcile' })
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolSize: 2 })
  try {
    await connectRedis(redis).catch((err) => { throw new Error(`cannot reach Redis (${describeRedis(config.redis)}): ${err.message}`) })
    return await runReconcile({ redis, db: database.db, keys: createKeys(config.redisPrefix) }, args, process.stdout)
  } finally {
    redis.disconnect()
    await database.close()
  }
}

main().then((code) => { process.exitCode = code }, (err) => {
  console.error(`reconcile failed: ${err instanceof Error ? err.message : err}`)
  process.exitCode = EXIT_FAILED
})
