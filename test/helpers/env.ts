// Per-file isolation: a throwaway Postgres database and a unique Redis key prefix, made and removed by
// the helpers the load test and the bench use too (scripts/lib/infra.ts), bound to the test's teardown.
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../src/app.js'
import { loadConfig, type Config } from '../../src/config.js'
import { createRedis } from '../../src/redis/client.js'
import { IssueEventConsumer, type ConsumerOptions } from '../../src/persistence/consumer.js'
import * as infra from '../../scripts/lib/infra.js'

export const ADMIN_TOKEN = 'test-admin-token-0123456789'
export const REDIS_URL = process.env.TEST_REDIS_URL ?? infra.REDIS_URL
export const PG_ADMIN_URL = process.env.TEST_PG_ADMIN_URL ?? infra.PG_ADMIN_URL

/** What a test (or the fuzz CLI's stand-in) offers for cleanup: every helper takes this. */
export interface Teardown { teardown (fn: () => unknown): void }

/** Creates an empty database, dropped again at teardown. Returns its URL. */
export async function createTestDatabase (t: Teardown, adminUrl = PG_ADMIN_URL): Promise<string> {
  const database = await infra.createScratchDatabase('test', adminUrl)
  t.teardown(database.drop)
  return database.url
}

/** Deletes every key under the prefix at teardown. */
export function uniquePrefix (t: Teardown, redisUrl = REDIS_URL): string {
  const prefix = infra.scratchPrefix('test')
  t.teardown(() => infra.deletePrefix(redisUrl, prefix).catch(() => {}))
  return prefix
}

/** An app built for a test, with the environment it was built from. */
export type TestApp = FastifyInstance & { env: TestEnv }

export interface TestEnv {
  config: Config
  databaseUrl: string
  prefix: string
}

/** Config for a test file: own database, own prefix, quiet logs; overrides are env-style strings. */
export async function testEnv (t: Teardown, overrides: Record<string, string> = {}): Promise<TestEnv> {
  const databaseUrl = overrides.DATABASE_URL ?? await createTestDatabase(t)
  const prefix = overrides.REDIS_PREFIX ?? uniquePrefix(t, overrides.REDIS_URL ?? REDIS_URL)
  const config = loadConfig({
    DATABASE_URL: databaseUrl,
    // Sentinels or a cluster instead of a URL when the test names them (two at once are refused).
    ...(overrides.REDIS_SENTINELS || overrides.REDIS_CLUSTER_NODES ? {} : { REDIS_URL }),
    REDIS_PREFIX: prefix,
    ADMIN_TOKEN,
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    CONSUMER_BLOCK_MS: '200',
    ...overrides
  })
  return { config, databaseUrl, prefix }
}

/** A ready app for a test, closed at teardown. */
export async function testApp (t: Teardown, overrides: Record<string, string> = {}): Promise<TestApp> {
  const env = await testEnv(t, overrides)
  const app = await buildApp(env.config)
  await app.ready()
  t.teardown(() => app.close())
  return Object.assign(app, { env })
}

export const admin = { authorization: `Bearer ${ADMIN_TOKEN}` }

export async function createCoupon (app: FastifyInstance, body: Record<string, unknown>) {
  const response = await app.inject({ method: 'POST', url: '/coupons', headers: admin, payload: { name: 'test coupon', ...body } })
  if (response.statusCode !== 201) throw new Error(`coupon not created: ${response.statusCode} ${response.body}`)
  return response.json() as { id: number, totalQuantity: number }
}

/** Runs tasks with at most `width` in flight, results in input order. */
export async function inParallel<T> (count: number, width: number, task: (i: number) => Promise<T>): Promise<T[]> {
  const results = new Array<T>(count)
  let next = 0
  await Promise.all(Array.from({ length: Math.min(width, count) }, async () => {
    while (next < count) {
      const i = next++
      results[i] = await task(i)
    }
  }))
  return results
}

/** Polls until check() returns a truthy value or the deadline passes (then throws). */
export async function waitFor<T> (check: () => Promise<T | null | undefined | false>, { timeoutMs = 10_000, pollIntervalMs = 20, what = 'condition' as string | (() => string) } = {}): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'function' ? what() : what}`)
    await new Promise((resolve) => setTimeout(resolve, pollIntervalMs))
  }
}

/**
 * Waits until this instance no longer answers SOLD_OUT for the coupon from memory. Stock returned
 * through ANOTHER instance (a cancel, a PATCH) ends this one's marker by a pub/sub message that travels
 * beside that instance's answer and may land a moment after it (src/issuing/sold-out-markers.ts): a
 * test that asks this instance next waits for it instead of racing it.
 */
export async function soldOutMarkerDropped (app: TestApp, couponId: number): Promise<void> {
  await waitFor(async () => !app.couponStore.soldOutMarkers.soldOut(couponId), { what: `the stock-returned message to drop coupon ${couponId}'s sold-out marker` })
}

/**
 * A consumer of the app's group for a test (drain, reclaim, or a second loop). With `blocking` it gets
 * its own connection for the blocking read and can run start(); stopped at teardown.
 */
export function testConsumer (t: Teardown, app: TestApp, name: string, overrides: Partial<Omit<ConsumerOptions, 'blockingRedis' | 'name'>> = {}): IssueEventConsumer {
  const blockingRedis = createRedis({ target: app.env.config.redis, blocking: true, name })
  blockingRedis.on('error', () => {})
  const consumer = new IssueEventConsumer({
    redis: app.redis, blockingRedis, db: app.db, keys: app.keys, log: app.log, announceEvents: app.env.config.eventsEnabled, ...app.env.config.consumer, ...overrides, name
  })
  t.teardown(async () => {
    await consumer.stop()
    blockingRedis.disconnect()
  })
  return consumer
}
