// Small HTTP helpers for a spawned service, and the preamble the spawned-service fault tests share.
import { Redis } from 'ioredis'
import { admin as ADMIN, createTestDatabase, uniquePrefix, REDIS_URL, type Teardown } from '../../helpers/env.js'
import { createKeys } from '../../../src/redis/keys.js'
import { checkInvariants, type Call, type InvariantInput } from './invariants.js'
import { spawnService } from './procs.js'

export { ADMIN }

export async function createCouponOver (base: string, body: Record<string, unknown>): Promise<{ id: number, totalQuantity: number }> {
  const response = await fetch(`${base}/coupons`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...ADMIN },
    body: JSON.stringify({ name: 'fault coupon', ...body }),
    signal: AbortSignal.timeout(10_000)
  })
  if (response.status !== 201) throw new Error(`coupon not created: ${response.status} ${await response.text()}`)
  return response.json() as Promise<{ id: number, totalQuantity: number }>
}

/** A plain client on the given Redis, disconnected at teardown. */
function clientFor (t: Teardown, url: string): Redis {
  const client = new Redis(url)
  t.teardown(() => client.disconnect())
  return client
}

export interface SpawnedScenarioOptions {
  /** service environment on top of the scenario's Redis, prefix and database (e.g. RECLAIM_MIN_IDLE_MS) */
  env?: Record<string, string>
  /** units of the one coupon */
  total: number
  /** a throwaway Redis (procs.ts) instead of the shared one; its client serves the checks */
  redis?: { url: string, client: Redis }
  /** the Postgres server for the throwaway database (a throwaway cluster's adminUrl) instead of the shared one */
  adminUrl?: string
}

/**
 * The preamble of the fault tests that run the built service as a child process (the spawned twin of
 * inprocess.ts's inProcessScenario): a throwaway database and key prefix, the service on them, one coupon
 * of `total` units, its keys, a Redis client, and the invariant check (I1..I5) bound to them. `env` is
 * the service's whole environment, for a restart or a second instance (spawnService(t, env)).
 */
export async function spawnedScenario (t: Teardown, { env: extra = {}, total, redis: throwaway, adminUrl }: SpawnedScenarioOptions) {
  const redisUrl = throwaway?.url ?? REDIS_URL
  const databaseUrl = await createTestDatabase(t, adminUrl)
  const prefix = uniquePrefix(t, redisUrl)
  const env = { REDIS_URL: redisUrl, REDIS_PREFIX: prefix, DATABASE_URL: databaseUrl, ...extra }
  const redis = throwaway?.client ?? clientFor(t, redisUrl)
  const service = await spawnService(t, env)
  const coupon = await createCouponOver(service.base, { totalQuantity: total })
  const k = createKeys(prefix).coupon(coupon.id)
  const check = (assert: Parameters<typeof checkInvariants>[0], calls: Call[], more: Partial<InvariantInput> = {}) =>
    checkInvariants(assert, { redis, prefix, databaseUrl, couponId: coupon.id, total, calls, ...more })
  return { env, databaseUrl, prefix, redis, service, coupon, total, k, stream: k.events, check }
}
