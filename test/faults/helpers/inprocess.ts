// For fault tests that run the app in this process (they add coverage): a second consumer of the
// app's group, and Postgres connections holding (or queued for) a lock the consumer's insert needs.
import pg from 'pg'

import { createCoupon, testApp, type Teardown } from '../../helpers/env.js'
import { checkInvariants, type Call, type InvariantInput } from './invariants.js'

/** The suite's one consumer factory, under the name the fault tests know it by. */
export { testConsumer as extraConsumer } from '../../helpers/env.js'

/** Holds `LOCK TABLE <table> IN <mode> MODE` in an open transaction until release(). */
export async function lockTable (t: Teardown, databaseUrl: string, table: string, mode = 'SHARE') {
  const lock = await requestLock(t, databaseUrl, table, mode)
  await lock.granted
  return { release: lock.release }
}

/**
 * Asks for `LOCK TABLE <table> IN <mode> MODE` in an open transaction without waiting for it: `granted`
 * resolves once Postgres grants it. Postgres queues a request behind any waiting request it conflicts
 * with, and grants the queue in order, so a request queued between two inserts holds the second one
 * back until release() (see lockWaits to know who is queued).
 */
export async function requestLock (t: Teardown, databaseUrl: string, table: string, mode = 'SHARE') {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  await client.query('BEGIN')
  let released = false
  const release = async () => {
    if (released) return
    released = true
    await client.query('ROLLBACK').catch(() => {})
    await client.end().catch(() => {})
  }
  t.teardown(release)
  const granted: Promise<void> = client.query(`LOCK TABLE ${table} IN ${mode} MODE`).then(() => {})
  granted.catch(() => {})
  return { granted, release }
}

/** The modes (e.g. RowExclusiveLock, ShareLock) of the requests waiting for a lock on a table, sorted. */
export async function lockWaits (databaseUrl: string, table: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    const { rows } = await client.query(`
      SELECT mode FROM pg_locks
      WHERE locktype = 'relation' AND NOT granted AND relation = $1::regclass
        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, [table])
    return rows.map((r: { mode: string }) => r.mode).sort()
  } finally { await client.end() }
}

/**
 * The preamble every in-process fault scenario shares: the app (with `env` overrides) listening on a
 * port, one coupon of `total` units, its keys, and the invariant check (I1..I5) bound to them.
 */
export async function inProcessScenario (t: Teardown, env: Record<string, string>, total: number) {
  const app = await testApp(t, env)
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  const coupon = await createCoupon(app, { totalQuantity: total })
  const k = app.keys.coupon(coupon.id)
  const check = (assert: Parameters<typeof checkInvariants>[0], calls: Call[], more: Partial<InvariantInput> = {}) =>
    checkInvariants(assert, { redis: app.redis, prefix: app.env.prefix, databaseUrl: app.env.databaseUrl, couponId: coupon.id, total, calls, ...more })
  return { app, base, coupon, total, k, stream: k.events, check }
}
