// `npm start` without REDIS_URL: a local redis-server is started when nothing listens.
import t from 'tap'
import { createServer } from 'node:net'
import { Redis } from 'ioredis'
import { ensureLocalRedis } from '../src/dev/local-redis.js'

const freePort = () => new Promise<number>((resolve) => {
  const server = createServer().listen(0, '127.0.0.1', () => {
    const { port } = server.address() as { port: number }
    server.close(() => resolve(port))
  })
})

t.test('starts redis-server with AOF and noeviction when the port is free, reuses a running one otherwise', async (t) => {
  const port = await freePort()
  const dataDir = t.testdir()
  const started = await ensureLocalRedis(dataDir, port)
  t.teardown(() => { started.process?.kill() })
  t.ok(started.process, 'a child process was started')
  const redis = new Redis(started.url)
  t.teardown(() => redis.disconnect())
  t.equal(await redis.ping(), 'PONG')
  t.same(await redis.config('GET', 'appendonly'), ['appendonly', 'yes'])
  t.same(await redis.config('GET', 'maxmemory-policy'), ['maxmemory-policy', 'noeviction'])
  const reused = await ensureLocalRedis(dataDir, port)
  t.equal(reused.process, null, 'an instance already listening is used as it is')
})
