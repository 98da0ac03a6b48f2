// GET /admin/coupons/:couponId/stats: how the rush went, cheap enough to poll every second.
import type { FastifyPluginAsync } from 'fastify'
import { findCoupon } from '../db/queries/coupons.js'
import { CouponNotFound } from '../errors.js'
import { campaignStats } from '../issuing/campaign-stats.js'
import { couponParams, dateTime, errors } from './schemas.js'

const nullableMoment = { type: ['string', 'null'], format: 'date-time' } as const

const statsBody = {
  type: 'object',
  required: ['couponId', 'total', 'remaining', 'issued', 'revoked', 'discarded', 'returned', 'persisted', 'unpersisted', 'parked',
    'rejected', 'firstIssuedAt', 'soldOutAt', 'peakIssuesPerSecond', 'lagMs', 'at'],
  properties: {
    couponId: { type: 'integer' },
    total: { type: 'integer' },
    remaining: { type: 'integer' },
    issued: { type: 'integer', description: 'units handed out since the campaign started (a re-claim after a cancel counts again)' },
    revoked: { type: 'integer', description: 'units given back by cancels' },
    discarded: { type: 'integer', description: 'units returned to stock by discarding parked entries' },
    returned: { type: 'integer', description: 'expired, unredeemed units the expiry job returned to stock (returnExpiredToStock)' },
    persisted: { type: 'integer', description: 'issue rows in Postgres, revoked ones included' },
    unpersisted: { type: 'integer', description: 'stream entries (issues and cancels) not yet acknowledged by the consumer group' },
    parked: { type: 'integer', description: 'entries in failed_issue_events, neither retried nor discarded' },
    rejected: { type: 'object', additionalProperties: { type: 'integer' }, description: 'issue requests answered with each code (all instances; up to a second behind for the others)' },
    firstIssuedAt: nullableMoment,
    soldOutAt: { ...nullableMoment, description: 'the first moment the stock reached 0' },
    peakIssuesPerSecond: { type: 'integer' },
    lagMs: {
      type: 'object',
      required: ['now', 'worst'],
      properties: {
        now: { type: 'integer', description: 'age of the oldest entry not yet persisted' },
        worst: { type: 'integer', description: 'the largest delay between an issue and its row seen so far' }
      }
    },
    at: dateTime
  }
} as const

const campaignStatsRoutes: FastifyPluginAsync = async (fastify) => {
  const { db, redis, keys, couponStore } = fastify

  fastify.get<{ Params: { couponId: number } }>('/admin/coupons/:couponId/stats', {
    onRequest: fastify.requireAdmin,
    schema: {
      summary: 'Campaign statistics (admin): issued, remaining, persisted, backlog, rejections by code, sell-out moment, peak rate, lag',
      tags: ['admin'],
      security: [{ bearer: [] }],
      params: couponParams,
      response: { 200: statsBody, ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 404: ['COUPON_NOT_FOUND'], 503: ['REDIS_UNAVAILABLE', 'REDIS_RECONFIGURING', 'DATABASE_UNAVAILABLE'] }) }
    }
  }, async (request) => {
    const { couponId } = request.params
    const coupon = await findCoupon(db, couponId)
    if (!coupon) throw new CouponNotFound(couponId)
    // Rebuilds the counters first when they are missing.
    await couponStore.remaining(couponId)
    return { ...await campaignStats(db, redis, keys, fastify.campaignStats, couponId, coupon.totalQuantity), at: new Date() }
  })
}

export default campaignStatsRoutes
