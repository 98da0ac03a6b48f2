// Guards at startup: warn loudly, or refuse with STRICT_REDIS=1, when Redis can evict or has no
// persistence; refuse to run the consumer when Postgres has synchronous_commit off.
import { Writable } from 'node:stream'
import t from 'tap'
import pg from 'pg'
import { buildApp } from '../../src/app.js'
import { createTestDatabase, testEnv } from '../helpers/env.js'
import { throwawayRedis } from './helpers/procs.js'

function capture () {
  const lines: string[] = []
  const stream = new Writable({ write (chunk, _enc, done) { lines.push(String(chunk)); done() } })
  return { lines, logger: { level: 'warn', stream } }
}

t.test('Redis without persistence: a loud warning, or a refusal with STRICT_REDIS=1', async (t) => {
  const redis = await throwawayRedis(t, { appendonly: false })
  const log = capture()
  const { config } = await testEnv(t, { REDIS_URL: redis.url, CONSUMER_ENABLED: 'false' })
  const app = await buildApp(config, { logger: log.logger as any })
  t.teardown(() => app.close())
  await app.ready()
  t.match(log.lines.join(''), /REDIS DURABILITY: Redis has no persistence/, 'warned at startup')

  const strict = await testEnv(t, { REDIS_URL: redis.url, CONSUMER_ENABLED: 'false', STRICT_REDIS: 'true' })
  await t.rejects(buildApp(strict.config).then((a) => a.ready()), /STRICT_REDIS=1 and Redis is not safe to run on:[\s\S]*no persistence/)
})

t.test('Redis that may evict: refused with STRICT_REDIS=1; a safe Redis is accepted', async (t) => {
  const evicting = await throwawayRedis(t, { appendonly: true, args: ['--maxmemory-policy', 'allkeys-lru'] })
  const strict = await testEnv(t, { REDIS_URL: evicting.url, CONSUMER_ENABLED: 'false', STRICT_REDIS: 'true' })
  await t.rejects(buildApp(strict.config).then((a) => a.ready()), /maxmemory-policy is allkeys-lru/)

  const safe = await throwawayRedis(t, { appendonly: true })
  const ok = await testEnv(t, { REDIS_URL: safe.url, STRICT_REDIS: 'true' })
  const app = await buildApp(ok.config)
  t.teardown(() => app.close())
  await app.ready()
  t.pass('AOF on and noeviction: accepted under STRICT_REDIS=1')
})

t.test('Postgres with synchronous_commit off: the consumer refuses to run', async (t) => {
  const databaseUrl = await createTestDatabase(t)
  const admin = new pg.Client({ connectionString: databaseUrl })
  await admin.connect()
  await admin.query(`ALTER DATABASE ${new URL(databaseUrl).pathname.slice(1)} SET synchronous_commit = off`)
  await admin.end()
  const withConsumer = await testEnv(t, { DATABASE_URL: databaseUrl })
  await t.rejects(buildApp(withConsumer.config).then((a) => a.ready()), /synchronous_commit is off/)

  const withoutConsumer = await testEnv(t, { DATABASE_URL: databaseUrl, CONSUMER_ENABLED: 'false' })
  const app = await buildApp(withoutConsumer.config)
  t.teardown(() => app.close())
  await app.ready()
  t.pass('without the consumer the web part may run')
})
