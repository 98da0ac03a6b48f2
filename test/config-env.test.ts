// scripts/lib/server.ts turns a Config back into the environment a child server (bench, load test, split
// consumer) starts from, and refuses when a field would not come back as it was. A new setting missing
// there breaks every bench run; this catches it in npm test instead.
import t from 'tap'
import { loadConfig } from '../src/config.js'
import { configEnv } from '../scripts/lib/server.js'

t.test('every setting survives configEnv, defaults and non-defaults alike', async (t) => {
  const defaults = loadConfig({ ADMIN_TOKEN: 'x'.repeat(32) })
  t.same(loadConfig(configEnv(defaults)), defaults)
  const changed = loadConfig({
    ADMIN_TOKEN: 'x'.repeat(32),
    REDIS_WAIT_REPLICAS: '2',
    REDIS_WAIT_TIMEOUT_MS: '750',
    CONSISTENCY_CRON: '',
    EXPIRY_CRON: '',
    SOLD_OUT_MARKER_TTL_MS: '0',
    CONSUMER_ENABLED: 'false'
  })
  t.same(loadConfig(configEnv(changed)), { ...changed, adminTokenGenerated: false })
  t.same(changed.redisWait, { replicas: 2, timeoutMs: 750 })
})
