// Sends webhook deliveries from the outbox (webhook_deliveries, written with the events in the
// consumer's statement) in a loop of its own: bounded concurrency, a timeout per request, leases so
// that several instances share the work and each delivery is attempted by one instance at a time.
// Nothing here runs on the issue path or the consumer's: a slow or dead receiver only slows its own
// deliveries.
import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config.js'
import type { Db } from '../db/client.js'
import { leaseDeliveries, markAttemptFailed, markDelivered, releaseLease, type LeasedDelivery } from '../db/queries/webhooks.js'
import { sign } from './signature.js'

/** The WEBHOOK_* settings (described in src/config.ts) plus what the loop works with. */
export interface DeliveryLoopOptions extends Omit<Config['webhooks'], 'enabled'> {
  db: Db
  log: FastifyBaseLogger
  /** tests: a fixed random for the jitter */
  random?: () => number
}

/** The delay before attempt n+1 after n failed attempts: base·2^(n−1), capped, times 0.75–1.25 (jitter spreads retries of one outage). */
export function backoffDelay (attempts: number, { backoffBaseMs, backoffMaxMs }: { backoffBaseMs: number, backoffMaxMs: number }, random = Math.random): number {
  const exponential = Math.min(backoffMaxMs, backoffBaseMs * 2 ** Math.min(Math.max(attempts - 1, 0), 40))
  return Math.round(exponential * (0.75 + random() * 0.5))
}

export interface DeliveryLoopStats { attempts: number, delivered: number, failedAttempts: number }

/** Emits 'attempt' with 'delivered' | 'failed' after each recorded attempt (for the metrics). */
export class DeliveryLoop extends EventEmitter<{ attempt: ['delivered' | 'failed'] }> {
  readonly #o: DeliveryLoopOptions
  readonly #abort = new AbortController()
  readonly #inFlight = new Set<Promise<void>>()
  /** attempts in flight per webhook id */
  readonly #perWebhook = new Map<number, number>()
  /** what one webhook may hold of this loop's slots, so a dead receiver cannot take them all */
  readonly #webhookCap: number
  #timer: NodeJS.Timeout | null = null
  /** the tick running now (a lease may be on its way back from Postgres) */
  #ticking: Promise<void> | null = null
  readonly stats: DeliveryLoopStats = { attempts: 0, delivered: 0, failedAttempts: 0 }

  constructor (options: DeliveryLoopOptions) {
    super()
    this.#o = options
    this.#webhookCap = Math.max(1, Math.ceil(options.concurrency / 2))
  }

  start (): void {
    this.#schedule(0)
  }

  /**
   * Stops leasing, aborts the requests in flight and gives their leases back. A lease that comes back
   * after the abort is given back too (its attempt fails at once as aborted), so when this resolves the
   * loop holds no lease.
   */
  async stop (): Promise<void> {
    this.#abort.abort()
    if (this.#timer) clearTimeout(this.#timer)
    this.#timer = null
    await this.#ticking
    await Promise.allSettled([...this.#inFlight])
  }

  #schedule (ms: number): void {
    if (this.#abort.signal.aborted) return
    if (this.#timer) clearTimeout(this.#timer)
    // #tick catches everything itself.
    this.#timer = setTimeout(() => {
      this.#timer = null
      if (this.#ticking || this.#abort.signal.aborted) return
      this.#ticking = this.#tick().catch(() => {}).finally(() => { this.#ticking = null })
    }, ms)
    this.#timer.unref()
  }

  async #tick (): Promise<void> {
    let full = false
    try {
      const free = this.#o.concurrency - this.#inFlight.size
      if (free > 0) {
        // The lease outlives the longest attempt (timeout) by a wide margin; an instance that dies leaves
        // it to expire.
        const room = new Map([...this.#perWebhook].map(([id, n]) => [id, this.#webhookCap - n]))
        const leased = await leaseDeliveries(this.#o.db, { limit: free, leaseMs: this.#o.timeoutMs * 2 + 10_000, token: randomUUID(), perWebhook: this.#webhookCap, room })
        full = leased.length === free
        for (const delivery of leased) this.#send(delivery)
      }
    } catch (err) {
      this.#o.log.warn({ err }, 'webhook deliveries could not be leased')
    } finally {
      // More may be due at once when the lease came back full; otherwise poll (a finished attempt also ticks).
      this.#schedule(full ? 0 : this.#o.pollMs)
    }
  }

  #send (delivery: LeasedDelivery): void {
    this.#perWebhook.set(delivery.webhookId, (this.#perWebhook.get(delivery.webhookId) ?? 0) + 1)
    const running = this.#attempt(delivery).catch((err) => {
      this.#o.log.warn({ err, delivery: delivery.id }, 'webhook delivery outcome not recorded; the lease will expire and it is retried')
    }).finally(() => {
      this.#inFlight.delete(running)
      const left = (this.#perWebhook.get(delivery.webhookId) ?? 1) - 1
      if (left > 0) this.#perWebhook.set(delivery.webhookId, left)
      else this.#perWebhook.delete(delivery.webhookId)
      this.#schedule(0)
    })
    this.#inFlight.add(running)
  }

  async #attempt (delivery: LeasedDelivery): Promise<void> {
    const { event } = delivery
    // The same bytes on every attempt: only the signature's timestamp changes.
    const body = JSON.stringify({ id: event.id, type: event.type, createdAt: event.createdAt.toISOString(), data: event.data })
    const timestamp = Math.floor(Date.now() / 1000)
    this.stats.attempts++
    let status: number | null = null
    let error: string
    try {
      const response = await fetch(delivery.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'couponrush-webhooks',
          'couponrush-event-id': event.id,
          'couponrush-event-type': event.type,
          'couponrush-signature': sign(delivery.secret, timestamp, body)
        },
        body,
        // A redirect is not a delivery: 3xx is retried like any other non-2xx answer.
        redirect: 'manual',
        signal: AbortSignal.any([AbortSignal.timeout(this.#o.timeoutMs), this.#abort.signal])
      })
      status = response.status
      // The receiver's body is not read: it could be large or never end.
      await response.body?.cancel().catch(() => {})
      if (status >= 200 && status < 300) {
        await markDelivered(this.#o.db, delivery, status)
        this.stats.delivered++
        this.emit('attempt', 'delivered')
        return
      }
      error = `HTTP ${status}`
    } catch (err) {
      if (this.#abort.signal.aborted) {
        await releaseLease(this.#o.db, delivery)
        return
      }
      error = describeFailure(err, this.#o.timeoutMs)
    }
    this.stats.failedAttempts++
    const retryInMs = backoffDelay(delivery.attempts, this.#o, this.#o.random)
    await markAttemptFailed(this.#o.db, delivery, { status, error, retryInMs, retryForMs: this.#o.retryForMs })
    this.emit('attempt', 'failed')
  }
}

function describeFailure (err: unknown, timeoutMs: number): string {
  const e = err as { name?: string, message?: string, cause?: { code?: string, message?: string } }
  if (e.name === 'TimeoutError') return `no answer within ${timeoutMs} ms`
  return e.cause?.code ?? e.cause?.message ?? e.message ?? String(err)
}
