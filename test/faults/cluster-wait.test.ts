// Issue 10 on Redis Cluster: the server-change guard and the replication fence per primary. A cluster of
// 3 primaries with one replica each; a primary's replica is made to lag (SIGSTOP, then the primary drops
// its replication link) before the primary is killed, so the promoted replica lacks the last writes:
// - the guard: the promoted replica's inherited counters forget units already in Postgres; they are
//   dropped (that shard's coupons only) and rebuilt, so nothing is sold twice. Without the guard (a
//   store made without one, as before) the same scenario oversells.
// - REDIS_WAIT_REPLICAS=1: kill -9 of a primary mid-rush loses no answered 201 and oversells nothing;
//   every 503 is settled by a retry with its Idempotency-Key; the other shards keep issuing.
// - a frozen replica with WAIT on: its shard answers 503 REPLICATION_TIMEOUT fast, the others 201.
// - slot migration between healthy primaries drops nothing (the guard tells it from a failover).
import { once } from 'node:events'
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../src/app.js'
import { CouponStore } from '../../src/issuing/coupon-store.js'
import { ownSlots, redisDurabilityRisks, serverRunId } from '../../src/redis/client.js'
import { scratchPrefix } from '../../scripts/lib/infra.js'
import { admin, testEnv, waitFor } from '../helpers/env.js'
import { clusterCoupon, throwawayCluster, until, type ThrowawayRedis } from './helpers/procs.js'
import { issue, rowsOf, type Call } from './helpers/invariants.js'

const WAIT_TIMEOUT_MS = 300

// Full coverage off (an operator's choice, README): with Redis's default a shard without a primary stops
// every shard (CLUSTERDOWN) until its replica is promoted; the other shards must keep issuing here.
const cluster = await throwawayCluster(t, { args: ['--cluster-require-full-coverage', 'no'] })

/** An app on the cluster, in this process, with its own database and prefix. */
async function startApp (t: Test, env: Record<string, string> = {}) {
  const { config, databaseUrl } = await testEnv(t, {
    ...cluster.env,
    REDIS_PREFIX: scratchPrefix('cluster-wait'),
    RECLAIM_MIN_IDLE_MS: '2000',
    RECLAIM_CRON: '* * * * * *',
    CONSISTENCY_CRON: '',
    // The expiry job routes a script to every active coupon's primary every 10 s, which runs the guard's
    // check there: the test without a guard must see the promoted replica's counters untouched.
    EXPIRY_CRON: '',
    SOLD_OUT_MARKER_TTL_MS: '0',
    ...env
  })
  const app = await buildApp(config, { logger: { level: 'silent' } })
  t.teardown(() => app.close())
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, base, databaseUrl }
}

/** Creates coupons until one lands on a primary not in `avoid` (and on `on`, when given): its id and primary port. */
async function couponOnAShard (app: FastifyInstance, totalQuantity: number, { on, avoid = [] }: { on?: number, avoid?: number[] } = {}) {
  for (let tries = 0; tries < 200; tries++) {
    const coupon = await clusterCoupon(cluster, app, { totalQuantity })
    if ((on === undefined || coupon.primary === on) && !avoid.includes(coupon.primary)) return coupon
  }
  throw new Error('no coupon landed on the wanted shard')
}

const serverAt = (port: number) => cluster.servers.find((s) => s.port === port)!
async function replicaOf (primaryPort: number): Promise<ThrowawayRedis> {
  const topology = await cluster.topology()
  const port = [...topology].find(([, n]) => n.role === 'slave' && n.primaryPort === primaryPort)?.[0]
  if (port === undefined) throw new Error(`no replica of ${primaryPort}`)
  return serverAt(port)
}

/**
 * The forced replication gap: the replica is frozen, then the primary drops its replication link (the
 * frozen replica cannot reconnect), so what the primary takes from now on never reaches the replica.
 * Returns what ends it: kill -9 of the primary and the replica thawed, to be promoted in its place.
 */
async function cutReplication (t: Test, primary: ThrowawayRedis, replica: ThrowawayRedis) {
  t.teardown(() => replica.signal('SIGCONT'))
  replica.signal('SIGSTOP')
  await primary.client.call('CLIENT', 'KILL', 'TYPE', 'replica')
  await until(async () => /connected_slaves:0/.test(await primary.client.info('replication')), 5000, 'the primary to drop its replica')
  return async function failOver (slotOwner: string) {
    await primary.kill()
    replica.signal('SIGCONT')
    await until(async () => await cluster.primaryOf(slotOwner).catch(() => null) === replica.port, 30_000, `the replica ${replica.port} to be promoted`)
  }
}

/** The old primary back, as a replica of the promoted one, and the cluster whole again for the next test. */
async function rejoin (server: ThrowawayRedis) {
  await server.start()
  await cluster.healthy(60_000)
}

/**
 * The guard's scenario on one coupon: 20 units out and replicated, the replica cut off, 20 more out and
 * persisted (on the primary only), the primary killed and its replica promoted; then the 20 forgotten
 * users try again and newcomers buy until sold out. `claim` is how a unit is asked for.
 */
async function failoverToALaggingReplica (t: Test, app: FastifyInstance, databaseUrl: string, coupon: { id: number, primary: number },
  claim: (userId: string) => Promise<{ status: number, code?: string, issuedAt?: string }>) {
  const primary = serverAt(coupon.primary)
  const replica = await replicaOf(coupon.primary)
  const answers: Array<{ userId: string, status: number, code?: string, issuedAt?: string }> = []
  const ask = async (userId: string) => {
    const answer = { userId, ...await claim(userId) }
    answers.push(answer)
    return answer
  }
  for (let i = 0; i < 20; i++) await ask(`early-${i}`)
  t.equal(await primary.client.call('WAIT', 1, 5000), 1, 'the replica has the first units')
  const failOver = await cutReplication(t, primary, replica)
  for (let i = 0; i < 20; i++) await ask(`forgotten-${i}`)
  t.same(answers.map((a) => a.status), Array(40).fill(201), '40 units out before the failover')
  await until(async () => (await rowsOf(databaseUrl, coupon.id)).length === 40, 20_000, 'the 40 issues persisted')
  await failOver(String(coupon.id))
  const inherited = await replica.client.get(app.keys.coupon(coupon.id).stock)
  // (When this fails with null, say what the promoted node holds of the coupon: something dropped its counters.)
  if (inherited === null) t.comment(`promoted ${replica.port}: ${JSON.stringify(await replica.client.keys(`${app.keys.coupon(coupon.id).stock.replace(/stock$/, '')}*`))}; ${(await replica.client.info('replication')).replace(/\r?\n/g, ' ')}`)
  t.equal(Number(inherited), 40, 'the promoted replica\'s counter forgot the last 20 units (60 - 20)')

  // Newcomers until the coupon is sold out, then the forgotten users again (503s while the cluster settles: asked again).
  const settle = async (userId: string) => {
    for (;;) {
      const answer = await ask(userId)
      if (answer.status !== 503) return answer
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  for (let i = 0; i < 100; i++) {
    const answer = await settle(`late-${i}`)
    if (answer.code === 'SOLD_OUT') break
  }
  const again: Array<{ status: number, code?: string }> = []
  for (let i = 0; i < 20; i++) again.push(await settle(`forgotten-${i}`))
  const users = new Set(answers.filter((a) => a.status === 201).map((a) => a.userId))
  await until(async () => (await rowsOf(databaseUrl, coupon.id)).length >= users.size, 20_000, `the ${users.size} users' issues persisted`)
  const rows = await rowsOf(databaseUrl, coupon.id)
  return { again, rows, answers, replica, primary }
}

t.test('the guard: a failover to a replica that lacks persisted issues rebuilds that shard\'s coupons; nothing sold twice, the other shards untouched', async (t) => {
  const { app, databaseUrl } = await startApp(t)
  const coupon = await couponOnAShard(app, 60)
  const other = await couponOnAShard(app, 10, { avoid: [coupon.primary] })
  const call = async (couponId: number, userId: string) => {
    const response = await app.inject({ method: 'POST', url: `/coupons/${couponId}/issues`, payload: { userId } })
    return { status: response.statusCode, ...response.json() as { code?: string, issuedAt?: string } }
  }
  t.equal((await call(other.id, 'bystander')).status, 201, 'a coupon on another shard, with counters')
  const otherKeys = app.keys.coupon(other.id)
  await app.redis.hset(otherKeys.meta, 'probe', '1')

  const { again, rows, answers, replica, primary } = await failoverToALaggingReplica(t, app, databaseUrl, coupon, (userId) => call(coupon.id, userId))
  t.same(again.map((a) => a.code), Array(20).fill('ALREADY_ISSUED'), 'the users persisted after the gap are still known: their units are counted')
  t.equal(rows.length, 60, 'exactly the 60 units are out')
  t.equal(new Set(rows.map((r) => r.user_id)).size, rows.length, 'no user twice')
  const ok = answers.filter((a) => a.status === 201)
  t.equal(ok.length, 60, '60 answered 201, no more')
  const rowOf = new Map(rows.map((r) => [r.user_id, r.created_at.toISOString()]))
  t.same(ok.filter((a) => rowOf.get(a.userId) !== a.issuedAt).map((a) => a.userId), [], 'every 201 persisted with its issuedAt')
  const { ranges } = await ownSlots(replica.client)
  t.equal(await replica.client.get(app.keys.shardServerRunId(ranges[0]![0])), await serverRunId(replica.client), 'the promoted replica is recorded in its lowest slot')
  t.equal(await app.redis.hget(otherKeys.meta, 'probe'), '1', 'the coupon on another shard kept its counters')
  t.equal((await call(other.id, 'bystander')).code, 'ALREADY_ISSUED', 'and still knows its holder')
  await rejoin(primary)
})

t.test('without the guard (a store made without one, as before this guard existed) the same scenario oversells', async (t) => {
  const { app, databaseUrl } = await startApp(t)
  const coupon = await couponOnAShard(app, 60)
  const unguarded = new CouponStore({ redis: app.redis, db: app.db, keys: app.keys, backlogCap: 1_000_000, idempotencyTtlSeconds: 3600 })
  const claim = async (userId: string) => {
    try {
      const { issued, refusal } = await unguarded.issue(coupon.id, userId)
      return issued ? { status: 201, issuedAt: issued.issuedAt.toISOString() } : { status: refusal.statusCode, code: refusal.code }
    } catch (err) {
      return { status: 503, code: (err as { code?: string }).code }
    }
  }
  const { again, rows, primary } = await failoverToALaggingReplica(t, app, databaseUrl, coupon, claim)
  t.equal(rows.length, 80, 'oversold: the 20 units persisted after the gap were sold again (80 rows for 60 units)')
  t.same(again.map((a) => a.code), Array(20).fill('SOLD_OUT'), 'the inherited counters do not know the users persisted after the gap')
  await rejoin(primary)
})

/** Retries a call of unknown outcome (503) with the same Idempotency-Key until it says what happened. */
async function settle (base: string, couponId: number, call: Call, deadline: number): Promise<Call> {
  let last = call
  while (last.status === 503 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    last = await issue(base, couponId, call.userId, { idempotencyKey: `key-${call.userId}`, timeoutMs: 10_000 })
  }
  return last
}

/**
 * A rush on 3 coupons, one per shard; mid-rush the victim's replica is cut off (the forced gap), the
 * primary takes more, is killed, and its replica is promoted; the old primary comes back as its replica.
 * With WAIT on, what the gap took is never answered 201; with it off, it is, and the consumer is paused
 * across the gap (as in the issue's measurement) so that those 201s exist nowhere but on the dead primary.
 */
async function killMidRush (t: Test, waitReplicas: number) {
  const { app, base, databaseUrl } = await startApp(t, { REDIS_WAIT_REPLICAS: String(waitReplicas), REDIS_WAIT_TIMEOUT_MS: String(WAIT_TIMEOUT_MS) })
  const QUANTITY = 120
  const victim = await couponOnAShard(app, QUANTITY)
  const first = await couponOnAShard(app, 100_000, { avoid: [victim.primary] })
  const second = await couponOnAShard(app, 100_000, { avoid: [victim.primary, first.primary] })
  const coupons = [victim, first, second]
  const primary = serverAt(victim.primary)
  const replica = await replicaOf(victim.primary)

  interface Timed extends Call { at: number }
  const calls = new Map<number, Timed[]>(coupons.map(({ id }) => [id, []]))
  let victimSoldOut = false
  let n = 0
  const deadline = Date.now() + 120_000
  const rush = Promise.all(Array.from({ length: 6 }, async () => {
    while (!victimSoldOut && Date.now() < deadline) {
      const { id } = coupons[n % coupons.length]!
      const userId = `rush-${n++}`
      const call = await issue(base, id, userId, { idempotencyKey: `key-${userId}`, timeoutMs: 10_000 })
      calls.get(id)!.push({ ...call, at: Date.now() })
      if (id === victim.id && call.code === 'SOLD_OUT') victimSoldOut = true
    }
  }))
  const victimCalls = calls.get(victim.id)!
  await until(() => victimCalls.filter((c) => c.outcome === 'ok').length >= 20, 30_000, '20 units of the victim coupon out')
  if (waitReplicas === 0) await app.consumer!.stop()
  // Taken before the replica is frozen, with a margin: a write answered a moment before the freeze may
  // not have reached the replica yet (replication is asynchronous), and writes answered while the
  // primary drops the link are not replicated either: both belong to the gap.
  const cutAt = Date.now() - 100
  const failOver = await cutReplication(t, primary, replica)
  const cutDoneAt = Date.now()
  // The gap: the primary takes these units, the replica never gets them (with WAIT on they are never answered 201).
  const inGap = (c: Timed) => c.at > cutAt && (waitReplicas > 0 ? c.code === 'REPLICATION_TIMEOUT' : c.outcome === 'ok')
  await until(() => victimCalls.filter((c) => inGap(c) && c.at > cutDoneAt).length >= 5, 30_000, '5 issues on the primary the replica will never see')
  await failOver(String(victim.id))
  const promotedAt = Date.now()
  if (waitReplicas === 0) app.consumer!.start()
  // Without a replica, WAIT cannot be met on the promoted one: the old primary comes back as its replica.
  await primary.start()
  await rush
  t.ok(victimSoldOut, 'the rush sold the victim coupon out without an app restart')

  const outage = coupons.slice(1).flatMap(({ id }) => calls.get(id)!.filter((c) => c.at > cutAt && c.at < promotedAt))
  const outageAnswers = [...new Set(outage.map((c) => c.outcome === 'ok' ? '201' : `${c.status} ${c.code}`))]
  t.ok(outage.length > 0, `the other shards were asked during the gap and the failover (${outage.length} calls)`)
  t.same(outageAnswers, ['201'], `the other shards kept issuing throughout (answers: ${outageAnswers.join(', ')})`)
  const tally = [...calls.values()].flat().reduce<Record<string, number>>((acc, c) => {
    const key = c.outcome === 'ok' ? '201' : `${c.status ?? c.outcome} ${c.code ?? ''}`.trim()
    acc[key] = (acc[key] ?? 0) + 1
    return acc
  }, {})
  t.comment(`answers during the rush: ${JSON.stringify(tally)}`)
  const documented = new Set(['201', '409 SOLD_OUT', '503 REPLICATION_TIMEOUT', '503 REDIS_UNAVAILABLE', '503 REDIS_RECONFIGURING', '503 RESTORING'])
  t.same(Object.keys(tally).filter((k) => !documented.has(k)), [], 'only documented answers, no call hung')

  // Every 503 settled by a retry with its Idempotency-Key (a replay, or a fresh answer when the failover lost it).
  const settleBy = Date.now() + 60_000
  const final = new Map<number, Call[]>()
  for (const { id } of coupons) final.set(id, await Promise.all(calls.get(id)!.map((c) => settle(base, id, c, settleBy))))
  t.same([...final.values()].flat().filter((c) => c.status === 503 || (c.outcome !== 'ok' && c.outcome !== 'rejected')).map((c) => c.userId), [], 'every 503 settled by its retry')
  const gap = victimCalls.filter((c) => c.at > cutAt && c.at < promotedAt && c.code === 'REPLICATION_TIMEOUT').map((c) => c.userId)
  const gapFinal = final.get(victim.id)!.filter((c) => gap.includes(c.userId))
  if (waitReplicas > 0) t.comment(`the gap's ${gap.length} REPLICATION_TIMEOUTs settled as: ${JSON.stringify(gapFinal.reduce<Record<string, number>>((acc, c) => { const k = c.outcome === 'ok' ? '201' : `${c.code}`; acc[k] = (acc[k] ?? 0) + 1; return acc }, {}))}`)

  for (const { id } of coupons) {
    const granted = final.get(id)!.filter((c) => c.outcome === 'ok')
    // (without WAIT, the 201s of the gap may be lost: not waited for)
    const expected = granted.filter((c) => waitReplicas > 0 || !inGap(c as Timed)).length
    await until(async () => (await rowsOf(databaseUrl, id)).length >= expected, 30_000, () => `coupon ${id}: ${expected} rows`)
    const rows = await rowsOf(databaseUrl, id)
    const rowOf = new Map(rows.map((r) => [r.user_id, r.created_at.toISOString()]))
    const limit = id === victim.id ? QUANTITY : 100_000
    t.ok(rows.length <= limit, `coupon ${id}: ${rows.length} rows, never more than ${limit}`)
    t.equal(rowOf.size, rows.length, `coupon ${id}: no user twice`)
    const answered = calls.get(id)!.filter((c) => c.outcome === 'ok')
    const lost = answered.filter((c) => rowOf.get(c.userId) !== c.issuedAt)
    if (waitReplicas > 0) {
      t.same(lost.map((c) => c.userId), [], `coupon ${id}: every 201 answered during the rush is persisted with its issuedAt (none lost)`)
    } else if (id === victim.id) {
      // What WAIT buys: without it, the 201s the dead primary had neither replicated nor persisted are gone.
      t.ok(lost.length >= 5, `WAIT off: ${lost.length} answered 201s lost in the failover (README, Guarantees)`)
      t.same(lost.filter((c) => !inGap(c)).map((c) => c.userId), [], 'all of them answered during the gap')
    }
    t.same(granted.filter((c) => !answered.includes(c as Timed) && rowOf.get(c.userId) !== c.issuedAt).map((c) => c.userId), [], `coupon ${id}: every 201 of a settling retry is persisted with its issuedAt`)
    const grantedUsers = new Set(granted.map((c) => c.userId))
    t.same(rows.filter((r) => !grantedUsers.has(r.user_id)).map((r) => r.user_id), [], `coupon ${id}: no row without a 201`)
    if (id === victim.id) t.equal(rows.length, QUANTITY, 'the victim coupon: exactly its quantity persisted')
  }
  const consistency = await (await fetch(`${base}/admin/coupons/${victim.id}/consistency`, { headers: admin })).json() as { status: string, problems: string[] }
  t.equal(consistency.status, 'consistent', `the failed-over coupon's books balance (${consistency.problems.join('; ')})`)
  await cluster.healthy(60_000)
}

t.test('REDIS_WAIT_REPLICAS=1: kill -9 of a primary mid-rush after a forced replication gap loses no answered 201 and oversells nothing; the other shards keep issuing', (t) => killMidRush(t, 1))
t.test('the same with WAIT off: the gap\'s unpersisted 201s are lost (nothing oversold: the guard rebuilds the counters)', (t) => killMidRush(t, 0))

t.test('REDIS_WAIT_REPLICAS=1, a frozen replica: its shard answers 503 REPLICATION_TIMEOUT within the timeout, the others 201; nothing it lacks is committed; a keyed retry settles it', async (t) => {
  const { app, base, databaseUrl } = await startApp(t, { REDIS_WAIT_REPLICAS: '1', REDIS_WAIT_TIMEOUT_MS: String(WAIT_TIMEOUT_MS) })
  const frozen = await couponOnAShard(app, 100)
  const other = await couponOnAShard(app, 100, { avoid: [frozen.primary] })
  for (const { id } of [frozen, other]) t.equal((await issue(base, id, 'warm-up')).status, 201, `coupon ${id}: issuing works with the replicas confirming`)
  t.same(await redisDurabilityRisks(app.redis, { waitReplicas: 1 }), [], 'the startup check: each primary has the one replica WAIT needs')
  const short = await redisDurabilityRisks(app.redis, { waitReplicas: 2 })
  t.equal(short.filter((risk) => /^127\.0\.0\.1:\d+: REDIS_WAIT_REPLICAS=2 but the master has 1 connected replica/.test(risk)).length, 3, 'and names each primary that has fewer than it asks for')
  const replica = await replicaOf(frozen.primary)
  t.teardown(() => replica.signal('SIGCONT'))
  replica.signal('SIGSTOP')

  const keyed = (couponId: number, userId: string) => issue(base, couponId, userId, { idempotencyKey: `key-${userId}` })
  const [stuck, free] = await Promise.all([
    Promise.all(Array.from({ length: 5 }, (_, i) => keyed(frozen.id, `frozen-${i}`))),
    Promise.all(Array.from({ length: 5 }, (_, i) => keyed(other.id, `free-${i}`)))
  ])
  t.same(stuck.map((c) => c.code), Array(5).fill('REPLICATION_TIMEOUT'), 'the frozen replica\'s shard: 503 REPLICATION_TIMEOUT (outcome unknown)')
  const slowest = Math.max(...stuck.map((c) => c.ms))
  // Issue 10: "p99 <= 2 x the WAIT timeout". A caller queued behind a fence that times out is refused
  // with it, so the slowest waits about one timeout.
  t.ok(slowest <= 2 * WAIT_TIMEOUT_MS, `answered within two WAIT timeouts (slowest ${slowest} ms, timeout ${WAIT_TIMEOUT_MS} ms)`)
  t.same(free.map((c) => c.status), Array(5).fill(201), 'the other shard is unaffected')
  t.equal(await serverAt(frozen.primary).client.hget(app.keys.coupon(frozen.id).holders, 'frozen-0'), '1', 'the primary did take the units (hence "unknown")')

  // The consumer tries to commit the frozen shard's entries and is refused: two refusals, then look.
  for (let refusals = 0; refusals < 2; refusals++) await once(app.consumer!, 'backoff')
  const whileFrozen = await rowsOf(databaseUrl, frozen.id)
  t.same(whileFrozen.filter((r) => r.user_id.startsWith('frozen-')).map((r) => r.user_id), [], 'nothing is committed to Postgres the replica does not have')
  await until(async () => (await rowsOf(databaseUrl, other.id)).filter((r) => r.user_id.startsWith('free-')).length === 5, 10_000,
    'the other shard\'s issues to be persisted meanwhile (the consumer commits what its primary confirmed)')

  replica.signal('SIGCONT')
  const retried = await Promise.all(stuck.map((c) => waitFor(async () => {
    const again = await keyed(frozen.id, c.userId)
    return again.status === 503 ? null : again
  }, { timeoutMs: 20_000, pollIntervalMs: 100, what: `${c.userId}'s retry to be confirmed` })))
  t.same(retried.map((c) => c.status), Array(5).fill(201), 'the retries with the same key settle it: the units were issued')
  await until(async () => (await rowsOf(databaseUrl, frozen.id)).filter((r) => r.user_id.startsWith('frozen-')).length === 5, 20_000, 'the frozen users persisted once the replica is back')
  const rows = new Map((await rowsOf(databaseUrl, frozen.id)).map((r) => [r.user_id, r.created_at.toISOString()]))
  t.same(retried.filter((c) => rows.get(c.userId) !== c.issuedAt).map((c) => c.userId), [], 'each with the issuedAt its retry announced')
})

/** Moves one slot, keys and all, from one primary to another, as `redis-cli --cluster reshard` does. */
async function migrateSlot (slot: number, from: ThrowawayRedis, to: ThrowawayRedis) {
  const [fromId, toId] = await Promise.all([from.client.call('CLUSTER', 'MYID'), to.client.call('CLUSTER', 'MYID')]) as [string, string]
  await to.client.call('CLUSTER', 'SETSLOT', slot, 'IMPORTING', fromId)
  await from.client.call('CLUSTER', 'SETSLOT', slot, 'MIGRATING', toId)
  for (;;) {
    const keys = await from.client.call('CLUSTER', 'GETKEYSINSLOT', slot, 100) as string[]
    if (keys.length === 0) break
    await from.client.call('MIGRATE', '127.0.0.1', to.port, '', 0, 5000, 'KEYS', ...keys)
  }
  for (const server of [to, from]) await server.client.call('CLUSTER', 'SETSLOT', slot, 'NODE', toId)
  await until(async () => {
    const topology = await cluster.topology()
    return topology.get(to.port)?.slots.some(([a, b]) => slot >= a && slot <= b) === true
  }, 10_000, `slot ${slot} to be served by ${to.port}`)
}

t.test('slot migration between healthy primaries: the moved coupon keeps its counters, and so does every coupon of the primary that took the other\'s record with its lowest slot', async (t) => {
  const { app, base } = await startApp(t)
  const topology = await cluster.topology()
  const lowestOf = (port: number) => Math.min(...topology.get(port)!.slots.map(([a]) => a))
  const primaries = [...topology].filter(([, n]) => n.role === 'master').map(([port]) => port).sort((a, b) => lowestOf(a) - lowestOf(b))
  // From the primary with the lowest slot to another: that slot (and the record in it) becomes the other's lowest.
  const [source, target] = [primaries[0]!, primaries[1]!]
  const moving = await couponOnAShard(app, 10, { on: source })
  const staying = await couponOnAShard(app, 10, { on: target })
  for (const { id } of [moving, staying]) {
    t.equal((await issue(base, id, 'holder')).status, 201, `coupon ${id}: a unit out, its primary checked`)
    await app.redis.hset(app.keys.coupon(id).meta, 'probe', '1')
  }
  const from = serverAt(source)
  const to = serverAt(target)
  const lowest = lowestOf(source)
  t.equal(await from.client.get(app.keys.shardServerRunId(lowest)), await serverRunId(from.client), 'the source primary\'s record is in its lowest slot')

  const movingSlot = Number(await from.client.call('CLUSTER', 'KEYSLOT', app.keys.coupon(moving.id).stock))
  await migrateSlot(movingSlot, from, to)
  if (lowest !== movingSlot) await migrateSlot(lowest, from, to)

  // The app meets the new map (a refused MOVED first, nothing ran: asked again), checks the target for the
  // slots it gained, finds the source's record in its new lowest slot, and keeps everything.
  let answer: Call | undefined
  await until(async () => {
    answer = await issue(base, moving.id, 'holder')
    return answer.status !== 503
  }, 10_000, () => `the moved coupon to answer (last ${answer?.status} ${answer?.code})`)
  t.equal(answer!.code, 'ALREADY_ISSUED', 'the moved coupon still knows its holder')
  t.equal((await issue(base, moving.id, 'newcomer')).status, 201, 'and goes on issuing')
  for (const { id } of [moving, staying]) t.equal(await app.redis.hget(app.keys.coupon(id).meta, 'probe'), '1', `coupon ${id}: counters kept, not dropped`)
  t.equal(await to.client.get(app.keys.shardServerRunId(lowest)), await serverRunId(to.client), 'the target recorded itself in its new lowest slot')
  t.equal((await issue(base, staying.id, 'holder')).code, 'ALREADY_ISSUED', 'the target\'s own coupon still knows its holder')
  t.equal((await issue(base, staying.id, 'newcomer')).status, 201, 'and goes on issuing')
})

// Once every test and teardown is done the process should exit on its own. In about one run in five
// here it did not (all assertions passed, then tap's 300 s file timeout): once seen, what was left were
// two child-process pipes and a timer (a spawned process's stdio, not a Redis connection of the service).
// Until that is found, name what is left on stderr and end the
// process 10 s after the last teardown, so a leak shows in the log instead of failing CI by a timeout.
t.teardown(() => {
  setTimeout(() => {
    const left = (process as unknown as { _getActiveHandles: () => Array<{ constructor?: { name?: string }, remotePort?: number, pid?: number }> })._getActiveHandles()
      .map((h) => `${h.constructor?.name ?? '?'}${h.remotePort ? ` :${h.remotePort}` : ''}${h.pid ? ` pid ${h.pid}` : ''}`)
    console.error(`cluster-wait: still running 10 s after the last teardown; active: ${JSON.stringify(process.getActiveResourcesInfo())} ${left.join(', ')}`)
    process.exit(process.exitCode ?? 0)
  }, 10_000).unref()
})
