// Codes at checkout: look one up, redeem it for an order exactly once, roll that back when the order
// fails. Every state is answered from Redis, where it is first (a redemption is there before the
// consumer writes it to Postgres); only the campaign's discount and metadata, which live in Postgres
// alone, are read from there. Every code that names nothing gets the same 404 CODE_NOT_FOUND.
import type { FastifyPluginAsync } from 'fastify'
import { findCoupon } from '../db/queries/coupons.js'
import { CodeNotFound } from '../errors.js'
import type { FoundCode, Redeemed } from '../issuing/coupon-store.js'
import { ORDER_ID_PATTERN } from '../stream/events.js'
import { dateTime, errors } from './schemas.js'

const nullableDate = { type: ['string', 'null'], format: 'date-time' } as const
const discountOut = {
  type: ['object', 'null'],
  properties: { type: { type: 'string', enum: ['percent', 'amount'] }, value: { type: 'number' }, currency: { type: 'string' } }
} as const
const metadataOut = { type: ['object', 'null'], additionalProperties: true } as const

// Not validated by the schema: a malformed code must get the very answer an unknown one gets (404), not a 400.
const codeParam = { type: 'string', description: 'the code as the customer typed it (case-insensitive)' } as const
const orderId = { type: 'string', minLength: 1, maxLength: 128, pattern: ORDER_ID_PATTERN.source, description: "the shop's order id (no '|')" } as const

export type CodeStatus = 'active' | 'redeemed' | 'revoked' | 'expired'

const codeBody = {
  type: 'object',
  required: ['code', 'couponId', 'userId', 'claim', 'status', 'issuedAt', 'expiresAt', 'redeemedAt', 'orderId', 'discount', 'metadata'],
  properties: {
    code: { type: 'string' },
    couponId: { type: 'integer' },
    userId: { type: 'string' },
    claim: { type: 'integer' },
    status: { type: 'string', enum: ['active', 'redeemed', 'revoked', 'expired'], description: 'a unit returned to stock at expiry is expired; otherwise revoked (cancelled) wins over redeemed, redeemed over expired' },
    issuedAt: dateTime,
    expiresAt: { ...nullableDate, description: 'null: the code does not expire' },
    redeemedAt: { ...nullableDate, description: 'the current redemption (null when not redeemed or rolled back)' },
    orderId: { type: ['string', 'null'], description: 'the order holding the current redemption' },
    discount: discountOut,
    metadata: metadataOut
  }
} as const

const redemptionBody = {
  type: 'object',
  required: ['code', 'orderId', 'redeemedAt', 'discount', 'metadata'],
  properties: { code: { type: 'string' }, orderId: { type: 'string' }, redeemedAt: dateTime, discount: discountOut, metadata: metadataOut }
} as const

/**
 * Returned to stock at expiry is expired (a cancel of the holder after that took nothing of it); then revoked
 * wins over redeemed, redeemed over expired (a redemption made in time stands); on Redis's clock.
 */
function statusOf ({ unit }: FoundCode): CodeStatus {
  if (unit.returnedAt > 0) return 'expired'
  if (unit.revokedAt > 0) return 'revoked'
  if (unit.state === 'd') return 'redeemed'
  return unit.expiresAt > 0 && unit.now >= unit.expiresAt ? 'expired' : 'active'
}

const codeRoutes: FastifyPluginAsync = async (fastify) => {
  const { db, couponStore } = fastify
  const campaign = async (couponId: number) => {
    const coupon = await findCoupon(db, couponId)
    if (!coupon) throw new CodeNotFound() // a coupon in Redis but not in this database: names nothing here
    return { discount: coupon.discount, metadata: coupon.metadata }
  }
  const redemptionAnswer = async (r: Redeemed) => ({ code: r.code, orderId: r.orderId, redeemedAt: r.at, ...await campaign(r.couponId) })

  fastify.get<{ Params: { code: string } }>('/codes/:code', {
    onRequest: fastify.requireShop,
    schema: {
      summary: 'What a code names and its state: checkout validates a code with this',
      tags: ['codes'],
      security: [{ bearer: [] }],
      params: { type: 'object', required: ['code'], properties: { code: codeParam } },
      response: { 200: codeBody, ...errors({ 401: ['UNAUTHORIZED'], 404: ['CODE_NOT_FOUND'], 503: ['REDIS_UNAVAILABLE', 'DATABASE_UNAVAILABLE', 'RESTORING', 'REDEEM_SCRIPT_FAILED'] }) }
    }
  }, async (request) => {
    const found = await couponStore.lookupCode(request.params.code)
    const { unit } = found
    const redeemed = unit.state === 'd'
    return {
      code: found.code,
      couponId: found.couponId,
      userId: unit.userId,
      claim: unit.claim,
      status: statusOf(found),
      issuedAt: new Date(unit.issuedAt),
      expiresAt: unit.expiresAt > 0 ? new Date(unit.expiresAt) : null,
      redeemedAt: redeemed ? new Date(unit.stateAt) : null,
      orderId: redeemed ? unit.orderId : null,
      ...await campaign(found.couponId)
    }
  })

  fastify.post<{ Params: { code: string }, Body: { orderId: string } }>('/codes/:code/redemptions', {
    onRequest: fastify.requireShop,
    schema: {
      summary: 'Redeem a code for an order, exactly once (the same orderId again replays the 201)',
      tags: ['codes'],
      security: [{ bearer: [] }],
      params: { type: 'object', required: ['code'], properties: { code: codeParam } },
      body: { type: 'object', required: ['orderId'], additionalProperties: false, properties: { orderId } },
      response: {
        201: redemptionBody,
        ...errors({
          400: ['INVALID_REQUEST'],
          401: ['UNAUTHORIZED'],
          404: ['CODE_NOT_FOUND'],
          409: ['ALREADY_REDEEMED', 'REVOKED', 'EXPIRED'],
          503: ['REDIS_UNAVAILABLE', 'DATABASE_UNAVAILABLE', 'RESTORING', 'REDEEM_SCRIPT_FAILED']
        })
      }
    }
  }, async (request, reply) => {
    const redeemed = await couponStore.redeemOrRollback('redeem', request.params.code, request.body.orderId)
    if (redeemed.replayed) reply.header('idempotent-replayed', 'true')
    return reply.status(201).send(await redemptionAnswer(redeemed))
  })

  fastify.delete<{ Params: { code: string, orderId: string } }>('/codes/:code/redemptions/:orderId', {
    onRequest: fastify.requireShop,
    schema: {
      summary: "Roll back an order's redemption (the order failed): the code is active again for the same user",
      tags: ['codes'],
      security: [{ bearer: [] }],
      params: { type: 'object', required: ['code', 'orderId'], properties: { code: codeParam, orderId } },
      response: {
        200: {
          type: 'object',
          required: ['code', 'orderId', 'rolledBackAt'],
          properties: { code: { type: 'string' }, orderId: { type: 'string' }, rolledBackAt: dateTime }
        },
        ...errors({
          400: ['INVALID_REQUEST'],
          401: ['UNAUTHORIZED'],
          404: ['CODE_NOT_FOUND'],
          409: ['NOT_REDEEMED_BY_ORDER', 'REVOKED'],
          503: ['REDIS_UNAVAILABLE', 'RESTORING', 'REDEEM_SCRIPT_FAILED']
        })
      }
    }
  }, async (request, reply) => {
    const rolledBack = await couponStore.redeemOrRollback('rollback', request.params.code, request.params.orderId)
    if (rolledBack.replayed) reply.header('idempotent-replayed', 'true')
    return { code: rolledBack.code, orderId: rolledBack.orderId, rolledBackAt: rolledBack.at }
  })
}

export default codeRoutes
