// A real webhook receiver on a free loopback port: records every request (arrival time, headers, body)
// and answers each as the test's `behave` says: a status, a hang (never answers), or a closed socket.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Teardown } from './env.js'

export type Behaviour = number | 'hang' | 'close' | { status: number, delayMs: number }

export interface Received {
  at: number
  id: string
  type: string
  signature: string
  body: string
  json: { id: string, type: string, createdAt: string, data: Record<string, unknown> }
}

export interface Receiver {
  url: string
  received: Received[]
  /** requests being handled right now, per event id, and the most seen at once for one id */
  maxConcurrentPerEvent: number
  /** how many requests are open right now (hanging ones included) */
  open: () => number
}

export async function startReceiver (t: Teardown, behave: (n: number, request: IncomingMessage) => Behaviour = () => 200): Promise<Receiver> {
  const inFlight = new Map<string, number>()
  const sockets = new Set<import('node:net').Socket>()
  let openRequests = 0
  const receiver: Receiver = { url: '', received: [], maxConcurrentPerEvent: 0, open: () => openRequests }
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const chunks: Buffer[] = []
    request.on('data', (c: Buffer) => chunks.push(c))
    request.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      const json = JSON.parse(body)
      const n = receiver.received.push({ at: Date.now(), id: json.id, type: json.type, signature: String(request.headers['couponrush-signature']), body, json })
      const now = (inFlight.get(json.id) ?? 0) + 1
      inFlight.set(json.id, now)
      receiver.maxConcurrentPerEvent = Math.max(receiver.maxConcurrentPerEvent, now)
      openRequests++
      const done = () => { inFlight.set(json.id, (inFlight.get(json.id) ?? 1) - 1); openRequests-- }
      const behaviour = behave(n, request)
      if (behaviour === 'hang') {
        request.socket.on('close', done)
        return
      }
      if (behaviour === 'close') {
        done()
        request.socket.destroy()
        return
      }
      const { status, delayMs } = typeof behaviour === 'number' ? { status: behaviour, delayMs: 0 } : behaviour
      setTimeout(() => { done(); response.writeHead(status, { 'content-type': 'text/plain' }).end('ok') }, delayMs)
    })
  })
  server.on('connection', (socket) => { sockets.add(socket); socket.on('close', () => sockets.delete(socket)) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  receiver.url = `http://127.0.0.1:${(server.address() as { port: number }).port}/hooks`
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return receiver
}
