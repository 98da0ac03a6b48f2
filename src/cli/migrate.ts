// `npm run migrate`: apply migrations/ to DATABASE_URL (the service also does this at startup).
import { loadConfig } from '../config.js'
import { openDatabase } from '../db/client.js'

const config = loadConfig()
const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolSize: 1 })
try {
  await database.migrate()
  console.log(`migrate: ${database.kind === 'pglite' ? `embedded database in ${config.dataDir}` : 'database'} is up to date`)
} catch (err) {
  console.error(`migrate failed: ${(err as Error).message}`)
  process.exitCode = 1
} finally {
  await database.close()
}
