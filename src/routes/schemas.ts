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

export const couponBody = {
  type: 'object',
  required: ['id', 'name', 'totalQuantity', 'perUserLimit', 'startsAt', 'endsAt'],
  properties: {
    id: { type: 'integer' },
    name: { type: 'string' },
    totalQuantity: { type: 'integer' },
    perUserLimit: { type: 'integer' },
    remaining: { type: 'integer' },
    startsAt: dateTime,
    endsAt: { type: ['string', 'null'], format: 'date-time' },
    createdAt: dateTime
  }
} as const
