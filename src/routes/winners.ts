// The winners list: GET /admin/coupons/:couponId/issues (JSON, cursor-paginated) and .../issues.csv
// (streamed page by page, so 100,000 rows never sit in memory at once).
import { Readable } from 'node:stream'
import type { FastifyPluginAsync } from 'fastify'
import { findCoupon, type Coupon } from '../db/queries/coupons.js'
import { codeOf } from '../issuing/codes.js'
import { issuesPage, type IssueCursor, type IssueStatus, type WinnerRow } from '../db/queries/issues.js'
import type { Db } from '../db/client.js'
import { CouponNotFound, InvalidCursor } from '../errors.js'
import { couponParams, dateTime, errors, pageOf } from './schemas.js'

const CSV_PAGE = 5000
const MAX_DATE_MS = 8.64e15

const statusOf = (row: WinnerRow): IssueStatus => row.revokedAt === null ? 'active' : 'revoked'

/** Opaque to clients: base64url of "issuedAtMs.id". */
const encodeCursor = (row: WinnerRow) => Buffer.from(`${row.issuedAt.getTime()}.${row.id}`).toString('base64url')
function decodeCursor (cursor: string): IssueCursor {
  const match = /^(\d{1,16})\.(\d{1,16})$/.exec(Buffer.from(cursor, 'base64url').toString('latin1'))
  const issuedAtMs = Number(match?.[1])
  const id = Number(match?.[2])
  // Only moments a Date can hold (a larger one made toISOString throw: a 500 for a hand-made cursor).
  if (!match || issuedAtMs > MAX_DATE_MS || !Number.isSafeInteger(id)) throw new InvalidCursor()
  return { issuedAtMs, id }
}

/**
 * One CSV field (RFC 4180). A field a spreadsheet would read as a formula (=, +, -, @ first) gets a
 * leading apostrophe (OWASP's advice against CSV injection): a userId may start with '-' or '@'.
 */
function csvField (value: string): string {
  const safe = /^[=+\-@\t\r]/.test(value) ? `'${value}` : value
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe
}

/** The unit's code: persisted, or derived for a row persisted before codes existed (it follows from the unit). */
const codeOfRow = (coupon: Coupon, row: WinnerRow) => row.code ?? codeOf({ couponId: coupon.id, ...coupon }, row.userId, row.claim)

const CSV_HEADER = 'code,user_id,claim,issued_at,status,revoked_at,revoke_reason,redeemed_at,order_id\r\n'
const csvLine = (coupon: Coupon, row: WinnerRow) =>
  [codeOfRow(coupon, row), csvField(row.userId), String(row.claim), row.issuedAt.toISOString(), statusOf(row), row.revokedAt?.toISOString() ?? '',
    row.revokeReason ?? '', row.redeemedAt?.toISOString() ?? '', csvField(row.orderId ?? '')].join(',') + '\r\n'

async function * csvRows (db: Db, coupon: Coupon, status: IssueStatus | undefined): AsyncGenerator<string> {
  yield CSV_HEADER
  let after: IssueCursor | undefined
  for (;;) {
    const rows = await issuesPage(db, coupon.id, { status, after, limit: CSV_PAGE })
    if (rows.length > 0) yield rows.map((row) => csvLine(coupon, row)).join('')
    if (rows.length < CSV_PAGE) return
    const last = rows[rows.length - 1]!
    after = { issuedAtMs: last.issuedAt.getTime(), id: last.id }
  }
}

const statusQuery = { type: 'string', enum: ['active', 'revoked'], description: 'only active (not cancelled) or only revoked issues' } as const

const winnersRoutes: FastifyPluginAsync = async (fastify) => {
  const { db } = fastify
  const mustExist = async (couponId: number) => {
    const coupon = await findCoupon(db, couponId)
    if (!coupon) throw new CouponNotFound(couponId)
    return coupon
  }
  const listErrors = errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 404: ['COUPON_NOT_FOUND'], 503: ['DATABASE_UNAVAILABLE'] })

  fastify.get<{ Params: { couponId: number }, Querystring: { status?: IssueStatus, after?: string, limit: number } }>('/admin/coupons/:couponId/issues', {
    onRequest: fastify.requireAdmin,
    schema: {
      summary: 'The winners list (admin): persisted issues in issue order, cursor-paginated',
      tags: ['admin'],
      security: [{ bearer: [] }],
      params: couponParams,
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: {
          status: statusQuery,
          after: { type: 'string', maxLength: 64, description: 'the `next` of the previous page' },
          limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 }
        }
      },
      response: {
        200: pageOf(
          {
            type: 'object',
            required: ['code', 'userId', 'claim', 'issuedAt', 'status', 'revokedAt', 'revokeReason', 'redeemedAt', 'orderId'],
            properties: {
              code: { type: 'string' },
              userId: { type: 'string' },
              claim: { type: 'integer' },
              issuedAt: dateTime,
              status: { type: 'string', enum: ['active', 'revoked'] },
              revokedAt: { type: ['string', 'null'], format: 'date-time' },
              revokeReason: { type: ['string', 'null'], enum: ['cancelled', 'expired', null], description: 'why the unit went back: a cancel, or returned to stock at expiry' },
              redeemedAt: { type: ['string', 'null'], format: 'date-time', description: 'when its code was redeemed (null: not redeemed, or rolled back)' },
              orderId: { type: ['string', 'null'], description: 'the order its code is redeemed for' }
            }
          },
          { type: ['string', 'null'], description: 'pass as `after` for the next page; null on the last page' }
        ),
        ...listErrors
      }
    }
  }, async (request) => {
    const { couponId } = request.params
    const { status, after, limit } = request.query
    const cursor = after === undefined ? undefined : decodeCursor(after)
    const coupon = await mustExist(couponId)
    const rows = await issuesPage(db, couponId, { status, after: cursor, limit })
    return {
      items: rows.map((row) => ({
        code: codeOfRow(coupon, row),
        userId: row.userId,
        claim: row.claim,
        issuedAt: row.issuedAt,
        status: statusOf(row),
        revokedAt: row.revokedAt,
        revokeReason: row.revokeReason,
        redeemedAt: row.redeemedAt,
        orderId: row.orderId
      })),
      next: rows.length === limit ? encodeCursor(rows[rows.length - 1]!) : null
    }
  })

  fastify.get<{ Params: { couponId: number }, Querystring: { status?: IssueStatus } }>('/admin/coupons/:couponId/issues.csv', {
    onRequest: fastify.requireAdmin,
    schema: {
      summary: 'The winners list as CSV (admin), streamed: code, user_id, claim, issued_at, status, revoked_at, revoke_reason, redeemed_at, order_id',
      tags: ['admin'],
      security: [{ bearer: [] }],
      params: couponParams,
      querystring: { type: 'object', additionalProperties: false, properties: { status: statusQuery } },
      response: { 200: { type: 'string', description: 'text/csv' }, ...listErrors }
    }
  }, async (request, reply) => {
    const { couponId } = request.params
    const coupon = await mustExist(couponId)
    reply.type('text/csv; charset=utf-8').header('content-disposition', `attachment; filename="coupon-${couponId}-issues.csv"`)
    return reply.send(Readable.from(csvRows(db, coupon, request.query.status)))
  })
}

export default winnersRoutes
