// REDIS_WAIT_REPLICAS: a 201 (or a cancel) only once a replica has the write, the consumer commits only
// replicated entries, and a replica that stops answering turns into fast 503 REPLICATION_TIMEOUTs (outcome
// unknown, settled by a retry with the same Idempotency-Key), not a stalled service. A primary and one
// replica of our own (REPLICAOF), the app in this process.
import { EventEmitter, once } from 'node:events'
import t, { type Test } from 'tap'
import { Redis, type Cluster } from 'ioredis'
import { admin, createCoupon, inParallel, REDIS_URL, uniquePrefix, waitFor } from './helpers/env.js'
import { redisDurabilityRisks } from '../src/redis/client.js'
import { ReplicasTooSlow, ReplicationFence, ShardFences } from '../src/redis/replication-fence.js'
import { createKeys } from '../src/redis/keys.js'
import { issue, rowsOf, type Call } from './faults/helpers/invariants.js'
import { inProcessScenario } from './faults/helpers/inprocess.js'
import { throwawayRedis, type ThrowawayRedis } from './faults/helpers/procs.js'

const WAIT_TIMEOUT_MS = 300

async function primaryWithReplica (t: Test) {
  const primary = await throwawayRedis(t, { appendonly: false })
  const replica = await throwawayRedis(t, { appendonly: false, args: ['--replicaof', '127.0.0.1', String(primary.port)] })
  await waitFor(async () => /master_link_status:up/.test(await replica.client.info('replication')), { what: 'the replica\'s first sync' })
  return { primary, replica }
}

const stopped = (t: Test, redis: ThrowawayRedis) => {
  t.teardown(() => redis.signal('SIGCONT'))
  redis.signal('SIGSTOP')
  return () => redis.signal('SIGCONT')
}

t.test('WAIT on: answers and commits only what a replica has; a frozen replica means fast 503s, settled by a keyed retry', async (t) => {
  const { primary, replica } = await primaryWithReplica(t)
  const prefix = uniquePrefix(t, primary.url)
  const { app, base, coupon, k, check } = await inProcessScenario(t, {
    REDIS_URL: primary.url,
    REDIS_PREFIX: prefix,
    RECLAIM_MIN_IDLE_MS: '60000',
    REDIS_WAIT_REPLICAS: '1',
    REDIS_WAIT_TIMEOUT_MS: String(WAIT_TIMEOUT_MS)
  }, 100)
  const calls: Call[] = await inParallel(40, 8, (i) => issue(base, coupon.id, `u${i}`))
  t.equal(calls.filter((c) => c.outcome === 'ok').length, 40, 'issuing works with a replica confirming')
  t.equal(await replica.client.hlen(k.holders), 41, 'and the replica has every holder answered (40 + the marker field)')
  await check(t, calls)

  const other = await createCoupon(app, { totalQuantity: 5 })
  t.equal((await issue(base, other.id, 'canceller')).status, 201)

  const held = await app.inject({ method: 'POST', url: `/coupons/${other.id}/issues`, payload: { userId: 'redeemer' } })
  const redeem = () => app.inject({ method: 'POST', url: `/codes/${held.json().code}/redemptions`, payload: { orderId: 'order-1' } })

  const resume = stopped(t, replica)
  const keyed = () => app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: { 'idempotency-key': 'frozen-1-key' }, payload: { userId: 'frozen-1' } })
  const started = Date.now()
  const unconfirmed = await keyed()
  const took = Date.now() - started
  t.equal(unconfirmed.statusCode, 503)
  t.equal(unconfirmed.json().code, 'REPLICATION_TIMEOUT', 'the replica did not confirm: outcome unknown')
  t.ok(took < 2 * WAIT_TIMEOUT_MS + 700, `answered fast (${took} ms, WAIT timeout ${WAIT_TIMEOUT_MS} ms)`)
  t.equal(await primary.client.hget(k.holders, 'frozen-1'), '1', 'the master did take the unit (hence "unknown", not "refused")')
  const cancelCanceller = () => app.inject({ method: 'DELETE', url: `/coupons/${other.id}/issues/canceller`, headers: { ...admin, 'idempotency-key': 'cancel-1' } })
  const cancel = await cancelCanceller()
  t.equal(cancel.json().code, 'REPLICATION_TIMEOUT', 'a cancel waits for the replica too')
  t.equal((await redeem()).json().code, 'REPLICATION_TIMEOUT', 'a redemption waits for the replica too')
  const rowsWhileFrozen = (await rowsOf(app.env.databaseUrl, coupon.id)).length
  // The consumer tries to commit the frozen user's entry and is refused: two refusals, then look.
  for (let refusals = 0; refusals < 2; refusals++) await once(app.consumer!, 'backoff')
  const rowsNow = await rowsOf(app.env.databaseUrl, coupon.id)
  t.equal(rowsNow.length, rowsWhileFrozen, 'nothing is committed to Postgres the replica does not have')
  t.notOk(rowsNow.some((r) => r.user_id === 'frozen-1'))

  resume()
  const retried = await keyed()
  t.equal(retried.statusCode, 201, 'the retry with the same key settles it: the unit was issued')
  t.equal(retried.headers['idempotent-replayed'], 'true', 'as a replay of the first call')
  calls.push({ userId: 'frozen-1', outcome: 'ok', status: 201, issuedAt: retried.json().issuedAt, ms: 0 })
  const cancelled = await cancelCanceller()
  t.equal(cancelled.statusCode, 200, 'the cancel, retried with its key once the replica is back, is confirmed')
  t.equal(cancelled.headers['idempotent-replayed'], 'true', 'it had happened the first time')
  const redeemed = await redeem()
  t.equal(redeemed.statusCode, 201, 'the redemption, retried for the same order, is confirmed')
  await check(t, calls)
})

t.test('WAIT off: a frozen replica changes nothing (the 201 does not wait)', async (t) => {
  const { primary, replica } = await primaryWithReplica(t)
  const prefix = uniquePrefix(t, primary.url)
  const { base, coupon } = await inProcessScenario(t, { REDIS_URL: primary.url, REDIS_PREFIX: prefix, RECLAIM_MIN_IDLE_MS: '60000' }, 10)
  stopped(t, replica)
  t.equal((await issue(base, coupon.id, 'a')).status, 201)
})

t.test('the fence: concurrent callers share fences; a caller never joins a fence sent before it asked', async (t) => {
  const { primary, replica } = await primaryWithReplica(t)
  const prefix = uniquePrefix(t, primary.url)
  const { app } = await inProcessScenario(t, { REDIS_URL: primary.url, REDIS_PREFIX: prefix, CONSUMER_ENABLED: 'false' }, 10)
  const connection = (app.redis as Redis).duplicate()
  t.teardown(() => connection.disconnect())
  await connection.connect()
  const key = `${prefix}test-fence`
  const fence = new ReplicationFence({ redis: connection, key, replicas: 1, timeoutMs: WAIT_TIMEOUT_MS })
  const runIds = await Promise.all(Array.from({ length: 200 }, () => fence.sync()))
  t.equal(new Set(runIds).size, 1, 'every caller is told the same server')
  const fences = Number(await primary.client.get(key))
  t.ok(fences <= 2, `200 concurrent callers, ${fences} fence(s): the first, and one for everyone who came while it ran`)

  // A caller that arrives while a fence is in flight gets the next one, which starts after it.
  const first = fence.sync()
  const second = fence.sync()
  await first
  const afterFirst = Number(await primary.client.get(key))
  await second
  t.equal(Number(await primary.client.get(key)), afterFirst + 1, 'the second caller waited for a fence of its own')

  stopped(t, replica)
  await t.rejects(fence.sync(), ReplicasTooSlow, 'no replica confirms: refused, not hung')
  const [queuedStart, queued] = [Date.now(), [fence.sync(), fence.sync()]]
  await t.rejects(queued[1]!, ReplicasTooSlow, 'a caller queued behind a fence that times out is refused with it')
  await t.rejects(queued[0]!, ReplicasTooSlow)
  t.ok(Date.now() - queuedStart < 2 * WAIT_TIMEOUT_MS, `within one WAIT timeout, not two (${Date.now() - queuedStart} ms)`)
  t.match(await redisDurabilityRisks(primary.client, { waitReplicas: 2 }), [/REDIS_WAIT_REPLICAS=2 but the master has 1 connected replica/],
    'the startup check says when fewer replicas are connected than WAIT needs')
  t.notOk((await redisDurabilityRisks(primary.client, { waitReplicas: 1 })).some((risk) => /REDIS_WAIT_REPLICAS/.test(risk)), 'and nothing when it waits for each one')
  const secondReplica = await throwawayRedis(t, { appendonly: false, args: ['--replicaof', '127.0.0.1', String(primary.port)] })
  await waitFor(async () => /master_link_status:up/.test(await secondReplica.client.info('replication')), { what: 'the second replica\'s first sync' })
  t.match(await redisDurabilityRisks(primary.client, { waitReplicas: 1 }), [/REDIS_WAIT_REPLICAS=1 but the master has 2 connected replicas: a failover may promote one that did not acknowledge/],
    'and when a failover could promote a replica it does not wait for')
})

t.test('cluster fences: a node the slot map no longer names as a primary has its fence connection closed at the next refresh', async (t) => {
  // A stand-in for the ioredis Cluster: ShardFences reads only its slot map and its 'refresh' event.
  const node = `${new URL(REDIS_URL).hostname}:${new URL(REDIS_URL).port || 6379}`
  const cluster = Object.assign(new EventEmitter(), { slots: [] as string[][] })
  const name = `fence-test-${process.pid}-${Date.now()}`
  const fences = new ShardFences(cluster as unknown as Cluster, createKeys(uniquePrefix(t)), { replicas: 1, timeoutMs: 200, commandTimeoutMs: 1000, name, onError: () => {} })
  t.teardown(() => fences.close())
  const observer = new Redis(REDIS_URL)
  t.teardown(() => observer.disconnect())
  const open = async () => (await observer.client('LIST') as string).split('\n').filter((line) => line.includes(` name=${name}`)).length

  cluster.slots = Array.from({ length: 16384 }, () => [node])
  const first = await fences.fenceOf(node)
  t.equal(await open(), 1, 'one connection for the primary')
  cluster.emit('refresh')
  t.equal(await fences.fenceOf(node), first, 'still a primary: the fence stays')
  cluster.slots = []
  cluster.emit('refresh')
  t.equal(await fences.fenceOf(node), first, 'an empty slot map (a refresh that found no node) closes nothing')

  cluster.slots = Array.from({ length: 16384 }, () => ['10.255.255.1:6379', node])
  cluster.emit('refresh')
  await waitFor(async () => await open() === 0, { what: 'the demoted node\'s fence connection to close' })
  t.pass('demoted to a replica: its fence connection is closed')
  cluster.slots = Array.from({ length: 16384 }, () => [node])
  const again = await fences.fenceOf(node)
  t.not(again, first, 'primary again: a new fence on first use')
  t.equal(await open(), 1)
})
