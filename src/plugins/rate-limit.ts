// Abuse limits on the issue endpoint, counted in Redis so every instance shares them:
// one per client IP, one per user per coupon. Off unless configured.
import fp from 'fastify-plugin'
import rateLimit from '@fastify/rate-limit'
import type { FastifyRequest, preHandlerAsyncHookHandler } from 'fastify'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    issueRateLimits: preHandlerAsyncHookHandler[]
  }
}

export default fp(async function rateLimitPlugin (fastify, { config }: { config: Config }) {
  const { perIp, perUser, windowMs } = config.rateLimit
  const limiters: preHandlerAsyncHookHandler[] = []
  // @fastify/rate-limit lets only one of its limiters run per request, so each limit gets its own
  // registration in its own encapsulated context.
  const limiter = async (max: number, keyGenerator: (request: FastifyRequest) => string,
    allowList?: (request: FastifyRequest) => Promise<boolean>) => {
    let handler: preHandlerAsyncHookHandler | undefined
    await fastify.register(async (scope) => {
      await scope.register(rateLimit, {
        global: false,
        redis: fastify.redis,
        nameSpace: fastify.keys.rateLimit,
        skipOnError: true,
        errorResponseBuilder: (request, context) => {
          fastify.metrics?.countIssueOutcome('RATE_LIMITED')
          const { couponId } = request.params as { couponId?: number }
          if (typeof couponId === 'number') fastify.campaignStats.countRejection(couponId, 'RATE_LIMITED')
          return {
            statusCode: 429,
            code: 'RATE_LIMITED',
            error: 'Too Many Requests',
            message: `Rate limit exceeded; retry in ${Math.ceil(context.ttl / 1000)} s.`
          }
        }
      })
      handler = scope.rateLimit({ max, timeWindow: windowMs, keyGenerator, ...(allowList ? { allowList } : {}) }) as unknown as preHandlerAsyncHookHandler
    })
    return handler!
  }
  if (perIp > 0) limiters.push(await limiter(perIp, (request) => `ip:${request.ip}`))
  if (perUser > 0) {
    limiters.push(await limiter(perUser, (request) => {
      const { couponId } = request.params as { couponId?: number }
      const { userId } = (request.body ?? {}) as { userId?: string }
      return `user:${couponId}:${userId}`
    }, async (request) => {
      // The README tells clients to retry with the same Idempotency-Key: a retry whose outcome is
      // remembered only replays it, so it must not use up the user's allowance (one HEXISTS, keyed calls only).
      const key = request.headers['idempotency-key']
      const { couponId } = request.params as { couponId?: number }
      if (typeof key !== 'string' || couponId === undefined) return false
      return await fastify.redis.hexists(fastify.keys.coupon(couponId).idempotency, `issue:${key}`).catch(() => 0) === 1
    }))
  }
  fastify.decorate('issueRateLimits', limiters)
}, { name: 'rate-limit', dependencies: ['redis'] })
