// createRedis in Sentinel mode, without a Sentinel (the fault suite's sentinel.test.ts runs a real one):
// the options every connection gets, and a closed connection that leaves no sentinel subscription behind.
import t from 'tap'
import { createRedis } from '../src/redis/client.js'

t.test('a Sentinel target: master by the sentinels, failover detection, READONLY reconnects', async (t) => {
  const redis = createRedis({ target: { kind: 'sentinel', sentinels: [{ host: '127.0.0.1', port: 1 }], name: 'couponrush' }, name: 'probe', commandTimeoutMs: 500 })
  t.match(redis.options, {
    sentinels: [{ host: '127.0.0.1', port: 1 }],
    name: 'couponrush',
    role: 'master',
    failoverDetector: true,
    connectionName: 'probe',
    enableOfflineQueue: false,
    commandTimeout: 500
  })
  t.equal(redis.options.reconnectOnError!(new Error('READONLY You can\'t write against a read only replica.')), 1, 'a demoted master: reconnect, ask the sentinels again')
  t.equal(redis.options.reconnectOnError!(new Error('ERR something else')), false)
  t.equal(redis.options.sentinelRetryStrategy!(3), 300, 'sentinels unreachable: keep asking')
  t.equal(redis.options.sentinelRetryStrategy!(100), 1000, 'at most a second apart')
  const ended = new Promise((resolve) => redis.once('end', resolve))
  redis.disconnect()
  await ended
  t.equal(redis.status, 'end', 'disconnected (the failover detector with it)')
})

t.test('a URL target has no Sentinel options', async (t) => {
  const redis = createRedis({ target: { kind: 'url', url: 'redis://127.0.0.1:1', defaulted: false } })
  t.equal(redis.options.sentinels, null)
  t.equal(redis.options.reconnectOnError, null)
  redis.disconnect()
})
