// The issue endpoint (the hot path) plus cancel and the "what does this user hold" reads.
import type { FastifyPluginAsync } from 'fastify'
import { issuesOfUser } from '../db/queries/issues.js'
import { findCoupon } from '../db/queries/coupons.js'
import { CouponNotFound, IssueNotFound } from '../errors.js'
import type { CouponStore, Holding, Issued } from '../issuing/coupon-store.js'
import { couponParams, couponUserParams, dateTime, errors, idempotencyHeaders, userId } from './schemas.js'

interface IssueRoute {
  Params: { couponId: number }
  Body: { userId: string }
  Headers: { 'idempotency-key'?: string }
}

const issuedBody = {
  type: 'object',
  required: ['couponId', 'userId', 'issuedAt', 'code', 'expiresAt'],
  properties: {
    couponId: { type: 'integer' },
    userId: { type: 'string' },
    issuedAt: dateTime,
    claim: { type: 'integer' },
    code: { type: 'string', description: 'the code the customer redeems at checkout (GET /codes/{code}); unguessable, case-insensitive' },
    expiresAt: { type: ['string', 'null'], format: 'date-time', description: 'after this moment the code is no longer redeemable; null = never' }
  }
} as const

const holdingBody = {
  type: 'object',
  required: ['couponId', 'userId', 'units', 'issues'],
  properties: {
    couponId: { type: 'integer' },
    userId: { type: 'string' },
    units: { type: 'integer', description: 'units held now, including issues not yet persisted' },
    issues: {
      type: 'array',
      description: 'persisted history, revoked ones included',
      items: {
        type: 'object',
        properties: { couponId: { type: 'integer' }, claim: { type: 'integer' }, issuedAt: dateTime, revokedAt: { type: ['string', 'null'], format: 'date-time' } }
      }
    }
  }
} as const

const JSON_TYPE = 'application/json; charset=utf-8'

/**
 * The 201 body, written here instead of by the response serializer: the same fields in the order of
 * `issuedBody` (which still documents it), without a pass over the schema per winning request.
 */
function issuedJson ({ couponId, userId, issuedAt, claim, code, expiresAt }: Issued): string {
  return `{"couponId":${couponId},"userId":${JSON.stringify(userId)},"issuedAt":"${issuedAt.toISOString()}","claim":${claim},` +
    `"code":${JSON.stringify(code)},"expiresAt":${expiresAt === null ? 'null' : `"${expiresAt.toISOString()}"`}}`
}

type PersistedView = Awaited<ReturnType<typeof issuesOfUser>>[number]

/**
 * Persisted rows as of now: a cancel, or a return to stock by the expiry job, that the consumer has not
 * written yet is known to Redis, so a row it revoked shows that moment instead of looking active until
 * the consumer catches up.
 */
async function asRedisKnowsThem (couponStore: CouponStore, couponId: number, userId: string, rows: PersistedView[], { lastCancel }: Holding): Promise<PersistedView[]> {
  const cancelled = lastCancel ? rows.map((row) => row.revokedAt === null && row.claim <= lastCancel.upTo ? { ...row, revokedAt: lastCancel.at } : row) : rows
  const returned = await couponStore.returnedAtExpiry(couponId, userId, cancelled.filter((row) => row.revokedAt === null).map((row) => row.claim))
  if (returned.size === 0) return cancelled
  return cancelled.map((row) => row.revokedAt === null && returned.has(row.claim) ? { ...row, revokedAt: returned.get(row.claim)! } : row)
}

const issueRoutes: FastifyPluginAsync = async (fastify) => {
  const { db, couponStore, campaignStats } = fastify
  const { countIssueOutcome, countSoldOutFromMemory } = fastify.metrics

  fastify.post<IssueRoute>('/coupons/:couponId/issues', {
    onRequest: fastify.shopAuth,
    preHandler: fastify.issueRateLimits,
    schema: {
      summary: 'Claim one unit of a coupon for a user (first come, first served)',
      tags: ['issues'],
      security: [{ bearer: [] }],
      params: couponParams,
      headers: idempotencyHeaders,
      body: {
        type: 'object',
        required: ['userId'],
        additionalProperties: false,
        properties: { userId }
      },
      response: {
        201: issuedBody,
        ...errors({
          400: ['INVALID_REQUEST'],
          401: ['UNAUTHORIZED'],
          404: ['COUPON_NOT_FOUND'],
          409: ['ALREADY_ISSUED', 'SOLD_OUT', 'NOT_STARTED', 'ENDED', 'PAUSED'],
          413: ['FST_ERR_CTP_BODY_TOO_LARGE'],
          422: ['IDEMPOTENCY_KEY_REUSED'],
          429: ['RATE_LIMITED'],
          503: ['REDIS_UNAVAILABLE', 'REDIS_RECONFIGURING', 'BACKLOG_FULL', 'RESTORING', 'ISSUE_SCRIPT_FAILED', 'DATABASE_UNAVAILABLE', 'SHUTTING_DOWN']
        })
      }
    }
  }, async (request, reply) => {
    let result
    try {
      result = await couponStore.issue(request.params.couponId, request.body.userId, request.headers['idempotency-key'])
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'ERROR'
      countIssueOutcome(code)
      // Only for coupons that exist: a flood of made-up ids must not grow the statistics.
      if (code !== 'COUPON_NOT_FOUND' && code !== 'ERROR') campaignStats.countRejection(request.params.couponId, code)
      throw err
    }
    const { issued, refusal } = result
    if (refusal) {
      // A losing outcome: its body is already JSON, so it skips the error handler and the serializer.
      countIssueOutcome(refusal.code)
      campaignStats.countRejection(request.params.couponId, refusal.code)
      if (refusal.fromMemory) countSoldOutFromMemory()
      return reply.status(refusal.statusCode).type(JSON_TYPE).send(refusal.body)
    }
    countIssueOutcome(issued.replayed ? 'replayed' : 'issued')
    if (!issued.replayed) campaignStats.countIssued(issued.couponId, issued.issuedAt.getTime())
    if (issued.replayed) reply.header('idempotent-replayed', 'true')
    return reply.status(201).type(JSON_TYPE).send(issuedJson(issued))
  })

  fastify.delete<IssueRoute & { Params: { userId: string }, Querystring: { force?: boolean } }>('/coupons/:couponId/issues/:userId', {
    onRequest: fastify.requireShop,
    schema: {
      summary: 'Give back what a user holds of a coupon (order cancelled); the units return to stock',
      tags: ['issues'],
      security: [{ bearer: [] }],
      params: couponUserParams,
      headers: idempotencyHeaders,
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: { force: { type: 'boolean', default: false, description: 'cancel even a redeemed unit (admin token only); without it a redeemed unit answers 409 ALREADY_REDEEMED' } }
      },
      response: {
        200: {
          type: 'object',
          required: ['couponId', 'userId', 'units', 'revokedAt'],
          properties: { couponId: { type: 'integer' }, userId: { type: 'string' }, units: { type: 'integer' }, revokedAt: dateTime }
        },
        ...errors({
          400: ['INVALID_REQUEST'],
          401: ['UNAUTHORIZED'],
          403: ['FORBIDDEN'],
          404: ['COUPON_NOT_FOUND', 'ISSUE_NOT_FOUND'],
          409: ['ALREADY_REDEEMED'],
          422: ['IDEMPOTENCY_KEY_REUSED'],
          503: ['REDIS_UNAVAILABLE', 'REDIS_RECONFIGURING', 'RESTORING', 'CANCEL_SCRIPT_FAILED']
        })
      }
    }
  }, async (request, reply) => {
    // Taking back a unit a customer already used at checkout is an admin's decision.
    const force = request.query.force === true
    if (force) await fastify.requireAdmin(request)
    const revoked = await couponStore.revoke(request.params.couponId, request.params.userId, request.headers['idempotency-key'], force)
    if (revoked.replayed) reply.header('idempotent-replayed', 'true')
    return revoked
  })

  fastify.get<{ Params: { couponId: number, userId: string } }>('/coupons/:couponId/issues/:userId', {
    onRequest: fastify.requireShop,
    schema: {
      summary: 'Does this user hold the coupon, and since when',
      tags: ['issues'],
      security: [{ bearer: [] }],
      params: couponUserParams,
      response: { 200: holdingBody, ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 404: ['COUPON_NOT_FOUND', 'ISSUE_NOT_FOUND'], 503: ['REDIS_UNAVAILABLE', 'REDIS_RECONFIGURING'] }) }
    }
  }, async (request) => {
    const { couponId, userId } = request.params
    if (!await findCoupon(db, couponId)) throw new CouponNotFound(couponId)
    const [holding, issues] = await Promise.all([couponStore.holding(couponId, userId), issuesOfUser(db, userId, couponId)])
    if (holding.units === 0 && issues.length === 0) throw new IssueNotFound(userId, couponId)
    return { couponId, userId, units: holding.units, issues: await asRedisKnowsThem(couponStore, couponId, userId, issues, holding) }
  })

  fastify.get<{ Params: { userId: string } }>('/users/:userId/coupons', {
    onRequest: fastify.requireShop,
    schema: {
      summary: 'Every coupon a user holds or held, including issues not yet persisted',
      tags: ['issues'],
      security: [{ bearer: [] }],
      params: { type: 'object', required: ['userId'], additionalProperties: false, properties: { userId } },
      response: {
        200: {
          type: 'object',
          required: ['userId', 'coupons'],
          properties: { userId: { type: 'string' }, coupons: { type: 'array', items: holdingBody } }
        },
        ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 503: ['REDIS_UNAVAILABLE', 'REDIS_RECONFIGURING'] })
      }
    }
  }, async (request) => {
    const { userId } = request.params
    const persisted = await issuesOfUser(db, userId)
    const couponIds = new Set(persisted.map((row) => row.couponId))
    // Issues still on their way to Postgres are known only to Redis.
    for (const id of await couponStore.couponsHeldInRedis(userId)) couponIds.add(id)
    const coupons = await Promise.all([...couponIds].sort((a, b) => a - b).map(async (couponId) => {
      const holding = await couponStore.holding(couponId, userId)
      return { couponId, userId, units: holding.units, issues: await asRedisKnowsThem(couponStore, couponId, userId, persisted.filter((row) => row.couponId === couponId), holding) }
    }))
    return { userId, coupons }
  })
}

export default issueRoutes
