// Every error leaves as { statusCode, code, error, message }.
import { STATUS_CODES } from 'node:http'
import fp from 'fastify-plugin'
import type { FastifyError } from 'fastify'
import { isDatabaseUnreachable } from '../db/client.js'
import { DatabaseUnavailable } from '../errors.js'

/** The router answers 414 above this many characters in one (decoded) path segment. */
export const MAX_PARAM_LENGTH = 1024

export default fp(async function errorHandlerPlugin (fastify) {
  fastify.setErrorHandler((err: FastifyError, request, reply) => {
    if (err.validation) {
      return reply.status(400).send({ statusCode: 400, code: 'INVALID_REQUEST', error: STATUS_CODES[400], message: err.message })
    }
    if (isDatabaseUnreachable(err)) {
      request.log.error({ err }, 'database unreachable')
      const unavailable = new DatabaseUnavailable()
      return reply.status(503).send({ statusCode: 503, code: unavailable.code, error: STATUS_CODES[503], message: unavailable.message })
    }
    const statusCode = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500
    if (statusCode >= 500) {
      request.log.error({ err }, 'request failed')
    }
    if (statusCode === 500) {
      return reply.status(500).send({ statusCode: 500, code: 'INTERNAL_ERROR', error: STATUS_CODES[500], message: 'Something went wrong on our side; it has been logged. Retry later.' })
    }
    return reply.status(statusCode).send({ statusCode, code: err.code ?? `HTTP_${statusCode}`, error: STATUS_CODES[statusCode], message: err.message })
  })

  fastify.setNotFoundHandler((request, reply) => {
    reply.status(404).send({ statusCode: 404, code: 'ROUTE_NOT_FOUND', error: STATUS_CODES[404], message: `No route ${request.method} ${request.url}. See /docs for the API.` })
  })
}, { name: 'error-handler' })
