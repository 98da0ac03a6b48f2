// Redis comes back as another server holding older counters than Postgres: what a Sentinel failover to a
// lagging replica, or a restart from an AOF/RDB that missed the last writes, leaves behind. Simulated with
// an RDB snapshot taken mid-rush and restored after more issues were persisted. The counters inherited
// from that snapshot must not be used: they forget units that are already rows in Postgres.
import { once } from 'node:events'
import { copyFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import type { Redis } from 'ioredis'
import { inParallel, uniquePrefix, waitFor } from './helpers/env.js'
import { checkServer, serverRunId } from '../src/issuing/server-change.js'
import { AdoptCode, adoptServer } from '../src/redis/scripts.js'
import { issue, type Call } from './faults/helpers/invariants.js'
import { inProcessScenario } from './faults/helpers/inprocess.js'
import { throwawayRedis } from './faults/helpers/procs.js'

t.test('Redis restarted from an older snapshot (another run_id): counters dropped and rebuilt, nothing sold twice', async (t) => {
  const redis = await throwawayRedis(t, { appendonly: false })
  const prefix = uniquePrefix(t, redis.url)
  const { app, base, coupon, total, k, check } = await inProcessScenario(t, { REDIS_URL: redis.url, REDIS_PREFIX: prefix, RECLAIM_MIN_IDLE_MS: '60000' }, 100)
  const calls: Call[] = await inParallel(30, 8, (i) => issue(base, coupon.id, `early-${i}`))
  await check(t, calls)
  const oldRunId = await serverRunId(redis.client)
  t.equal(await redis.client.get(app.keys.serverRunId), oldRunId, 'the app recorded the server its counters belong to')

  // The snapshot the "replica" (or the disk) has: 30 units out.
  await redis.client.save()
  copyFileSync(join(redis.dir, 'dump.rdb'), join(redis.dir, 'older.rdb'))
  // 40 more are issued and persisted; then the server is replaced by the older copy.
  const lost = await inParallel(40, 8, (i) => issue(base, coupon.id, `lost-${i}`))
  t.equal(lost.filter((c) => c.outcome === 'ok').length, 40)
  calls.push(...lost)
  // One of them is redeemed, too: an inherited redemptions hash must not let its code be redeemed again.
  const unit = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'redeemer' } })
  t.equal(unit.statusCode, 201)
  calls.push({ userId: 'redeemer', outcome: 'ok', status: 201, issuedAt: unit.json().issuedAt, ms: 0 })
  const redeem = (orderId: string) => app.inject({ method: 'POST', url: `/codes/${unit.json().code}/redemptions`, payload: { orderId } })
  t.equal((await redeem('order-1')).statusCode, 201)
  await check(t, calls)
  await redis.kill()
  copyFileSync(join(redis.dir, 'older.rdb'), join(redis.dir, 'dump.rdb'))
  await redis.start()
  t.not(await serverRunId(redis.client), oldRunId, 'a new server (new run_id)')
  t.equal(await redis.client.get(k.stock), '70', 'whose counters forgot the 41 persisted issues')
  await waitFor(async () => app.redis.status === 'ready', { what: 'the app to reconnect' })

  // The forgotten users again (each must still be known) and newcomers racing for the 29 units left.
  const again = await inParallel(140, 16, (i) => issue(base, coupon.id, i < 40 ? `lost-${i}` : `late-${i}`))
  for (const call of again.filter((c) => c.code === 'RESTORING')) Object.assign(call, await issue(base, coupon.id, call.userId))
  calls.push(...again)
  t.same(again.slice(0, 40).map((c) => c.code), Array(40).fill('ALREADY_ISSUED'), 'users persisted after the snapshot are still known')
  t.equal(again.filter((c) => c.outcome === 'ok').length, 29, 'only the 29 units really left go out')
  t.equal((await redeem('order-2')).json().code, 'ALREADY_REDEEMED', 'the code redeemed after the snapshot stays redeemed')
  t.equal((await redeem('order-1')).statusCode, 201, 'and its own order still replays')
  t.equal(await redis.client.get(app.keys.serverRunId), await serverRunId(redis.client), 'the new server is recorded')

  const summary = await check(t, calls)
  t.equal(summary.rows.length, total, 'sold out, each unit once')
})

t.test('the same server after a reconnect, a first start, a record that changes under the check', async (t) => {
  const redis = await throwawayRedis(t, { appendonly: false })
  const prefix = uniquePrefix(t, redis.url)
  const { app, base, coupon, k } = await inProcessScenario(t, { REDIS_URL: redis.url, REDIS_PREFIX: prefix, RECLAIM_MIN_IDLE_MS: '60000' }, 10)
  t.equal((await issue(base, coupon.id, 'first')).outcome, 'ok')
  await redis.client.hset(k.meta, 'probe', '1')

  // Every connection of the app is cut; the server stays the same one.
  const reconnected = once(app.redis, 'ready')
  await redis.client.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')
  await reconnected
  t.equal((await issue(base, coupon.id, 'second')).outcome, 'ok', 'issuing goes on')
  t.equal(await redis.client.hget(k.meta, 'probe'), '1', 'a reconnect to the same server keeps the counters')

  // No record yet: recorded, nothing dropped.
  await redis.client.del(app.keys.serverRunId)
  t.same(await checkServer(app.redis as Redis, app.keys), { outcome: 'first', runId: await serverRunId(redis.client) })
  t.equal(await redis.client.hget(k.meta, 'probe'), '1', 'a first sight drops nothing')
  t.equal((await checkServer(app.redis as Redis, app.keys)).outcome, 'same')

  // A record of another server: adopted, the counters dropped (stream and idempotency records kept).
  await redis.client.set(app.keys.serverRunId, 'f'.repeat(40))
  const adopted = await checkServer(app.redis as Redis, app.keys)
  t.match(adopted, { outcome: 'adopted', previousRunId: 'f'.repeat(40), coupons: 1 })
  t.equal(await redis.client.exists(k.meta, k.stock, k.holders, k.claims), 0, 'counters dropped')
  t.equal(await redis.client.exists(k.events), 1, 'the stream is kept')

  // A caller that saw no record listed nothing: when a record has appeared meanwhile it must look again.
  await redis.client.set(app.keys.serverRunId, 'e'.repeat(40))
  const relist = await adoptServer(app.redis, { recordKey: app.keys.serverRunId, runId: await serverRunId(redis.client), stockReturned: app.keys.stockReturned, listed: null })
  t.equal(relist, AdoptCode.RELIST, 'told to list the counters first')
  t.equal(await redis.client.get(app.keys.serverRunId), 'e'.repeat(40), 'and nothing changed')
  await redis.client.del(app.keys.serverRunId)
  const third = await issue(base, coupon.id, 'second')
  t.equal(third.code, 'ALREADY_ISSUED', 'rebuilt from Postgres and the stream: the holder is still known')
})

t.test('a script cache emptied under the app (SCRIPT FLUSH; a restart or failover empties it too): issue.lua is sent again in full', async (t) => {
  const redis = await throwawayRedis(t, { appendonly: false })
  const prefix = uniquePrefix(t, redis.url)
  const { base, coupon, check } = await inProcessScenario(t, { REDIS_URL: redis.url, REDIS_PREFIX: prefix, RECLAIM_MIN_IDLE_MS: '60000' }, 10)
  const calls: Call[] = [await issue(base, coupon.id, 'before')]
  const evals = async () => Number(/cmdstat_eval:calls=(\d+)/.exec(await redis.client.info('commandstats'))?.[1] ?? 0)
  const evalsBefore = await evals()
  await redis.client.script('FLUSH')
  // At once: each of them meets NOSCRIPT, none may be lost or run twice.
  const after = await inParallel(4, 4, (i) => issue(base, coupon.id, `after-${i}`, i === 0 ? { idempotencyKey: 'flushed-key' } : {}))
  t.same(after.map((c) => c.outcome), ['ok', 'ok', 'ok', 'ok'], 'every issue after the flush goes through')
  t.ok(await evals() > evalsBefore, 'by sending the script in full (EVAL)')
  calls.push(...after)
  const replay = await issue(base, coupon.id, 'after-0', { idempotencyKey: 'flushed-key' })
  t.equal(replay.outcome, 'ok', 'the keyed one replays')
  calls.push(await issue(base, coupon.id, 'before'))
  t.equal(calls.at(-1)!.code, 'ALREADY_ISSUED', 'an earlier holder is still known')
  await check(t, calls)
})
