// For fault tests that run the app in this process (they add coverage): a second consumer of the
// app's group, and a Postgres connection holding a lock the consumer's insert needs.
import pg from 'pg'
import type { FastifyInstance } from 'fastify'
import { createRedis } from '../../../src/redis/client.js'
import { IssueEventConsumer } from '../../../src/persistence/consumer.js'
import type { TestEnv } from '../../helpers/env.js'

interface Teardown { teardown (fn: () => unknown): void }

type App = FastifyInstance & { env: TestEnv }

/** A consumer on the app's group with its own blocking connection, stopped at teardown. */
export function extraConsumer (t: Teardown, app: App, name: string, overrides: { reclaimMinIdleMs?: number } = {}) {
  const blockingRedis = createRedis({ url: app.env.config.redisUrl, blocking: true, name })
  blockingRedis.on('error', () => {})
  const consumer = new IssueEventConsumer({
    redis: app.redis, blockingRedis, db: app.db, keys: app.keys, log: app.log,
    ...app.env.config.consumer, ...overrides, name
  })
  t.teardown(async () => {
    await consumer.stop()
    blockingRedis.disconnect()
  })
  return consumer
}

/** Holds `LOCK TABLE <table> IN <mode> MODE` in an open transaction until release(). */
export async function lockTable (t: Teardown, databaseUrl: string, table: string, mode = 'SHARE') {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  await client.query('BEGIN')
  await client.query(`LOCK TABLE ${table} IN ${mode} MODE`)
  let released = false
  const release = async () => {
    if (released) return
    released = true
    await client.query('ROLLBACK').catch(() => {})
    await client.end().catch(() => {})
  }
  t.teardown(release)
  return { release }
}
