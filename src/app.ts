// The application as a plugin: server.ts listens, tests inject. Data flow:
// routes/issues.ts -> issuing/coupon-store.ts -> redis/scripts/issue.lua -> stream
//   -> persistence/consumer.ts -> persistence/persist-batch.ts -> db/queries/issues.ts -> Postgres
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { Ajv } from 'ajv'
import addFormatsModule from 'ajv-formats'
import type { Config } from './config.js'
import { ShuttingDown } from './errors.js'
import authPlugin from './plugins/auth.js'
import consumerPlugin from './plugins/consumer.js'
import couponStorePlugin from './plugins/coupon-store.js'
import databasePlugin from './plugins/database.js'
import errorHandlerPlugin from './plugins/error-handler.js'
import metricsPlugin from './plugins/metrics.js'
import rateLimitPlugin from './plugins/rate-limit.js'
import redisPlugin from './plugins/redis.js'
import couponRoutes from './routes/coupons.js'
import failedEventRoutes from './routes/failed-events.js'
import healthRoutes from './routes/health.js'
import issueRoutes from './routes/issues.js'

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv

export interface AppOptions {
  config: Config
}

/** Fastify server options that belong with the app (tests and server.ts share them). */
export function serverOptions (config: Config): FastifyServerOptions {
  return {
    logger: { level: config.logLevel },
    logController: new LogController({ disableRequestLogging: !config.logRequests }),
    trustProxy: config.trustProxy,
    // A valid issue request is under 200 bytes; anything near this is not one of ours.
    bodyLimit: 4096,
    // Fastify's own 503-while-closing answers with a body that has no `code`; the onRequest hook in app()
    // answers SHUTTING_DOWN from the catalog instead (Fastify still sets Connection: close).
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    // Startup runs migrations, and embedded PGlite compiles WebAssembly: both can outlast the 10 s default.
    pluginTimeout: 60_000,
    ajv: { customOptions: { removeAdditional: false } }
  }
}

// Bodies are validated as sent (no coercion: "5" is not 5); params, query and headers arrive as text.
function validatorCompilers () {
  const options = { allErrors: false, useDefaults: true, removeAdditional: false, strict: false } as const
  const strict = addFormats(new Ajv({ ...options, coerceTypes: false }))
  const coercing = addFormats(new Ajv({ ...options, coerceTypes: true }))
  return ({ schema, httpPart }: { schema: object, httpPart?: string }) =>
    (httpPart === 'body' ? strict : coercing).compile(schema)
}

export default async function app (fastify: FastifyInstance, { config }: AppOptions) {
  fastify.setValidatorCompiler(validatorCompilers())
  let closing = false
  fastify.addHook('preClose', async () => { closing = true })
  // Callback style: runs on every request, and an async hook would allocate a promise each time.
  fastify.addHook('onRequest', (_request, _reply, done) => { done(closing ? new ShuttingDown() : undefined) })

  await fastify.register(errorHandlerPlugin)
  await fastify.register(swagger, {
    openapi: {
      info: { title: 'couponrush', version: '0.1.0', description: 'First-come-first-served coupon issuing.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } }
    }
  })
  await fastify.register(swaggerUi, { routePrefix: '/docs' })
  fastify.get('/openapi.json', { schema: { hide: true } }, async () => fastify.swagger())

  await fastify.register(redisPlugin, { config })
  await fastify.register(databasePlugin, { config })
  await fastify.register(couponStorePlugin, { config })
  await fastify.register(authPlugin, { config })
  await fastify.register(rateLimitPlugin, { config })
  await fastify.register(consumerPlugin, { config })
  await fastify.register(metricsPlugin)

  await fastify.register(healthRoutes)
  await fastify.register(couponRoutes)
  await fastify.register(issueRoutes)
  await fastify.register(failedEventRoutes)
}

/** A ready-to-listen instance with the app's decorators visible at the root (for server.ts, tests, scripts). */
export async function buildApp (config: Config, extra: FastifyServerOptions = {}): Promise<FastifyInstance> {
  const fastify = Fastify({ ...serverOptions(config), ...extra })
  try {
    await fastify.register(fp(app), { config })
  } catch (err) {
    // A refused startup (STRICT_REDIS, synchronous_commit off, a dependency down) must not leave the
    // connections opened so far behind: they would keep a test runner or a script alive forever.
    await fastify.close().catch(() => {})
    throw err
  }
  return fastify
}
