// Watches a coupon's persistence from the outside while a rush runs: the unpersisted backlog (stream
// length) sampled on an interval, and how long Postgres takes to reach a row count.
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import type pg from 'pg'

export interface BacklogSampler {
  /** largest stream length seen, and when (seconds after sampling started) */
  stop (): { max: number, atS: number, samples: number, perSecondMax: number[] }
}

/** XLEN of the stream every intervalMs; the stream holds exactly the entries not yet persisted and trimmed. */
export function sampleBacklog (redis: Redis, streamKey: string, intervalMs = 50): BacklogSampler {
  let max = 0
  let atS = 0
  let samples = 0
  const perSecondMax: number[] = []
  const started = Date.now()
  const timer = setInterval(() => {
    redis.xlen(streamKey).then((n) => {
      samples++
      const second = Math.floor((Date.now() - started) / 1000)
      perSecondMax[second] = Math.max(perSecondMax[second] ?? 0, n)
      if (n > max) { max = n; atS = (Date.now() - started) / 1000 }
    }, () => {})
  }, intervalMs)
  return { stop: () => { clearInterval(timer); return { max, atS, samples, perSecondMax: Array.from(perSecondMax, (n) => n ?? 0) } } }
}

export async function countRows (pool: pg.Pool, couponId: number): Promise<number> {
  const { rows } = await pool.query('SELECT count(*)::int AS n FROM coupon_issues WHERE coupon_id = $1', [couponId])
  return rows[0].n
}

/** Milliseconds from `since` until the coupon has `expected` rows; -1 when the timeout passes first. */
export async function waitForRows (pool: pg.Pool, couponId: number, expected: number, since: number, timeoutMs = 30_000): Promise<{ lagMs: number, rows: number }> {
  for (;;) {
    const rows = await countRows(pool, couponId)
    if (rows >= expected) return { lagMs: Date.now() - since, rows }
    if (Date.now() - since > timeoutMs) return { lagMs: -1, rows }
    await sleep(2)
  }
}
