// The application as a plugin: server.ts listens, tests inject. Data flow:
// routes/issues.ts -> issuing/coupon-store.ts -> redis/scripts/issue.lua -> stream
//   -> persistence/consumer.ts -> persistence/persist-batch.ts -> db/queries/issues.ts -> Postgres
import type { Server } from 'node:http'
import Fastify, { LogController, type FastifyHttpOptions, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { Ajv } from 'ajv'
import addFormatsModule from 'ajv-formats'
import type { Config } from './config.js'
import { isDateTime } from './formats.js'
import authPlugin from './plugins/auth.js'
import consistencyWatchPlugin from './plugins/consistency-watch.js'
import consumerPlugin from './plugins/consumer.js'
import couponStorePlugin from './plugins/coupon-store.js'
import databasePlugin from './plugins/database.js'
import expiryPlugin from './plugins/expiry.js'
import errorHandlerPlugin, { clientErrorHandler, frameworkErrors, MAX_PARAM_LENGTH } from './plugins/error-handler.js'
import metricsPlugin from './plugins/metrics.js'
import rateLimitPlugin from './plugins/rate-limit.js'
import redisPlugin from './plugins/redis.js'
import shutdownPlugin from './plugins/shutdown.js'
import webhooksPlugin from './plugins/webhooks.js'
import campaignStatsRoutes from './routes/campaign-stats.js'
import consistencyRoutes from './routes/consistency.js'
import winnersRoutes from './routes/winners.js'
import codeRoutes from './routes/codes.js'
import webhookRoutes from './routes/webhooks.js'
import eventRoutes from './routes/events.js'
import couponRoutes from './routes/coupons.js'
import dashboardRoutes from './routes/dashboard.js'
import failedEventRoutes from './routes/failed-events.js'
import healthRoutes from './routes/health.js'
import issueRoutes from './routes/issues.js'
import { errors } from './routes/schemas.js'

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv

export interface AppOptions {
  config: Config
}

/** Fastify server options that belong with the app (tests and server.ts share them). */
export function serverOptions (config: Config): FastifyHttpOptions<Server> {
  return {
    logger: { level: config.logLevel },
    logController: new LogController({ disableRequestLogging: !config.logRequests }),
    trustProxy: config.trustProxy,
    // A valid issue request is under 200 bytes; anything near this is not one of ours.
    bodyLimit: 4096,
    // The default (100) refused a valid userId of 101-128 characters in the path with 414. Longer segments
    // than this are answered 414 URI_TOO_LONG; shorter ones reach the schema (400 for a bad userId).
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // Bad URLs and over-long path segments leave with our error body, not the router's.
    frameworkErrors,
    // So do request timeouts, malformed HTTP and oversized headers (Node answers those before Fastify).
    clientErrorHandler,
    // A slow client (headers or body trickling in) is cut off after REQUEST_TIMEOUT_MS with 408; Node checks
    // at connectionsCheckingInterval, so that bounds how late the cut may come.
    requestTimeout: config.requestTimeoutMs,
    connectionTimeout: config.connectionTimeoutMs,
    keepAliveTimeout: config.keepAliveTimeoutMs,
    http: {
      requestTimeout: config.requestTimeoutMs,
      headersTimeout: config.requestTimeoutMs,
      connectionsCheckingInterval: config.requestTimeoutMs > 0 ? Math.min(1000, Math.max(50, Math.floor(config.requestTimeoutMs / 4))) : 30_000
    },
    // Fastify's own 503-while-closing answers with a body that has no `code`; the onRequest hook in
    // plugins/shutdown.ts answers SHUTTING_DOWN from the catalog instead (with Connection: close).
    return503OnClosing: false,
    // plugins/shutdown.ts closes connections itself, once the requests on them are answered.
    forceCloseConnections: false,
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
  // ajv-formats' date-time lets through leap seconds and year 0, which became Invalid Dates or Postgres
  // errors (500) in the handlers: every route's date-time is checked with the stricter format instead.
  for (const ajv of [strict, coercing]) ajv.addFormat('date-time', { type: 'string', validate: isDateTime })
  return ({ schema, httpPart }: { schema: object, httpPart?: string }) =>
    (httpPart === 'body' ? strict : coercing).compile(schema)
}

export default async function app (fastify: FastifyInstance, { config }: AppOptions) {
  fastify.setValidatorCompiler(validatorCompilers())
  // First, so its onRequest hook (503 SHUTTING_DOWN while closing) runs before any other.
  await fastify.register(shutdownPlugin, { config })
  // JSON in, JSON out: a text/plain body used to reach the schema as a string (400 "body must be object");
  // now any body that is not JSON gets 415 UNSUPPORTED_MEDIA_TYPE.
  fastify.removeContentTypeParser('text/plain')
  // Document the answers the framework gives before a route runs, on the routes that can get them.
  fastify.addHook('onRoute', (route) => {
    const response = route.schema?.response as Record<string, unknown> | undefined
    if (!response) return
    if (route.schema?.body) Object.assign(response, errors({ 415: ['UNSUPPORTED_MEDIA_TYPE'] }))
    if (route.schema?.params) Object.assign(response, errors({ 414: ['URI_TOO_LONG'] }))
  })

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
  await fastify.register(consistencyWatchPlugin, { config })
  await fastify.register(expiryPlugin, { config })
  await fastify.register(webhooksPlugin, { config })
  await fastify.register(metricsPlugin)

  await fastify.register(healthRoutes)
  await fastify.register(couponRoutes)
  await fastify.register(issueRoutes)
  await fastify.register(failedEventRoutes)
  await fastify.register(campaignStatsRoutes)
  await fastify.register(consistencyRoutes)
  await fastify.register(winnersRoutes)
  await fastify.register(codeRoutes)
  await fastify.register(webhookRoutes)
  await fastify.register(eventRoutes)
  await fastify.register(dashboardRoutes)
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
