// Admin webhooks: create (the signing secret is shown once), list, read, delete, the deliveries of one
// and a redeliver. Deliveries themselves are sent by src/webhooks/delivery-loop.ts.
import type { FastifyPluginAsync } from 'fastify'
import { countWebhooks, createWebhook, deleteWebhook, findWebhook, listDeliveries, listWebhooks, redeliver, type DeliveryRow, type WebhookRow } from '../db/queries/webhooks.js'
import { EVENT_TYPES } from '../events/outbox.js'
import { databaseFailure, DeliveryInFlight, EventsDisabled, DeliveryNotFound, InvalidCursor, InvalidWebhookUrl, TooManyWebhooks, WebhookNotFound } from '../errors.js'
import { newSecret } from '../webhooks/signature.js'
import { dateTime, errors, pageOf } from './schemas.js'

export const MAX_URL_LENGTH = 2048
/** Every event fans out to every subscribed webhook in the consumer's statement: keep that bounded. */
export const MAX_WEBHOOKS = 100

/**
 * The URL shape an admin may register. Any host is allowed, loopback and private networks included
 * (a shop's receivers often live there; the admin sets them, not a client), but only http(s), no
 * credentials (they would sit in the database and the logs), no fragment (never sent anyway).
 */
export function checkWebhookUrl (text: string): string {
  if (text.length > MAX_URL_LENGTH) throw new InvalidWebhookUrl('too long')
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused
  if (/[\s\u0000-\u001f\u007f]/.test(text)) throw new InvalidWebhookUrl('whitespace or control characters')
  let url: URL
  try {
    url = new URL(text)
  } catch {
    throw new InvalidWebhookUrl('not a URL')
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidWebhookUrl(`scheme ${url.protocol.slice(0, 20)} is not allowed`)
  if (url.username !== '' || url.password !== '') throw new InvalidWebhookUrl('credentials in the URL')
  if (url.hostname === '') throw new InvalidWebhookUrl('no host')
  if (url.hash !== '' || text.includes('#')) throw new InvalidWebhookUrl('a fragment')
  // WHATWG parsing repairs 'http:///host', 'http:\\host' and 'HTTP:host' into a URL with a host: what
  // was written is not what would be called, so only the plain spelling is accepted.
  if (!/^https?:\/\/[^/\\?#]/i.test(text)) throw new InvalidWebhookUrl('not of the form http(s)://host/...')
  return url.toString()
}

const webhook = {
  type: 'object',
  required: ['id', 'url', 'events', 'createdAt'],
  properties: { id: { type: 'integer' }, url: { type: 'string' }, events: { type: 'array', items: { type: 'string', enum: EVENT_TYPES } }, createdAt: dateTime }
} as const

const delivery = {
  type: 'object',
  required: ['id', 'eventId', 'eventType', 'status', 'attempts', 'nextAttemptAt', 'lastAttemptAt', 'lastStatus', 'lastError', 'deliveredAt', 'createdAt'],
  properties: {
    id: { type: 'integer' },
    eventId: { type: 'string' },
    eventType: { type: 'string' },
    status: { type: 'string', enum: ['pending', 'delivered', 'failed', 'cancelled'] },
    attempts: { type: 'integer' },
    nextAttemptAt: { type: ['string', 'null'], format: 'date-time', description: 'when the next attempt is due (pending only)' },
    lastAttemptAt: { type: ['string', 'null'], format: 'date-time' },
    lastStatus: { type: ['integer', 'null'], description: "the receiver's HTTP status of the last attempt; null when it never answered" },
    lastError: { type: ['string', 'null'] },
    deliveredAt: { type: ['string', 'null'], format: 'date-time' },
    createdAt: dateTime
  }
} as const

const id = { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER } as const
const webhookParams = { type: 'object', required: ['id'], additionalProperties: false, properties: { id } } as const
const deliveryParams = { type: 'object', required: ['id', 'deliveryId'], additionalProperties: false, properties: { id, deliveryId: id } } as const

const toWebhook = (row: WebhookRow) => ({ id: row.id, url: row.url, events: row.eventTypes, createdAt: row.createdAt })
const encodeCursor = (row: DeliveryRow) => Buffer.from(String(row.id)).toString('base64url')
function decodeCursor (text: string): number {
  const decoded = Buffer.from(text, 'base64url').toString('latin1')
  const value = Number(decoded)
  if (!/^[1-9]\d{0,15}$/.test(decoded) || !Number.isSafeInteger(value) || Buffer.from(decoded).toString('base64url') !== text) throw new InvalidCursor()
  return value
}

const webhookRoutes: FastifyPluginAsync = async (fastify) => {
  const { db } = fastify
  const common = { onRequest: fastify.requireAdmin }
  const doc = { tags: ['webhooks'], security: [{ bearer: [] }] }
  const guarded = <T>(work: () => Promise<T>) => work().catch((err) => { throw databaseFailure(err) })

  fastify.post<{ Body: { url: string, events: string[] } }>('/admin/webhooks', {
    ...common,
    schema: {
      ...doc,
      summary: 'Register a webhook (admin): 201 with its signing secret, shown this once',
      body: {
        type: 'object',
        required: ['url', 'events'],
        additionalProperties: false,
        properties: {
          url: { type: 'string', minLength: 1, maxLength: MAX_URL_LENGTH, description: 'http(s) URL; loopback and private hosts are allowed' },
          events: { type: 'array', minItems: 1, maxItems: EVENT_TYPES.length, uniqueItems: true, items: { type: 'string', enum: EVENT_TYPES } }
        }
      },
      response: {
        201: { ...webhook, required: [...webhook.required, 'secret'], properties: { ...webhook.properties, secret: { type: 'string', description: 'signs every delivery (Couponrush-Signature); never shown again' } } },
        ...errors({ 400: ['INVALID_REQUEST', 'INVALID_WEBHOOK_URL'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 409: ['TOO_MANY_WEBHOOKS', 'EVENTS_DISABLED'], 503: ['DATABASE_UNAVAILABLE'] })
      }
    }
  }, async (request, reply) => {
    if (!fastify.eventsEnabled) throw new EventsDisabled()
    const url = checkWebhookUrl(request.body.url)
    const secret = newSecret()
    const row = await guarded(async () => {
      // Admin-only and rare: a concurrent create may pass the count together with this one, by a few.
      const count = await countWebhooks(db)
      if (count >= MAX_WEBHOOKS) throw new TooManyWebhooks(count)
      return createWebhook(db, { url, eventTypes: request.body.events, secret })
    })
    reply.code(201)
    return { ...toWebhook(row), secret }
  })

  fastify.get('/admin/webhooks', {
    ...common,
    schema: {
      ...doc,
      summary: 'The webhooks (admin), newest first; secrets are not shown',
      response: { 200: { type: 'object', required: ['items'], properties: { items: { type: 'array', items: webhook } } }, ...errors({ 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 503: ['DATABASE_UNAVAILABLE'] }) }
    }
  }, async () => ({ items: (await guarded(() => listWebhooks(db))).map(toWebhook) }))

  fastify.get<{ Params: { id: number } }>('/admin/webhooks/:id', {
    ...common,
    schema: {
      ...doc,
      summary: 'One webhook (admin); its secret is not shown',
      params: webhookParams,
      response: { 200: webhook, ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 404: ['WEBHOOK_NOT_FOUND'], 503: ['DATABASE_UNAVAILABLE'] }) }
    }
  }, async (request) => {
    const row = await guarded(() => findWebhook(db, request.params.id))
    if (!row) throw new WebhookNotFound(request.params.id)
    return toWebhook(row)
  })

  fastify.delete<{ Params: { id: number } }>('/admin/webhooks/:id', {
    ...common,
    schema: {
      ...doc,
      summary: 'Delete a webhook (admin): nothing new is sent to it, waiting deliveries are cancelled, the history stays',
      params: webhookParams,
      response: { 204: { type: 'null' }, ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 404: ['WEBHOOK_NOT_FOUND'], 503: ['DATABASE_UNAVAILABLE'] }) }
    }
  }, async (request, reply) => {
    if (!await guarded(() => deleteWebhook(db, request.params.id))) throw new WebhookNotFound(request.params.id)
    reply.code(204)
  })

  fastify.get<{ Params: { id: number }, Querystring: { status?: string, after?: string, limit: number } }>('/admin/webhooks/:id/deliveries', {
    ...common,
    schema: {
      ...doc,
      summary: "A webhook's deliveries (admin), newest first, cursor-paginated",
      params: webhookParams,
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: {
          status: { type: 'string', enum: ['pending', 'delivered', 'failed', 'cancelled'] },
          after: { type: 'string', maxLength: 64, description: 'the `next` of the previous page' },
          limit: { type: 'integer', minimum: 1, maximum: 500, default: 100 }
        }
      },
      response: {
        200: pageOf(delivery, { type: ['string', 'null'] }),
        ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 404: ['WEBHOOK_NOT_FOUND'], 503: ['DATABASE_UNAVAILABLE'] })
      }
    }
  }, async (request) => {
    const { status, after, limit } = request.query
    const before = after === undefined ? undefined : decodeCursor(after)
    const items = await guarded(async () => {
      if (!await findWebhook(db, request.params.id)) throw new WebhookNotFound(request.params.id)
      return listDeliveries(db, request.params.id, { status, before, limit })
    })
    return { items, next: items.length === limit ? encodeCursor(items[items.length - 1]!) : null }
  })

  fastify.post<{ Params: { id: number, deliveryId: number } }>('/admin/webhooks/:id/deliveries/:deliveryId/redeliver', {
    ...common,
    schema: {
      ...doc,
      summary: 'Send a delivery again now (admin), whatever its state, with a fresh retry window; the event id stays the same',
      params: deliveryParams,
      response: {
        202: delivery,
        ...errors({ 400: ['INVALID_REQUEST'], 401: ['UNAUTHORIZED'], 403: ['FORBIDDEN'], 404: ['WEBHOOK_NOT_FOUND', 'DELIVERY_NOT_FOUND'], 409: ['DELIVERY_IN_FLIGHT'], 503: ['DATABASE_UNAVAILABLE'] })
      }
    }
  }, async (request, reply) => {
    const { id: webhookId, deliveryId } = request.params
    const outcome = await guarded(async () => {
      if (!await findWebhook(db, webhookId)) throw new WebhookNotFound(webhookId)
      return redeliver(db, webhookId, deliveryId)
    })
    if ('missing' in outcome) throw new DeliveryNotFound(webhookId, deliveryId, webhookId)
    if ('inFlight' in outcome) throw new DeliveryInFlight(deliveryId)
    reply.code(202)
    return outcome.delivery
  })
}

export default webhookRoutes
