// The database handle; migrations run before the app serves anything.
import fp from 'fastify-plugin'
import { sql } from 'drizzle-orm'
import { openDatabase, type Database, type Db } from '../db/client.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    db: Db
    database: Database
  }
}

/** With synchronous_commit off, a commit the consumer acknowledged can vanish in a Postgres crash. */
export async function assertDurableCommits (db: Db): Promise<void> {
  const result: any = await db.execute(sql`SHOW synchronous_commit`)
  const value = String(result.rows?.[0]?.synchronous_commit ?? 'on')
  if (value === 'off') {
    throw new Error('Postgres synchronous_commit is off: the consumer would acknowledge issues a crash can still lose. Set synchronous_commit = on (or local/remote_write/remote_apply).')
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
