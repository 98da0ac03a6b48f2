// The sold-out short-circuit: once this process has seen a coupon answer SOLD_OUT, it answers SOLD_OUT
// from memory instead of asking Redis, until something may have brought stock back. A rush is mostly
// losers, and a loser's answer is already known.
//
// Correctness first — a marker must never outlive stock coming back:
// - Every script that can return stock (revoke, updateCoupon, discardIssue, a full restoreCounters)
//   publishes the coupon id on the prefix's stock-returned channel; the subscriber below drops the marker.
// - Pub/sub loses messages while a subscriber is disconnected: every marker is dropped when the
//   subscription goes down, and none is set until it is back.
// - A reply and an invalidation can race in either order (they arrive on two connections): a caller
//   takes a ticket before it asks Redis, and a SOLD_OUT reply sets a marker only when no invalidation of
//   that coupon (and no loss of the subscription) happened since the ticket. An invalidation that comes
//   after the reply drops the marker it set.
// - A marker lives at most `ttlMs` (a safety net) and never past the coupon's endsAt (after which the
//   answer is ENDED), measured on Redis's clock through the reply.
// - Requests with an Idempotency-Key never use a marker (their replays must stay exact).
// The one visible difference: a user who holds perUserLimit units and retries without a key may read
// SOLD_OUT instead of ALREADY_ISSUED while a marker lives (README, "Sold-out short-circuit").
import type { RedisClient } from '../redis/client.js'
import type { FastifyBaseLogger } from 'fastify'
import { dedicatedConnection, releaseSentinelsOnEnd } from '../redis/client.js'

/** Markers and invalidation records kept at most (coupon ids come from clients; this bounds memory). */
const MAX_TRACKED = 10_000

export interface SoldOutMarkersOptions {
  /** how long a marker may answer without asking Redis; 0 turns the short-circuit off */
  ttlMs: number
  /**
   * a monotonic clock in ms (tests move it). Lifetimes are relative (the TTL, endsAt minus Redis's now),
   * so a wall clock stepped back by NTP must not stretch them: performance.now() by default.
   */
  now?: () => number
}

export class SoldOutMarkers {
  readonly ttlMs: number
  readonly #now: () => number
  /** couponId -> local ms until which SOLD_OUT may be answered from memory */
  readonly #markers = new Map<number, number>()
  /** couponId -> clock value of its last invalidation */
  readonly #invalidatedAt = new Map<number, number>()
  /** bumped by every invalidation; tickets are readings of it */
  #clock = 0
  /** tickets below this are refused: the subscription was lost, or old invalidation records were dropped */
  #floor = 0
  #listening = false

  constructor ({ ttlMs, now = () => performance.now() }: SoldOutMarkersOptions) {
    this.ttlMs = ttlMs
    this.#now = now
  }

  /** True while markers may be set: the short-circuit is on and the subscription is live. */
  get active (): boolean {
    return this.ttlMs > 0 && this.#listening
  }

  /** True when SOLD_OUT may be answered for this coupon without asking Redis. */
  soldOut (couponId: number): boolean {
    const until = this.#markers.get(couponId)
    if (until === undefined) return false
    if (this.#now() < until) return true
    this.#markers.delete(couponId)
    return false
  }

  /** Taken before asking Redis; hand it back to `markSoldOut` with the reply. */
  ticket (): number {
    return this.#clock
  }

  /**
   * A fresh SOLD_OUT reply (no Idempotency-Key, not a replay) for a request that took `ticket` before it
   * asked Redis. `endsAt` and `redisNow` come from the reply (ms on Redis's clock; endsAt 0 = no end).
   */
  markSoldOut (couponId: number, ticket: number, endsAt: number, redisNow: number): void {
    if (!this.active || ticket < this.#floor || (this.#invalidatedAt.get(couponId) ?? -1) > ticket) return
    let lifetime = this.ttlMs
    if (endsAt > 0) lifetime = Math.min(lifetime, endsAt - redisNow)
    if (lifetime <= 0) return
    if (this.#markers.size >= MAX_TRACKED && !this.#markers.has(couponId)) this.#markers.clear()
    this.#markers.set(couponId, this.#now() + lifetime)
  }

  /** Stock of this coupon may have come back (a script published it). */
  invalidate (couponId: number): void {
    this.#clock++
    this.#markers.delete(couponId)
    if (this.#invalidatedAt.size >= MAX_TRACKED && !this.#invalidatedAt.has(couponId)) {
      // Forgetting records would let an old ticket pass: refuse every ticket taken before now instead.
      this.#invalidatedAt.clear()
      this.#floor = this.#clock
    }
    this.#invalidatedAt.set(couponId, this.#clock)
  }

  /** The subscription is live (again): markers may be set by requests that start from now on. */
  listening (): void {
    this.#lost()
    this.#listening = true
  }

  /** The subscription is down: messages may be missed, so nothing in memory can be trusted. */
  deaf (): void {
    this.#lost()
    this.#listening = false
  }

  #lost (): void {
    this.#clock++
    this.#floor = this.#clock
    this.#markers.clear()
    this.#invalidatedAt.clear()
  }
}

/** CLIENT SETNAME of the subscriber connection (no spaces allowed). */
export const subscriberName = (channel: string) => `couponrush-markers:${channel}`.replace(/\s/g, '_')

/**
 * Subscribes a dedicated connection (a subscriber can run nothing else) to the stock-returned channel
 * and keeps `markers` in step with it. Returns a function that closes the subscription.
 */
export async function followStockReturns (redis: RedisClient, channel: string, markers: SoldOutMarkers, log: FastifyBaseLogger): Promise<() => Promise<void>> {
  if (markers.ttlMs <= 0) return async () => {}
  // On a cluster: a plain connection to one primary, which hears every node's PUBLISH (client.ts).
  const subscriber = dedicatedConnection(redis, {
    // Named after the channel, so an operator (or a test) can tell it apart in CLIENT LIST.
    connectionName: subscriberName(channel),
    lazyConnect: true,
    enableOfflineQueue: true,
    maxRetriesPerRequest: null,
    autoResubscribe: false
  })
  releaseSentinelsOnEnd(subscriber)
  let closing = false
  const subscribe = async () => {
    try {
      await subscriber.subscribe(channel)
      // Any message from here on reaches `invalidate`; requests that start now may set markers.
      if (subscriber.status === 'ready') markers.listening()
    } catch (err) {
      if (!closing) log.warn({ err: (err as Error).message }, 'sold-out markers: subscribe failed; answering every request from Redis')
    }
  }
  subscriber.on('message', (_channel: string, message: string) => {
    const couponId = Number(message)
    if (Number.isSafeInteger(couponId)) markers.invalidate(couponId)
  })
  // 'close' comes first on every loss of the connection; 'ready' after each reconnect, before which
  // nothing was subscribed (autoResubscribe is off, so the subscription is made, and waited for, here).
  subscriber.on('close', () => markers.deaf())
  subscriber.on('ready', () => { subscribe().catch(() => {}) })
  subscriber.on('error', (err) => log.debug({ err: err.message }, 'sold-out markers: subscriber connection error'))
  await subscriber.connect().catch((err) => {
    log.warn({ err: (err as Error).message }, 'sold-out markers: subscriber not connected yet; retrying in the background')
  })
  return async () => {
    closing = true
    markers.deaf()
    await subscriber.quit().catch(() => subscriber.disconnect())
  }
}
