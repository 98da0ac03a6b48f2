// Every error leaves as { statusCode, code, error, message }: the route errors through the error handler,
// the router's own (bad URL, over-long path segment) through frameworkErrors, and those Node raises before
// there is a request at all (timeouts, malformed HTTP, oversized headers) through clientErrorHandler.
import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { isDatabaseUnreachable } from '../db/client.js'
import { DatabaseUnavailable, errorBody as bodyOf, type ErrorBody, HeadersTooLarge, InvalidUrl, MalformedRequest, RequestTimeout, UnsupportedMediaType, UriTooLong } from '../errors.js'

/** The router answers 414 URI_TOO_LONG above this many characters in one (decoded) path segment. */
export const MAX_PARAM_LENGTH = 1024

const internalError: ErrorBody = { statusCode: 500, code: 'INTERNAL_ERROR', error: STATUS_CODES[500]!, message: 'Something went wrong on our side; it has been logged. Retry later.' }

/** Fastify's own errors that have a catalog code of ours. */
function fromFramework (err: FastifyError): FastifyError {
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': return new UnsupportedMediaType()
    case 'FST_ERR_BAD_URL': return new InvalidUrl()
    case 'FST_ERR_MAX_PARAM_LENGTH': return new UriTooLong(MAX_PARAM_LENGTH)
    default: return err
  }
}

/**
 * Server option `frameworkErrors`: the router calls it for a URL it cannot decode and for a path segment over
 * MAX_PARAM_LENGTH, with a reply whose context has none of the app's handlers, so the body is built here.
 */
export function frameworkErrors (error: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  const err = fromFramework(error)
  const statusCode = typeof err.statusCode === 'number' && err.statusCode >= 400 ? err.statusCode : 500
  if (statusCode >= 500) request.log.error({ err: error }, 'router failed')
  reply.status(statusCode).send(statusCode === 500 ? internalError : bodyOf(err, statusCode))
}

/**
 * Server option `clientErrorHandler`: Node found no request it could hand to Fastify (request or header
 * timeout, malformed HTTP, headers over the limit). Writes the answer on the socket and closes it.
 */
export function clientErrorHandler (this: FastifyInstance, err: Error & { code?: string }, socket: Socket) {
  // The peer is gone: nothing to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const error = err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
    ? new RequestTimeout()
    : err.code === 'HPE_HEADER_OVERFLOW' ? new HeadersTooLarge() : new MalformedRequest()
  const statusCode = error.statusCode!
  this.log.debug({ err }, 'client error')
  // As Node does without a handler: answer only when no response has started on this socket (a request
  // timeout can strike while its answer is being written); the property is Node's, not public.
  const current = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage
  if (socket.writable && !current?.headersSent) {
    const body = JSON.stringify(bodyOf(error, statusCode))
    socket.end(`HTTP/1.1 ${statusCode} ${STATUS_CODES[statusCode]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`, () => socket.destroy())
    // A peer that reads nothing would keep the write (and the socket) pending forever.
    setTimeout(() => socket.destroy(), 1000).unref()
  } else {
    socket.destroy()
  }
}

export default fp(async function errorHandlerPlugin (fastify) {
  fastify.setErrorHandler((thrown: FastifyError, request, reply) => {
    if (thrown.validation) {
      return reply.status(400).send({ statusCode: 400, code: 'INVALID_REQUEST', error: STATUS_CODES[400], message: thrown.message })
    }
    if (isDatabaseUnreachable(thrown)) {
      request.log.error({ err: thrown }, 'database unreachable')
      const unavailable = new DatabaseUnavailable()
      return reply.status(503).send(bodyOf(unavailable, 503))
    }
    const err = fromFramework(thrown)
    const statusCode = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500
    // SHUTTING_DOWN is what every request arriving during a shutdown gets: expected, and not worth a stack
    // trace per request while the process drains.
    if (statusCode >= 500 && err.code !== 'SHUTTING_DOWN') {
      request.log.error({ err }, 'request failed')
    }
    if (statusCode === 500) {
      return reply.status(500).send(internalError)
    }
    return reply.status(statusCode).send(bodyOf(err, statusCode))
  })

  fastify.setNotFoundHandler((request, reply) => {
    reply.status(404).send({ statusCode: 404, code: 'ROUTE_NOT_FOUND', error: STATUS_CODES[404], message: `No route ${request.method} ${request.url}. See /docs for the API.` })
  })
}, { name: 'error-handler' })
