// JSON schemas shared by the routes: validation on the way in, fast serialization on the way out.
import { USER_ID_PATTERN } from '../stream/events.js'

export const errorBody = {
  type: 'object',
  required: ['statusCode', 'code', 'error', 'message'],
  properties: {
    statusCode: { type: 'integer' },
    code: { type: 'string' },
    error: { type: 'string' },
    message: { type: 'string' }
  }
} as const

/** A page of a cursor-paginated list: `items`, and `next` to pass back for the following page (null on the last). */
export function pageOf<I extends object, N extends object> (items: I, next: N) {
  return { type: 'object', required: ['items', 'next'], properties: { items: { type: 'array', items }, next } } as const
}

/** Response schemas for the given statuses, each documented with the codes it can carry. */
export function errors (byStatus: Record<number, string[]>) {
  return Object.fromEntries(Object.entries(byStatus).map(([status, codes]) => [status, { ...errorBody, description: codes.join(', ') }]))
}

export const couponId = { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER } as const
export const userId = { type: 'string', minLength: 1, maxLength: 128, pattern: USER_ID_PATTERN.source } as const
export const dateTime = { type: 'string', format: 'date-time' } as const

export const couponParams = {
  type: 'object',
  required: ['couponId'],
  additionalProperties: false,
  properties: { couponId }
} as const

export const couponUserParams = {
  type: 'object',
  required: ['couponId', 'userId'],
  additionalProperties: false,
  properties: { couponId, userId }
} as const

export const idempotencyHeaders = {
  type: 'object',
  properties: {
    'idempotency-key': { type: 'string', minLength: 1, maxLength: 255, pattern: '^[A-Za-z0-9._:-]+$', description: 'Makes a retry replay the first outcome instead of acting twice.' }
  }
} as const

/** What a coupon is worth at checkout. Amounts are integers in the currency's minor units (cents), as Stripe's. */
export const discount = {
  oneOf: [
    {
      type: 'object',
      required: ['type', 'value'],
      additionalProperties: false,
      properties: { type: { const: 'percent' }, value: { type: 'number', minimum: 0.01, maximum: 100 } }
    },
    {
      type: 'object',
      required: ['type', 'value', 'currency'],
      additionalProperties: false,
      properties: {
        type: { const: 'amount' },
        value: { type: 'integer', minimum: 1, maximum: 1_000_000_000 },
        currency: { type: 'string', pattern: '^[A-Z]{3}$', description: 'ISO 4217 code, e.g. EUR' }
      }
    }
  ]
} as const

/** Metadata keys: checked in the handler (OpenAPI 3.0 has no propertyNames). */
export const METADATA_KEY = /^[A-Za-z0-9_.-]{1,40}$/

/** The shop's own data about the campaign: at most 20 keys (METADATA_KEY), scalar values, echoed as given. */
export const metadata = {
  type: 'object',
  maxProperties: 20,
  additionalProperties: {
    anyOf: [{ type: 'string', maxLength: 500 }, { type: 'number' }, { type: 'boolean' }, { type: 'null' }]
  }
} as const

/** How discount and metadata leave: as stored (null when not set). */
const discountOut = {
  type: ['object', 'null'],
  properties: { type: { type: 'string', enum: ['percent', 'amount'] }, value: { type: 'number' }, currency: { type: 'string' } }
} as const
const metadataOut = { type: ['object', 'null'], additionalProperties: true } as const

export const couponBody = {
  type: 'object',
  required: ['id', 'name', 'totalQuantity', 'perUserLimit', 'startsAt', 'endsAt', 'paused'],
  properties: {
    id: { type: 'integer' },
    name: { type: 'string' },
    totalQuantity: { type: 'integer' },
    perUserLimit: { type: 'integer' },
    remaining: { type: 'integer' },
    startsAt: dateTime,
    endsAt: { type: ['string', 'null'], format: 'date-time' },
    paused: { type: 'boolean', description: 'while true, issue requests answer 409 PAUSED' },
    discount: discountOut,
    metadata: metadataOut,
    codes: {
      type: 'object',
      required: ['prefix', 'length'],
      properties: { prefix: { type: 'string', description: "'' = none" }, length: { type: 'integer' } }
    },
    validFor: { type: ['string', 'null'], description: 'ISO 8601 duration a code stays redeemable after its issue' },
    validUntil: { type: ['string', 'null'], format: 'date-time' },
    returnExpiredToStock: { type: 'boolean', description: 'expired, unredeemed units go back to stock until the campaign ends' },
    createdAt: dateTime
  }
} as const
