// Throwaway Postgres databases and Redis key prefixes for the load test and the bench, so runs never
// touch anyone else's data on a shared machine; both are removed at the end of a run.
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { Redis } from 'ioredis'
import { loadConfig, type Config } from '../../src/config.js'

export const PG_ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres'
export const REDIS_URL = 'redis://127.0.0.1:6379'
export const ADMIN_TOKEN = 'bench-admin-token-0123456789'

export interface Scratch {
  databaseUrl: string
  prefix: string
  /** Drops the database and deletes every key under the prefix. */
  cleanup (): Promise<void>
}

export async function createScratch (tag: string, adminUrl = PG_ADMIN_URL, redisUrl = REDIS_URL): Promise<Scratch> {
  const id = randomBytes(4).toString('hex')
  const name = `couponrush_${tag}_${id}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  await admin.end()
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  const prefix = `${tag}:${id}:`
  return {
    databaseUrl: url.toString(),
    prefix,
    async cleanup () {
      await deletePrefix(redisUrl, prefix).catch(() => {})
      const client = new pg.Client({ connectionString: adminUrl })
      await client.connect()
      await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).finally(() => client.end())
    }
  }
}

export async function deletePrefix (redisUrl: string, prefix: string): Promise<void> {
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 })
  await redis.connect()
  try {
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
