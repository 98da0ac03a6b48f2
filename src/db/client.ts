// Opens the database: Postgres over node-postgres when DATABASE_URL is set, else embedded PGlite.
import { mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { sql } from 'drizzle-orm'
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core'
import * as schema from './schema.js'

export type Db = PgDatabase<PgQueryResultHKT, typeof schema>

export interface Database {
  db: Db
  kind: 'postgres' | 'pglite'
  /** Applies pending migrations from migrations/ (safe to run from several processes at once). */
  migrate (): Promise<void>
  close (): Promise<void>
}

const migrationsFolder = fileURLToPath(new URL('../../migrations', import.meta.url))
// Any constant works; it only has to be the same for every instance of this service.
const MIGRATION_LOCK = 7305_2026

export interface OpenDatabaseOptions {
  url: string
  dataDir: string
  poolSize?: number
}

export async function openDatabase ({ url, dataDir, poolSize = 10 }: OpenDatabaseOptions): Promise<Database> {
  if (url !== '') {
    const { default: pg } = await import('pg')
    const { drizzle } = await import('drizzle-orm/node-postgres')
    const { migrate } = await import('drizzle-orm/node-postgres/migrator')
    const pool = new pg.Pool({ connectionString: url, max: poolSize, connectionTimeoutMillis: 5000 })
    // An idle client losing its server (Postgres restart) must not crash the process.
    pool.on('error', () => {})
    // Nor may a checked-out one: pg-pool removes its listener at checkout, so a connection dropped between
    // two statements of a transaction (the consumer is almost always inside one) is emitted as an
    // 'error' event nobody listens to, i.e. an uncaught exception. The statement in flight still rejects.
    pool.on('connect', (client) => { client.on('error', () => {}) })
    const db = drizzle(pool, { schema }) as unknown as Db
    return {
      db,
      kind: 'postgres',
      async migrate () {
        const client = await pool.connect()
        try {
          await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK])
          await migrate(drizzle(client, { schema }), { migrationsFolder })
        } finally {
          await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => {})
          client.release()
        }
      },
      close: once(() => pool.end())
    }
  }
  const { PGlite } = await import('@electric-sql/pglite')
  const { drizzle } = await import('drizzle-orm/pglite')
  const { migrate } = await import('drizzle-orm/pglite/migrator')
  mkdirSync(dataDir, { recursive: true })
  const client = new PGlite(`${dataDir}/pglite`)
  const db = drizzle(client, { schema }) as unknown as Db
  return {
    db,
    kind: 'pglite',
    migrate: () => migrate(db as any, { migrationsFolder }),
    close: once(() => client.close())
  }
}

/** Closing twice (a test, then onClose) must not throw. */
function once (close: () => Promise<void>): () => Promise<void> {
  let closing: Promise<void> | null = null
  return () => (closing ??= close())
}

export async function pingDatabase (db: Db): Promise<void> {
  await db.execute(sql`SELECT 1`)
}

const CONNECTION_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH'])

/** The driver's error under drizzle's DrizzleQueryError wrapper (it keeps the original as `cause`). */
export function driverError (err: unknown): { code?: unknown, message?: unknown } {
  let current = err as { code?: unknown, message?: unknown, cause?: unknown } | undefined
  for (let depth = 0; depth < 3 && current?.cause !== undefined && current.code === undefined; depth++) {
    current = current.cause as typeof current
  }
  return current ?? {}
}

/** True when the database could not be reached (as opposed to a query it rejected). */
export function isDatabaseUnreachable (err: unknown): boolean {
  const { code, message } = driverError(err)
  if (typeof code === 'string' && (code.startsWith('08') || ['57P01', '57P02', '57P03'].includes(code) || CONNECTION_ERRNOS.has(code))) return true
  return typeof message === 'string' && /Connection terminated|timeout exceeded when trying to connect|Cannot use a pool after calling end|connection error/i.test(message)
}

/** With synchronous_commit off, a commit the consumer acknowledged can vanish in a Postgres crash. */
export async function assertDurableCommits (db: Db): Promise<void> {
  const result: any = await db.execute(sql`SHOW synchronous_commit`)
  const value = String(result.rows?.[0]?.synchronous_commit ?? 'on')
  if (value === 'off') {
    throw new Error('Postgres synchronous_commit is off: the consumer would acknowledge issues a crash can still lose. Set synchronous_commit = on (or local/remote_write/remote_apply).')
  }
}
