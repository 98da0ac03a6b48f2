// Coupon administration and reads. Creating writes Postgres first, then loads the counters into Redis.
import { createHash } from 'node:crypto'
import type { FastifyPluginAsync } from 'fastify'
import { findCoupon, findCouponByCreationKey, insertCoupon, listCoupons, type Coupon } from '../db/queries/coupons.js'
import { CouponNotFound, IdempotencyKeyReused, InvalidMetadataKey, InvalidValidity, InvalidWindow } from '../errors.js'
import { parseValidFor } from '../issuing/validity.js'
import type { Discount } from '../db/schema.js'
import { CODE_PREFIX_PATTERN, DEFAULT_CODE_LENGTH, MAX_CODE_LENGTH, MIN_CODE_LENGTH } from '../issuing/codes.js'
import { couponBody, couponParams, dateTime, discount, errors, idempotencyHeaders, METADATA_KEY, metadata, pageOf } from './schemas.js'

/** What a route shows of a coupon: never the code secret (it would let anyone compute every code). */
function view<C extends Coupon> (coupon: C, remaining?: number) {
  const { codeSecret: _secret, creationKey: _key, creationRequest: _request, codePrefix, codeLength, ...shown } = coupon
  return { ...shown, codes: { prefix: codePrefix, length: codeLength }, ...(remaining === undefined ? {} : { remaining }) }
}

const returnExpiredToStock = {
  type: 'boolean',
  description: 'expired, unredeemed units go back to stock (the expiry job, EXPIRY_CRON) until the campaign ends; the holder may claim again; code.expired is announced'
} as const

const newCoupon = {
  type: 'object',
  required: ['name', 'totalQuantity'],
  additionalProperties: false,
  properties: {
    // No control characters (Postgres text refuses NUL; the others only break logs and screens), no line
    // separators and no lone surrogates (they are not valid UTF-8).
    name: { type: 'string', minLength: 1, maxLength: 200, pattern: '^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029\\ud800-\\udfff]+$' },
    totalQuantity: { type: 'integer', minimum: 1, maximum: 10_000_000 },
    perUserLimit: { type: 'integer', minimum: 1, maximum: 1000, default: 1 },
    startsAt: dateTime,
    endsAt: { type: ['string', 'null'], format: 'date-time' },
    discount,
    metadata,
    codes: {
      type: 'object',
      additionalProperties: false,
      description: 'how the codes of this campaign look: prefix + `length` unguessable characters + a few characters naming the coupon',
      properties: {
        prefix: { type: 'string', minLength: 1, maxLength: 12, pattern: CODE_PREFIX_PATTERN.source, description: 'printed before every code, e.g. SUMMER-' },
        length: { type: 'integer', minimum: MIN_CODE_LENGTH, maximum: MAX_CODE_LENGTH, default: DEFAULT_CODE_LENGTH, description: 'unguessable characters (5 bits each)' }
      }
    },
    validFor: { type: 'string', maxLength: 40, description: 'ISO 8601 duration each code stays redeemable after its issue: P2W, P7D, PT30M, P1DT12H (no years or months)' },
    validUntil: { ...dateTime, description: 'or: no code of the campaign is redeemable after this moment' },
    returnExpiredToStock
  }
} as const

type Metadata = Record<string, string | number | boolean | null>

/** JSON with object keys sorted at every level: the same request body gives the same text, whatever its key order. */
function canonicalJson (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(',')}}`
  }
  return JSON.stringify(value)
}
const requestDigest = (body: unknown) => createHash('sha256').update(canonicalJson(body)).digest('hex')

function checkMetadataKeys (metadata: Metadata | null | undefined): void {
  const bad = metadata ? Object.keys(metadata).find((key) => !METADATA_KEY.test(key)) : undefined
  if (bad !== undefined) throw new InvalidMetadataKey(JSON.stringify(bad))
}

const couponChanges = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    totalQuantity: { type: 'integer', minimum: 1, maximum: 10_000_000 },
    startsAt: dateTime,
    endsAt: { type: ['string', 'null'], format: 'date-time' },
    discount: { anyOf: [discount, { type: 'null' }] },
    metadata: { anyOf: [metadata, { type: 'null' }] },
    returnExpiredToStock
  }
} as const

const adminErrors = errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'] })

const couponRoutes: FastifyPluginAsync = async (fastify) => {
  const { db, couponStore } = fastify

  fastify.post<{ Body: { name: string, totalQuantity: number, perUserLimit: number, startsAt?: string, endsAt?: string | null, discount?: Discount, metadata?: Metadata, codes?: { prefix?: string, length?: number }, validFor?: string, validUntil?: string, returnExpiredToStock?: boolean } }>('/coupons', {
    onRequest: fastify.requireAdmin,
    schema: {
      summary: 'Create a coupon campaign (admin); with an Idempotency-Key a retry answers the campaign the first request created',
      tags: ['coupons'],
      security: [{ bearer: [] }],
      headers: idempotencyHeaders,
      body: newCoupon,
      response: { 201: couponBody, ...adminErrors, ...errors({ 422: ['IDEMPOTENCY_KEY_REUSED'], 503: ['REDIS_UNAVAILABLE', 'REDIS_RECONFIGURING', 'DATABASE_UNAVAILABLE'] }) }
    }
  }, async (request, reply) => {
    const key = request.headers['idempotency-key'] as string | undefined
    const creation = key === undefined ? undefined : { key, request: requestDigest(request.body) }
    const { startsAt, endsAt, codes, validFor, validUntil, ...rest } = request.body
    checkMetadataKeys(rest.metadata)
    if ((validFor !== undefined && parseValidFor(validFor) === null) || (validFor !== undefined && validUntil !== undefined)) {
      throw new InvalidValidity(JSON.stringify({ validFor, validUntil }))
    }
    const starts = startsAt === undefined ? undefined : new Date(startsAt)
    const ends = endsAt == null ? null : new Date(endsAt)
    if (ends && ends.getTime() <= (starts ?? new Date()).getTime()) throw new InvalidWindow()
    const coupon = await insertCoupon(db, {
      ...rest,
      startsAt: starts,
      endsAt: ends,
      codePrefix: codes?.prefix,
      codeLength: codes?.length,
      validFor: validFor ?? null,
      validUntil: validUntil === undefined ? null : new Date(validUntil),
      creation
    })
    if (coupon === undefined) {
      // Created before with this key: the first answer may have been a 503 after the row committed.
      const created = await findCouponByCreationKey(db, creation!.key)
      if (created === undefined) throw new Error(`coupon with Idempotency-Key ${creation!.key} neither inserted nor found`)
      if (created.creationRequest !== creation!.request) throw new IdempotencyKeyReused()
      // Builds the counters when the first request failed before it did.
      const remaining = await couponStore.load(created)
      return reply.status(201).header('idempotent-replayed', 'true').send(view(created, remaining))
    }
    await couponStore.load(coupon)
    await fastify.consumer?.wake()
    return reply.status(201).send(view(coupon, coupon.totalQuantity))
  })

  fastify.get<{ Params: { couponId: number } }>('/coupons/:couponId', {
    onRequest: fastify.requireShop,
    schema: {
      summary: 'Read a coupon and how many units are left',
      tags: ['coupons'],
      security: [{ bearer: [] }],
      params: couponParams,
      response: { 200: couponBody, ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 404: ['COUPON_NOT_FOUND'], 503: ['REDIS_UNAVAILABLE', 'REDIS_RECONFIGURING'] }) }
    }
  }, async (request) => {
    const coupon = await findCoupon(db, request.params.couponId)
    if (!coupon) throw new CouponNotFound(request.params.couponId)
    return view(coupon, await couponStore.remaining(coupon.id))
  })

  fastify.patch<{ Params: { couponId: number }, Body: { totalQuantity?: number, startsAt?: string, endsAt?: string | null, discount?: Discount | null, metadata?: Metadata | null, returnExpiredToStock?: boolean } }>('/coupons/:couponId', {
    onRequest: fastify.requireAdmin,
    schema: {
      summary: 'Change the stock, the window, discount, metadata or returnExpiredToStock (admin); stock never drops below what is out',
      tags: ['coupons'],
      security: [{ bearer: [] }],
      params: couponParams,
      body: couponChanges,
      response: { 200: couponBody, ...adminErrors, ...errors({ 404: ['COUPON_NOT_FOUND'], 409: ['STOCK_BELOW_ISSUED'], 503: ['REDIS_UNAVAILABLE', 'REDIS_RECONFIGURING', 'DATABASE_UNAVAILABLE', 'RESTORING', 'UPDATE_SCRIPT_FAILED'] }) }
    }
  }, async (request) => {
    const { totalQuantity, startsAt, endsAt, discount, metadata, returnExpiredToStock } = request.body
    checkMetadataKeys(metadata)
    const { coupon, remaining } = await couponStore.change(request.params.couponId, {
      totalQuantity,
      discount,
      metadata,
      returnExpiredToStock,
      startsAt: startsAt === undefined ? undefined : new Date(startsAt),
      endsAt: endsAt === undefined ? undefined : endsAt === null ? null : new Date(endsAt)
    })
    return view(coupon, remaining)
  })

  // Pause and resume: a switch for the claims only (cancels, reads and persistence go on). Both go through
  // the same locked change as a PATCH, so they serialize with it and survive a counter rebuild; sending
  // either twice is harmless.
  for (const [action, paused] of [['pause', true], ['resume', false]] as const) {
    fastify.post<{ Params: { couponId: number } }>(`/coupons/:couponId/${action}`, {
      onRequest: fastify.requireAdmin,
      schema: {
        summary: paused
          ? 'Pause claims (admin): issue requests answer 409 PAUSED until resumed; cancels and persistence go on'
          : 'Resume claims of a paused coupon (admin)',
        tags: ['coupons'],
        security: [{ bearer: [] }],
        params: couponParams,
        response: { 200: couponBody, ...adminErrors, ...errors({ 404: ['COUPON_NOT_FOUND'], 503: ['REDIS_UNAVAILABLE', 'REDIS_RECONFIGURING', 'DATABASE_UNAVAILABLE', 'RESTORING', 'UPDATE_SCRIPT_FAILED'] }) }
      }
    }, async (request) => {
      const { coupon, remaining } = await couponStore.change(request.params.couponId, { paused })
      return view(coupon, remaining)
    })
  }

  fastify.get<{ Querystring: { after: number, limit: number } }>('/coupons', {
    onRequest: fastify.requireAdmin,
    schema: {
      summary: 'List coupons with remaining and persisted counts (admin, paginated by id)',
      tags: ['coupons'],
      security: [{ bearer: [] }],
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: {
          after: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER, default: 0, description: 'return coupons with an id above this' },
          limit: { type: 'integer', minimum: 1, maximum: 200, default: 50 }
        }
      },
      response: {
        200: pageOf(
          { ...couponBody, properties: { ...couponBody.properties, persistedIssued: { type: 'integer' } } },
          { type: ['integer', 'null'], description: 'pass as `after` for the next page; null on the last page' }
        ),
        ...adminErrors
      }
    }
  }, async (request) => {
    const { after, limit } = request.query
    const rows = await listCoupons(db, { afterId: after, limit })
    const items = await Promise.all(rows.map(async (row) => view(row, await couponStore.remaining(row.id))))
    return { items, next: rows.length === limit ? rows[rows.length - 1]!.id : null }
  })
}

export default couponRoutes
