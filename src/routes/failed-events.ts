// Admin view of stream entries the consumer could not persist, and a way to retry one.
import type { FastifyPluginAsync } from 'fastify'
import { findFailedEvent, listFailedEvents, markFailedEventRetried } from '../db/queries/issues.js'
import { decodeEntry, isEvent } from '../stream/events.js'
import { PersistBatch } from '../persistence/persist-batch.js'
import { FailedEventNotFound, FailedEventStillFailing } from '../errors.js'
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
    retriedAt: { type: ['string', 'null'], format: 'date-time' }
  }
} as const

const failedEventRoutes: FastifyPluginAsync = async (fastify) => {
  const { db, keys } = fastify
  const persister = new PersistBatch(db)

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
      // Above the maximum the id reached Postgres as a bigint out of range (500).
      params: { type: 'object', required: ['id'], additionalProperties: false, properties: { id: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER } } },
      response: {
        200: { type: 'object', properties: { id: { type: 'integer' }, inserted: { type: 'integer' } } },
        ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 404: ['FAILED_EVENT_NOT_FOUND'], 422: ['FAILED_EVENT_STILL_FAILING'] })
      }
    }
  }, async (request) => {
    const row = await findFailedEvent(db, request.params.id)
    if (!row) throw new FailedEventNotFound(request.params.id)
    const payload = row.payload as Record<string, string>
    const fields = Object.entries(payload).flat()
    const entry = decodeEntry(row.streamKey, keys.couponIdOfStream(row.streamKey), row.streamId, fields)
    if (!isEvent(entry)) throw new FailedEventStillFailing(row.id, entry.error)
    const outcome = await persister.persist([entry], [])
    if (outcome.failed > 0) throw new FailedEventStillFailing(row.id, 'it was rejected again')
    await markFailedEventRetried(db, row.id)
    return { id: row.id, inserted: outcome.inserted }
  })
}

export default failedEventRoutes
