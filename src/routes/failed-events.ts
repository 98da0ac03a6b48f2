// Admin view of stream entries the consumer could not persist, and a way to retry one.
import type { FastifyPluginAsync } from 'fastify'
import { findFailedEvent, listFailedEvents, markFailedEventDiscarded, markFailedEventRetried } from '../db/queries/issues.js'
import { decodeEntry, isEvent, type CouponEvent } from '../stream/events.js'
import { PersistBatch } from '../persistence/persist-batch.js'
import { databaseFailure, FailedEventNotDiscardable, FailedEventNotFound, FailedEventSettled, FailedEventStillFailing } from '../errors.js'
import type { Db } from '../db/client.js'
import { errors } from './schemas.js'

const failedEvent = {
  type: 'object',
  properties: {
    id: { type: 'integer' },
    streamKey: { type: 'string' },
    streamId: { type: 'string' },
    payload: { type: 'object', additionalProperties: { type: 'string' } },
    error: { type: 'string' },
    deliveries: { type: 'integer' },
    failedAt: { type: 'string', format: 'date-time' },
    retriedAt: { type: ['string', 'null'], format: 'date-time' },
    discardedAt: { type: ['string', 'null'], format: 'date-time' },
    discardReason: { type: ['string', 'null'] }
  }
} as const

// Above the maximum the id reached Postgres as a bigint out of range (500).
/** How a refused discard names the entry. */
const ENTRY_KINDS: Record<CouponEvent['type'], string> = { issue: 'issue', revoke: 'cancel', revokeUnit: 'return to stock at expiry', redeem: 'redemption', rollback: 'redemption rollback' }

const failedEventParams = { type: 'object', required: ['id'], additionalProperties: false, properties: { id: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER } } } as const

const failedEventRoutes: FastifyPluginAsync = async (fastify) => {
  const { db, keys, couponStore } = fastify
  const persister = new PersistBatch(db, { announce: fastify.eventsEnabled })

  fastify.get<{ Querystring: { includeRetried: boolean, limit: number } }>('/admin/failed-events', {
    onRequest: fastify.requireAdmin,
    schema: {
      summary: 'Entries parked by the consumer (admin)',
      tags: ['admin'],
      security: [{ bearer: [] }],
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: { includeRetried: { type: 'boolean', default: false }, limit: { type: 'integer', minimum: 1, maximum: 500, default: 100 } }
      },
      response: { 200: { type: 'object', properties: { items: { type: 'array', items: failedEvent } } }, ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'] }) }
    }
  }, async (request) => ({ items: await listFailedEvents(db, request.query) }))

  fastify.post<{ Params: { id: number } }>('/admin/failed-events/:id/retry', {
    onRequest: fastify.requireAdmin,
    schema: {
      summary: 'Persist a parked entry again, e.g. after fixing its cause (admin)',
      tags: ['admin'],
      security: [{ bearer: [] }],
      params: failedEventParams,
      response: {
        200: { type: 'object', properties: { id: { type: 'integer' }, inserted: { type: 'integer' } } },
        ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 404: ['FAILED_EVENT_NOT_FOUND'], 409: ['FAILED_EVENT_SETTLED'], 422: ['FAILED_EVENT_STILL_FAILING'] })
      }
    }
  }, async (request) => {
    // The parked row stays locked while it is retried, so a discard of the same entry cannot run meanwhile.
    return db.transaction(async (tx) => {
      const row = await findFailedEvent(tx as unknown as Db, request.params.id, true)
      if (!row) throw new FailedEventNotFound(request.params.id)
      if (row.discardedAt) throw new FailedEventSettled(row.id, 'discarded')
      const payload = row.payload as Record<string, string>
      const entry = decodeEntry(row.streamKey, keys.couponIdOfStream(row.streamKey), row.streamId, Object.entries(payload).flat())
      if (!isEvent(entry)) throw new FailedEventStillFailing(row.id, entry.error)
      const outcome = await persister.persist([entry], [])
      if (outcome.failed > 0) throw new FailedEventStillFailing(row.id, 'it was rejected again')
      await markFailedEventRetried(tx as unknown as Db, row.id)
      return { id: row.id, inserted: outcome.inserted }
    }).catch((err) => { throw databaseFailure(err) })
  })

  fastify.post<{ Params: { id: number }, Body: { reason?: string } | undefined }>('/admin/failed-events/:id/discard', {
    onRequest: fastify.requireAdmin,
    schema: {
      summary: 'Give a parked issue (or an entry that cannot be decoded) up for good (admin): its unit returns to stock and its holder loses it, unless a cancel returned it already',
      tags: ['admin'],
      security: [{ bearer: [] }],
      params: failedEventParams,
      body: { type: ['object', 'null'], additionalProperties: false, properties: { reason: { type: 'string', minLength: 1, maxLength: 500, pattern: '^[^\\u0000-\\u001f]*$' } } },
      response: {
        200: { type: 'object', properties: { id: { type: 'integer' }, unitReturned: { type: 'boolean' }, discardedAt: { type: 'string', format: 'date-time' } } },
        ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 404: ['FAILED_EVENT_NOT_FOUND'], 409: ['FAILED_EVENT_SETTLED', 'FAILED_EVENT_NOT_DISCARDABLE'], 503: ['REDIS_UNAVAILABLE', 'REDIS_RECONFIGURING', 'DATABASE_UNAVAILABLE', 'RESTORING'] })
      }
    }
  }, async (request) => {
    // Locked like a retry. Redis first (idempotent per entry id), Postgres second: a failure in between
    // is repaired by sending the discard again, and a rebuild meanwhile still counts the entry as issued
    // (it undersells, never oversells).
    return db.transaction(async (tx) => {
      const row = await findFailedEvent(tx as unknown as Db, request.params.id, true)
      if (!row) throw new FailedEventNotFound(request.params.id)
      if (row.retriedAt) throw new FailedEventSettled(row.id, 'retried into a row')
      if (row.discardedAt) return { id: row.id, unitReturned: false, discardedAt: row.discardedAt }
      const entry = decodeEntry(row.streamKey, keys.couponIdOfStream(row.streamKey), row.streamId, Object.entries(row.payload as Record<string, string>).flat())
      // Only an issue can be given up: discardIssue.lua undoes it in Redis. A cancel, a return at expiry,
      // a redemption or a rollback changed Redis when it was answered and nothing undoes that here.
      if (isEvent(entry) && entry.type !== 'issue') throw new FailedEventNotDiscardable(row.id, ENTRY_KINDS[entry.type])
      let unitReturned = false
      if (isEvent(entry) && entry.type === 'issue') {
        unitReturned = await couponStore.discardParkedIssue(entry.couponId, { userId: entry.userId, claim: entry.claim, entryId: entry.id }) === 'returned'
      }
      const reason = request.body?.reason ?? null
      const discardedAt = await markFailedEventDiscarded(tx as unknown as Db, row.id, reason)
      request.log.warn({ failedEvent: row.id, streamKey: row.streamKey, streamId: row.streamId, unitReturned, reason }, 'admin discarded a parked entry')
      return { id: row.id, unitReturned, discardedAt }
    }).catch((err) => { throw databaseFailure(err) })
  })
}

export default failedEventRoutes
