// Throwaway Postgres databases and Redis key prefixes, so runs never touch anyone else's data on a
// shared machine. The one copy: the load test and the bench use createScratch (both at once, removed at
// the end of a run), the tests use the same pieces through test/helpers/env.ts (removed at teardown).
// Counted in the main suite's coverage (tap reports every file a test loads outside test/), where every
// test file exercises it.
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { Redis } from 'ioredis'
import { loadConfig, type Config } from '../../src/config.js'

export const PG_ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres'
export const REDIS_URL = 'redis://127.0.0.1:6379'
export const ADMIN_TOKEN = 'bench-admin-token-0123456789'

const randomId = () => randomBytes(6).toString('hex')

export interface ScratchDatabase {
  url: string
  /** Drops the database, closing whatever connections are still open to it. */
  drop (): Promise<void>
}

/** Creates an empty database `couponrush_<tag>_<random>` on the server behind adminUrl. */
export async function createScratchDatabase (tag: string, adminUrl = PG_ADMIN_URL): Promise<ScratchDatabase> {
  const name = `couponrush_${tag}_${randomId()}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`).finally(() => admin.end())
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return {
    url: url.toString(),
    async drop () {
      const client = new pg.Client({ connectionString: adminUrl })
      await client.connect()
      await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).finally(() => client.end())
    }
  }
}

/** A key prefix `<tag>:<random>:` no one else uses. */
export const scratchPrefix = (tag: string) => `${tag}:${randomId()}:`

/** Deletes every key under the prefix. */
export async function deletePrefix (redisUrl: string, prefix: string): Promise<void> {
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 })
  try {
    await redis.connect()
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
      cursor = next
      if (keys.length > 0) await redis.del(...keys)
    } while (cursor !== '0')
  } finally {
    redis.disconnect()
  }
}

export interface Scratch {
  databaseUrl: string
  prefix: string
  /** Drops the database and deletes every key under the prefix. */
  cleanup (): Promise<void>
}

export async function createScratch (tag: string, adminUrl = PG_ADMIN_URL, redisUrl = REDIS_URL): Promise<Scratch> {
  const database = await createScratchDatabase(tag, adminUrl)
  const prefix = scratchPrefix(tag)
  return {
    databaseUrl: database.url,
    prefix,
    async cleanup () {
      await deletePrefix(redisUrl, prefix).catch(() => {})
      await database.drop()
    }
  }
}

/** The service's config for a scratch area; everything else stays at the service's defaults. */
export function scratchConfig (scratch: Scratch, overrides: Record<string, string> = {}): Config {
  return loadConfig({
    DATABASE_URL: scratch.databaseUrl,
    REDIS_URL,
    REDIS_PREFIX: scratch.prefix,
    ADMIN_TOKEN,
    ...overrides
  })
}
