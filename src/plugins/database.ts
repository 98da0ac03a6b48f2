// The database handle; migrations run before the app serves anything.
import fp from 'fastify-plugin'
import { assertDurableCommits, openDatabase, type Database, type Db } from '../db/client.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    db: Db
    database: Database
  }
}

export default fp(async function databasePlugin (fastify, { config }: { config: Config }) {
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir })
  fastify.addHook('onClose', async () => { await database.close() })
  await database.migrate()
  if (config.consumer.enabled) await assertDurableCommits(database.db)
  fastify.decorate('database', database)
  fastify.decorate('db', database.db)
  if (database.kind === 'pglite') fastify.log.info({ dataDir: config.dataDir }, 'no DATABASE_URL: using embedded Postgres (PGlite)')
}, { name: 'database' })
