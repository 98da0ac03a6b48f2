// Entry point: validate config, bring up local dependencies when none are configured, listen, shut down gracefully.
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { ConfigError, loadConfig, type Config } from './config.js'
import { ensureLocalRedis } from './dev/local-redis.js'

async function main () {
  let config: Config
  try {
    config = loadConfig()
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message)
      process.exit(1)
    }
    throw err
  }
  // No REDIS_URL (and no REDIS_SENTINELS): use 127.0.0.1:6379, or start a local redis-server there when nothing listens.
  const localRedis = config.redis.kind === 'url' && config.redis.defaulted ? await ensureLocalRedis(config.dataDir) : null
  if (localRedis) config = { ...config, redis: { kind: 'url', url: localRedis.url, defaulted: true } }

  const app = await buildApp(config)
  if (localRedis?.process) app.log.info({ url: localRedis.url }, 'no REDIS_URL: started a local redis-server')
  if (config.adminTokenGenerated) app.log.warn({ adminToken: config.adminToken }, 'ADMIN_TOKEN not set: generated one for this run')

  closeWithGrace({ delay: config.shutdownTimeoutMs }, async ({ signal, err }) => {
    if (err) app.log.error({ err }, 'shutting down after an error')
    else app.log.info({ signal }, 'shutting down: finishing in-flight requests and the current batch')
    await app.close()
    localRedis?.process?.kill()
  })

  await app.listen({ port: config.port, host: config.host })
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err)
  process.exit(1)
})
