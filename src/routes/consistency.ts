// Admin: do a coupon's books balance? Redis counters against Postgres plus the unpersisted stream entries.
import type { FastifyPluginAsync } from 'fastify'
import { checkConsistency } from '../consistency/check.js'
import { couponParams, dateTime, errors } from './schemas.js'

const int = { type: 'integer' } as const

export const consistencyReportSchema = {
  type: 'object',
  required: ['couponId', 'status', 'checkedAt', 'cutoff', 'postgres', 'stream', 'redis', 'expected', 'problems', 'users', 'usersDiffering'],
  properties: {
    couponId: int,
    status: { type: 'string', enum: ['consistent', 'inconsistent', 'counters-absent'], description: '`counters-absent`: Redis holds no counters for the coupon (wiped, evicted); the next request rebuilds them' },
    checkedAt: { ...dateTime, description: 'the moment of the Redis snapshot (Redis time)' },
    cutoff: { type: 'string', description: 'stream id up to which events were compared; later events are left to the next check' },
    postgres: {
      type: 'object',
      properties: { total: int, rows: int, activeRows: int, revocations: int, parked: int }
    },
    stream: {
      type: 'object',
      properties: { unpersistedIssues: int, unpersistedRevokes: int, undecodable: int }
    },
    redis: {
      type: ['object', 'null'],
      properties: { total: int, remaining: int, activeHolders: int }
    },
    expected: { type: 'object', properties: { activeHolders: int, remaining: int } },
    problems: { type: 'array', items: { type: 'string' } },
    users: {
      type: 'array',
      description: 'users whose numbers differ (at most 100; usersDiffering counts them all)',
      items: {
        type: 'object',
        properties: {
          userId: { type: 'string' },
          redisHolds: int,
          expectedHolds: int,
          rows: int,
          activeRows: int,
          unpersistedIssues: int,
          unpersistedRevokes: int,
          parkedIssues: int,
          redisClaim: int,
          maxRowClaim: int
        }
      }
    },
    usersDiffering: int
  }
} as const

const consistencyRoutes: FastifyPluginAsync = async (fastify) => {
  fastify.get<{ Params: { couponId: number } }>('/admin/coupons/:couponId/consistency', {
    onRequest: fastify.requireAdmin,
    schema: {
      summary: 'Do the books balance? Redis counters against Postgres rows plus unpersisted and parked entries (admin, read-only)',
      tags: ['admin'],
      security: [{ bearer: [] }],
      params: couponParams,
      response: {
        200: consistencyReportSchema,
        ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 404: ['COUPON_NOT_FOUND'], 503: ['REDIS_UNAVAILABLE', 'REDIS_RECONFIGURING', 'DATABASE_UNAVAILABLE'] })
      }
    }
  }, async (request) => checkConsistency(fastify, request.params.couponId))
}

export default consistencyRoutes
