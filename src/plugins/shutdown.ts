// Graceful close: every request that reached this process gets an HTTP answer (its result, or 503
// SHUTTING_DOWN with Connection: close) before the process exits.
//
// Left to itself, http.Server#close() (which fastify.close() calls) closes every keep-alive connection that
// is idle at that instant. Under a rush that is exactly where the next requests are: a client's request can
// sit in the socket buffer, unread, while the event loop is busy with others, and the connection counts as
// idle until it is read. Those requests were cut with a reset ("socket hang up"). It also stops Node's
// request-timeout checks, so a slow client could hold the close up until the process was killed.
//
// So, in preClose, before Fastify closes the server:
//   1. every answer from now on carries Connection: close (responses in flight too), and requests
//      arriving on open connections are answered 503 SHUTTING_DOWN by the onRequest hook;
//   2. the listener stops accepting new connections (open ones, and their timeouts, stay);
//   3. after IDLE_GRACE_MS, long enough for a request already on its way to be read and answered,
//      idle connections are closed; connections with a request in flight close after its answer;
//   4. at half of SHUTDOWN_TIMEOUT_MS requests still in flight are answered 503 SHUTTING_DOWN and every
//      connection is closed, leaving the rest of the deadline to the consumer's batch and the stores.
import { type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { Server as NetServer } from 'node:net'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { errorBody, ShuttingDown } from '../errors.js'

/** How long idle keep-alive connections stay open after the close starts, for requests already under way. */
export const IDLE_GRACE_MS = 500
const POLL_MS = 20

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const openConnections = (server: Server) => new Promise<number>((resolve) => server.getConnections((err, count) => resolve(err ? 0 : count)))

function shuttingDownBody () {
  const err = new ShuttingDown()
  return JSON.stringify(errorBody(err, 503))
}

interface DrainOptions {
  /** requests in flight get this long (ms) before they are answered 503 */
  deadlineMs: number
  graceMs?: number
}

export default fp(async function shutdownPlugin (fastify, { config }: { config: Config }) {
  let closing = false
  // Callback style: runs on every request, and an async hook would allocate a promise each time.
  fastify.addHook('onRequest', (_request, _reply, done) => { done(closing ? new ShuttingDown() : undefined) })

  const server = fastify.server
  const inFlight = new Set<ServerResponse>()
  function settled (this: ServerResponse) { inFlight.delete(this) }
  // Before Fastify's own listener, so the header is set before anything is written.
  server.prependListener('request', (_request: IncomingMessage, response: ServerResponse) => {
    if (closing) response.setHeader('connection', 'close')
    inFlight.add(response)
    response.once('close', settled)
  })

  async function drain ({ deadlineMs, graceMs = IDLE_GRACE_MS }: DrainOptions) {
    const started = Date.now()
    for (const response of inFlight) if (!response.headersSent) response.setHeader('connection', 'close')
    // net.Server#close, not http.Server#close: stop accepting, but do not close idle connections yet
    // and keep the request-timeout checks running.
    if (server.listening) NetServer.prototype.close.call(server)
    while (await openConnections(server) > 0) {
      const elapsed = Date.now() - started
      if (elapsed >= deadlineMs) break
      if (elapsed >= graceMs) server.closeIdleConnections()
      await sleep(POLL_MS)
    }
    if (inFlight.size > 0) {
      fastify.log.warn({ requests: inFlight.size }, 'shutdown: answering requests still in flight with 503 SHUTTING_DOWN')
      const body = shuttingDownBody()
      for (const response of inFlight) {
        if (response.headersSent) continue
        response.writeHead(503, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), connection: 'close' })
        response.end(body)
      }
      const flushUntil = Date.now() + 250
      while (await openConnections(server) > 0 && Date.now() < flushUntil) await sleep(POLL_MS)
    }
    server.closeAllConnections()
  }

  fastify.addHook('preClose', async () => {
    closing = true
    await drain({ deadlineMs: Math.floor(config.shutdownTimeoutMs / 2) })
  })
}, { name: 'shutdown' })
