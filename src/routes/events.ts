// GET /admin/events: the outbox as a pull feed (src/events/feed.ts explains the order).
import type { FastifyPluginAsync } from 'fastify'
import { decodeFeedCursor, encodeFeedCursor, eventsPage } from '../events/feed.js'
import { EVENT_TYPES } from '../events/outbox.js'
import { databaseFailure, EventsDisabled, InvalidEventCursor } from '../errors.js'
import { dateTime, errors } from './schemas.js'

const eventRoutes: FastifyPluginAsync = async (fastify) => {
  const { db } = fastify

  fastify.get<{ Querystring: { after?: string, limit: number } }>('/admin/events', {
    onRequest: fastify.requireAdmin,
    schema: {
      summary: 'The events as a pull feed (admin): the same events the webhooks get, in an order no later commit can slip behind',
      tags: ['webhooks'],
      security: [{ bearer: [] }],
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: {
          after: { type: 'string', maxLength: 64, description: 'the `next` of the previous page; without it the feed starts at its first event' },
          limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 }
        }
      },
      response: {
        200: {
          type: 'object',
          required: ['items', 'next'],
          properties: {
            items: {
              type: 'array',
              items: {
                type: 'object',
                required: ['id', 'type', 'createdAt', 'data'],
                properties: { id: { type: 'string' }, type: { type: 'string', enum: EVENT_TYPES }, createdAt: dateTime, data: { type: 'object', additionalProperties: true } }
              }
            },
            next: { type: ['string', 'null'], description: 'pass as `after` to poll on (also when this page was empty); null only when the feed has no event yet' }
          }
        },
        ...errors({ 400: ['INVALID_REQUEST', 'INVALID_CURSOR'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 409: ['EVENTS_DISABLED'], 503: ['DATABASE_UNAVAILABLE'] })
      }
    }
  }, async (request) => {
    if (!fastify.eventsEnabled) throw new EventsDisabled()
    const { after: text, limit } = request.query
    const after = text === undefined ? undefined : decodeFeedCursor(text)
    if (after === null) throw new InvalidEventCursor()
    const page = await eventsPage(db, { after, limit }).catch((err) => { throw databaseFailure(err) })
    // A well-formed cursor this feed cannot have handed out (at or past what any page has looked at).
    if (page.beyondHorizon) throw new InvalidEventCursor()
    const last = page.items[page.items.length - 1]
    return {
      items: page.items.map(({ cursor, ...event }) => event),
      next: last ? encodeFeedCursor(last.cursor) : (text ?? null)
    }
  })
}

export default eventRoutes
