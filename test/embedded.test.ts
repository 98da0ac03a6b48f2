// With no DATABASE_URL the service runs on embedded Postgres (PGlite): the whole path must work there too.
import t from 'tap'
import { describeRedis, loadConfig } from '../src/config.js'
import { buildApp } from '../src/app.js'
import { ADMIN_TOKEN, REDIS_URL, createCoupon, createTestDatabase, testApp, uniquePrefix, waitFor } from './helpers/env.js'
import { couponIssues } from '../src/db/schema.js'

t.test('embedded Postgres: create, issue, persist, restart and still know who holds what', async (t) => {
  const dataDir = t.testdir()
  const config = loadConfig({ REDIS_URL, REDIS_PREFIX: uniquePrefix(t), ADMIN_TOKEN, LOG_LEVEL: 'silent', DATA_DIR: dataDir, CONSUMER_BLOCK_MS: '100' })
  t.equal(config.databaseUrl, '')
  const app = await buildApp(config)
  await app.ready()
  t.equal(app.database.kind, 'pglite')
  const coupon = await createCoupon(app, { totalQuantity: 2 })
  const issued = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'local-dev' } })
  t.equal(issued.statusCode, 201)
  const rows = await waitFor(async () => { const r = await app.db.select().from(couponIssues); return r.length > 0 && r }, { what: 'the row in PGlite' })
  t.equal(rows[0]!.createdAt.toISOString(), issued.json().issuedAt)
  await app.close()

  const again = await buildApp(config)
  t.teardown(() => again.close())
  await again.ready()
  await again.redis.del(again.keys.coupon(coupon.id).stock, again.keys.coupon(coupon.id).holders)
  const repeat = await again.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'local-dev' } })
  t.equal(repeat.json().code, 'ALREADY_ISSUED', 'rebuilt from the embedded database after a restart')
})

t.test('configuration is validated with a message that says what is wrong', async (t) => {
  t.throws(() => loadConfig({ PORT: 'eighty' }), { name: 'ConfigError' })
  t.throws(() => loadConfig({ PORT: 'eighty' }), /PORT/)
  t.throws(() => loadConfig({ REDIS_PREFIX: 'bad{prefix}' }), /REDIS_PREFIX/)
  t.throws(() => loadConfig({ NODE_ENV: 'production' }), /ADMIN_TOKEN must be set in production/)
  t.throws(() => loadConfig({ ADMIN_TOKEN: 'short' }), /at least 12 characters/)
  const generated = loadConfig({})
  t.ok(generated.adminTokenGenerated)
  t.ok(generated.adminToken.length >= 16, 'a random admin token for local runs')
  t.same(generated.redis, { kind: 'url', url: 'redis://127.0.0.1:6379', defaulted: true }, 'no REDIS_URL: the local default, resolved once')
  t.same(loadConfig({ REDIS_URL: 'redis://cache:6380' }).redis, { kind: 'url', url: 'redis://cache:6380', defaulted: false })
  t.same(loadConfig({ REDIS_SENTINELS: ' 10.0.0.5:26379, sentinel-b:26380,[::1]:26381 ', REDIS_SENTINEL_NAME: 'coupons' }).redis, {
    kind: 'sentinel',
    sentinels: [{ host: '10.0.0.5', port: 26379 }, { host: 'sentinel-b', port: 26380 }, { host: '::1', port: 26381 }],
    name: 'coupons'
  }, 'REDIS_SENTINELS: host:port list, IPv6 in brackets')
  t.throws(() => loadConfig({ REDIS_URL: 'redis://cache:6380', REDIS_SENTINELS: 's:26379', REDIS_SENTINEL_NAME: 'coupons' }),
    { name: 'ConfigError', message: /REDIS_URL and REDIS_SENTINELS are both set/ }, 'exactly one way to reach Redis')
  t.same(loadConfig({ REDIS_CLUSTER_NODES: '10.0.0.5:7000, node-b:7001,[::1]:7002' }).redis, {
    kind: 'cluster',
    nodes: [{ host: '10.0.0.5', port: 7000 }, { host: 'node-b', port: 7001 }, { host: '::1', port: 7002 }]
  }, 'REDIS_CLUSTER_NODES: host:port seeds')
  t.throws(() => loadConfig({ REDIS_URL: 'redis://cache:6380', REDIS_CLUSTER_NODES: 'n:7000' }),
    { name: 'ConfigError', message: /REDIS_URL and REDIS_CLUSTER_NODES are both set/ }, 'a URL and a cluster: refused, both named')
  t.throws(() => loadConfig({ REDIS_SENTINELS: 's:26379', REDIS_SENTINEL_NAME: 'coupons', REDIS_CLUSTER_NODES: 'n:7000' }),
    { name: 'ConfigError', message: /REDIS_SENTINELS and REDIS_CLUSTER_NODES are both set/ }, 'Sentinels and a cluster: refused, both named')
  t.throws(() => loadConfig({ REDIS_URL: 'redis://c', REDIS_SENTINELS: 's:26379', REDIS_SENTINEL_NAME: 'coupons', REDIS_CLUSTER_NODES: 'n:7000' }),
    { name: 'ConfigError', message: /REDIS_URL and REDIS_SENTINELS and REDIS_CLUSTER_NODES are all set/ })
  t.throws(() => loadConfig({ REDIS_CLUSTER_NODES: 'n:7000', REDIS_SENTINEL_NAME: 'coupons' }), /REDIS_SENTINEL_NAME is set without REDIS_SENTINELS/)
  for (const bad of ['n', 'n:0', 'n:7000,', 'redis://n:7000']) {
    t.throws(() => loadConfig({ REDIS_CLUSTER_NODES: bad }), { name: 'ConfigError', message: /REDIS_CLUSTER_NODES entry .* is not host:port/ }, `REDIS_CLUSTER_NODES=${bad}`)
  }
  t.equal(describeRedis(loadConfig({ REDIS_CLUSTER_NODES: 'n:7000,[::1]:7001' }).redis), 'Redis Cluster via n:7000,[::1]:7001')
  t.equal(loadConfig({ REDIS_CLUSTER_NODES: 'n:7000', REDIS_WAIT_REPLICAS: '1' }).redisWait.replicas, 1, 'a replication fence per primary on a cluster')
  t.throws(() => loadConfig({ REDIS_SENTINELS: 's:26379' }), /REDIS_SENTINELS needs REDIS_SENTINEL_NAME/)
  t.throws(() => loadConfig({ REDIS_SENTINEL_NAME: 'coupons' }), /REDIS_SENTINEL_NAME is set without REDIS_SENTINELS/)
  for (const bad of ['s', 's:', 's:0', 's:65536', 's:26379,', 'a b:1', '::1:26379', 'redis://s:26379']) {
    t.throws(() => loadConfig({ REDIS_SENTINELS: bad, REDIS_SENTINEL_NAME: 'coupons' }), { name: 'ConfigError', message: /is not host:port/ }, `REDIS_SENTINELS=${bad}`)
  }
  t.equal(describeRedis(loadConfig({ REDIS_SENTINELS: 's:26379,[::1]:26380', REDIS_SENTINEL_NAME: 'coupons' }).redis), 'Sentinel master "coupons" via s:26379,[::1]:26380')
  t.equal(describeRedis(loadConfig({ REDIS_URL: 'redis://:secret@cache:6380/2' }).redis), 'redis://:***@cache:6380/2', 'no password in messages')
  t.equal(describeRedis({ kind: 'url', url: 'not a url', defaulted: false }), 'not a url')
  t.same(loadConfig({ API_KEYS: ' a-key-1234567 ,, b-key-7654321 ' }).apiKeys, ['a-key-1234567', 'b-key-7654321'])
})

t.test('a second database pointed at the same REDIS_PREFIX is refused with a clear message', async (t) => {
  const first = await testApp(t, { CONSUMER_ENABLED: 'false' })
  const otherDatabase = await createTestDatabase(t)
  const config = loadConfig({ REDIS_URL, REDIS_PREFIX: first.env.prefix, DATABASE_URL: otherDatabase, ADMIN_TOKEN, LOG_LEVEL: 'silent', CONSUMER_ENABLED: 'false' })
  await t.rejects(buildApp(config), /belong to another database/)
})
