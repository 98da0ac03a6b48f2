// HTTP/1.1 over a plain TCP socket, for tests that must control the connection itself: which socket a
// request goes on, how fast its bytes are sent, and whether the server answered or just closed.
// (fetch and http.Agent open new connections and retry behind the test's back.)
import { connect, type Socket } from 'node:net'

export interface RawResponse {
  status: number
  headers: Record<string, string>
  body: string
  json (): any
}

function parseHead (head: string): { status: number, headers: Record<string, string> } {
  const [statusLine, ...lines] = head.split('\r\n')
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine ?? '')?.[1] ?? NaN)
  const headers: Record<string, string> = {}
  for (const line of lines) {
    const colon = line.indexOf(':')
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
  }
  return { status, headers }
}

function response (status: number, headers: Record<string, string>, body: string): RawResponse {
  return { status, headers, body, json: () => JSON.parse(body) }
}

/** Builds a request; a body sets Content-Type (JSON unless given) and Content-Length. */
export function httpRequest (method: string, path: string, { body, headers = {} }: { body?: string, headers?: Record<string, string> } = {}): string {
  const all: Record<string, string> = { host: 'localhost', ...headers }
  if (body !== undefined) {
    all['content-type'] ??= 'application/json'
    all['content-length'] ??= String(Buffer.byteLength(body))
  }
  return `${method} ${path} HTTP/1.1\r\n${Object.entries(all).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n${body ?? ''}`
}

export type Outcome = { kind: 'response', response: RawResponse } | { kind: 'closed', error?: string }

/**
 * One keep-alive connection. send() writes a request and resolves with its response, or with
 * { kind: 'closed' } when the connection ended (or was reset) before the whole response arrived: for a
 * request that was written, that is the "socket hang up" a client sees.
 */
export class KeepAliveConnection {
  readonly socket: Socket
  #buffer = Buffer.alloc(0)
  #waiting: ((outcome: Outcome) => void) | null = null
  #closed: string | null = null
  readonly ready: Promise<void>

  constructor (port: number, host = '127.0.0.1') {
    this.socket = connect({ port, host })
    this.socket.setNoDelay(true)
    this.ready = new Promise((resolve, reject) => {
      this.socket.once('connect', resolve)
      this.socket.once('error', reject)
    })
    this.socket.on('data', (chunk) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk])
      this.#take()
    })
    this.socket.on('error', (err: NodeJS.ErrnoException) => { this.#closed ??= err.code ?? err.message })
    this.socket.on('close', () => {
      this.#closed ??= 'closed'
      this.#take()
      this.#settle({ kind: 'closed', error: this.#closed })
    })
  }

  get closed (): boolean { return this.#closed !== null }

  #settle (outcome: Outcome) {
    const waiting = this.#waiting
    this.#waiting = null
    waiting?.(outcome)
  }

  #take () {
    const end = this.#buffer.indexOf('\r\n\r\n')
    if (end < 0 || !this.#waiting) return
    const { status, headers } = parseHead(this.#buffer.subarray(0, end).toString('latin1'))
    const length = Number(headers['content-length'] ?? 0)
    if (this.#buffer.length < end + 4 + length) return
    const body = this.#buffer.subarray(end + 4, end + 4 + length).toString('utf8')
    this.#buffer = this.#buffer.subarray(end + 4 + length)
    this.#settle({ kind: 'response', response: response(status, headers, body) })
  }

  /** Writes the request (whole, or in the given pieces) and waits for its outcome. One at a time. */
  send (request: string): Promise<Outcome> {
    if (this.#waiting) throw new Error('one request at a time')
    if (this.#closed) return Promise.resolve({ kind: 'closed', error: `not sent: ${this.#closed}` })
    const outcome = new Promise<Outcome>((resolve) => { this.#waiting = resolve })
    this.socket.write(request)
    return outcome
  }

  close () { this.socket.destroy() }
}

/**
 * Writes `data` on a new connection and collects everything until the server closes it (or timeoutMs).
 * Resolves with the first response in it (if any) and how long the server took to close.
 */
export async function exchange (port: number, data: string | Buffer, { timeoutMs = 10_000, host = '127.0.0.1' } = {}): Promise<{ response: RawResponse | null, closedAfterMs: number | null, raw: string }> {
  const socket = connect({ port, host })
  const started = Date.now()
  let raw = Buffer.alloc(0)
  socket.on('data', (chunk) => { raw = Buffer.concat([raw, chunk]) })
  socket.on('error', () => {})
  socket.once('connect', () => socket.write(data))
  const closedAfterMs = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => resolve(null), timeoutMs)
    socket.once('close', () => { clearTimeout(timer); resolve(Date.now() - started) })
  })
  socket.destroy()
  const text = raw.toString('utf8')
  const end = text.indexOf('\r\n\r\n')
  if (end < 0) return { response: null, closedAfterMs, raw: text }
  const { status, headers } = parseHead(text.slice(0, end))
  const length = headers['content-length'] === undefined ? undefined : Number(headers['content-length'])
  const body = raw.subarray(Buffer.byteLength(text.slice(0, end)) + 4)
  return { response: response(status, headers, (length === undefined ? body : body.subarray(0, length)).toString('utf8')), closedAfterMs, raw: text }
}
