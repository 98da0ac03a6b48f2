// What `npm run drain` shows while it works: a progress bar on a terminal (persisted / total, rate, ETA),
// plain progress lines when stdout is a pipe or a file, one JSON document with --json; then a summary
// per coupon. The total is the streams' backlog counted before the drain starts; progress comes from the
// consumer's own events (`batch` for entries handled, `parked`, `reclaimed`), so nothing is polled.
import type { RedisClient } from '../redis/client.js'
import { consumerGroupInfo } from '../redis/groups.js'
import type { Keys } from '../redis/keys.js'
import type { ConsumerEvents, DrainReport } from './consumer.js'

/** Entries waiting per coupon id: not yet delivered to the group, or delivered and not acknowledged. */
export async function streamBacklog (redis: RedisClient, keys: Keys): Promise<Map<string, number>> {
  const backlog = new Map<string, number>()
  const ids = (await redis.smembers(keys.activeCoupons)).sort((a, b) => Number(a) - Number(b))
  for (const id of ids) {
    const stream = keys.coupon(id).events
    const group = await consumerGroupInfo(redis, stream)
    // No group yet, or a lag Redis cannot tell (after deletions): every entry still in the stream may be
    // waiting (trimming keeps acknowledged ones only briefly), an upper bound.
    const waiting = group && group.lag !== null ? group.lag + group.pending : await redis.xlen(stream)
    if (waiting > 0) backlog.set(id, waiting)
  }
  return backlog
}

/** Where the drain writes: process.stdout, or a test's fake. */
export interface DrainOutput {
  write (text: string): unknown
  isTTY?: boolean
  columns?: number
}

/** The part of IssueEventConsumer the drain uses. */
export interface DrainingConsumer {
  drain (): Promise<DrainReport>
  on<K extends keyof ConsumerEvents> (event: K, listener: (...args: ConsumerEvents[K]) => void): unknown
  off<K extends keyof ConsumerEvents> (event: K, listener: (...args: ConsumerEvents[K]) => void): unknown
}

export interface DrainRunOptions {
  consumer: DrainingConsumer
  /** counted before the drain (the total) and after it (what is left) */
  backlog: () => Promise<Map<string, number>>
  out: DrainOutput
  json?: boolean
  now?: () => number
  /** at most one plain progress line per this many ms */
  lineIntervalMs?: number
}

export interface DrainSummary {
  /** entries waiting when the drain started */
  total: number
  /** entries the drain handled (persisted, found already persisted, or parked) */
  handled: number
  durationMs: number
  perSecond: number
  reclaimed: number
  coupons: { couponId: number, backlog: number, handled: number, left: number }[]
  stats: DrainReport['stats']
}

const BAR_WIDTH = 30
const TTY_REDRAW_MS = 100

export function formatDuration (seconds: number): string {
  if (!Number.isFinite(seconds)) return '?'
  const s = Math.max(0, Math.round(seconds))
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`
}

/** One progress reading as text: "1200/5000 (24%), 830/s, ETA 5s". */
export function progressText (done: number, total: number, elapsedMs: number): string {
  const rate = elapsedMs > 0 ? done / (elapsedMs / 1000) : 0
  const percent = total > 0 ? Math.min(100, Math.floor(done * 100 / total)) : 100
  const eta = done >= total ? 0 : rate > 0 ? (total - done) / rate : Infinity
  return `${done}/${total} (${percent}%), ${Math.round(rate)}/s, ETA ${formatDuration(eta)}`
}

function progressBar (done: number, total: number): string {
  const filled = total > 0 ? Math.min(BAR_WIDTH, Math.floor(done * BAR_WIDTH / total)) : BAR_WIDTH
  return `[${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}]`
}

export function summaryTable (summary: DrainSummary): string {
  const rows = [['coupon', 'backlog', 'handled', 'left'], ...summary.coupons.map((c) => [String(c.couponId), String(c.backlog), String(c.handled), String(c.left)])]
  const sum = (f: 'backlog' | 'handled' | 'left') => summary.coupons.reduce((n, c) => n + c[f], 0)
  rows.push(['total', String(sum('backlog')), String(sum('handled')), String(sum('left'))])
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)))
  return rows.map((r) => r.map((cell, i) => i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)).join('  ') + '\n').join('')
}

/** Counts the backlog, drains with progress on `out`, prints the summary; returns it. */
export async function runDrain ({ consumer, backlog, out, json = false, now = Date.now, lineIntervalMs = 1000 }: DrainRunOptions): Promise<DrainSummary> {
  const mode = json ? 'json' : out.isTTY ? 'tty' : 'plain'
  const before = await backlog()
  const total = [...before.values()].reduce((n, v) => n + v, 0)
  const started = now()
  let handled = 0
  let reclaimed = 0
  let drawnAt = -Infinity
  let drawnHandled = -1
  const say = (text: string) => { if (mode !== 'json') out.write(text) }
  const draw = (final = false) => {
    const at = now()
    if (mode === 'tty') {
      if (!final && at - drawnAt < TTY_REDRAW_MS) return
      const line = `${progressBar(handled, total)} ${progressText(handled, total, at - started)}`
      // \r and clear-to-end-of-line: the bar redraws in place.
      out.write(`\r${line.slice(0, Math.max(20, (out.columns ?? 80) - 1))}\x1b[K${final ? '\n' : ''}`)
    } else if (mode === 'plain') {
      // The last line already says where it ended: no repeat of it.
      if (final ? handled === drawnHandled : at - drawnAt < lineIntervalMs) return
      out.write(`drain: ${progressText(handled, total, at - started)}\n`)
    }
    drawnAt = at
    drawnHandled = handled
  }
  const onBatch = ({ entries }: { entries: number }) => { handled += entries; draw() }
  const onParked = (entries: unknown[]) => {
    if (mode === 'tty') out.write('\r\x1b[K')
    say(`drain: ${entries.length} entries parked in failed_issue_events (GET /admin/failed-events)\n`)
  }
  const onReclaimed = ({ perCoupon }: { perCoupon: Record<string, number> }) => {
    reclaimed += Object.values(perCoupon).reduce((n, v) => n + v, 0)
  }
  consumer.on('batch', onBatch)
  consumer.on('parked', onParked)
  consumer.on('reclaimed', onReclaimed)
  say(total === 0 ? 'drain: the streams show no backlog; looking anyway\n' : `drain: ${total} entries waiting in ${before.size} coupon stream(s)\n`)
  let report: DrainReport
  try {
    report = await consumer.drain()
  } finally {
    consumer.off('batch', onBatch)
    consumer.off('parked', onParked)
    consumer.off('reclaimed', onReclaimed)
  }
  if (handled > 0 || mode === 'tty') draw(true)
  const after = await backlog()
  const durationMs = now() - started
  const ids = new Set([...before.keys(), ...Object.keys(report.perCoupon), ...after.keys()])
  const summary: DrainSummary = {
    total,
    handled,
    durationMs,
    perSecond: durationMs > 0 ? Math.round(handled / (durationMs / 1000)) : handled,
    reclaimed,
    coupons: [...ids].sort((a, b) => Number(a) - Number(b)).map((id) => ({
      couponId: Number(id), backlog: before.get(id) ?? 0, handled: report.perCoupon[id] ?? 0, left: after.get(id) ?? 0
    })),
    stats: report.stats
  }
  if (mode === 'json') {
    out.write(JSON.stringify(summary, null, 2) + '\n')
    return summary
  }
  if (summary.coupons.length > 0) say(summaryTable(summary))
  const { inserted, duplicates, failed, deletedWhilePending } = report.stats
  say(`drain: ${inserted} rows inserted, ${duplicates} already persisted, ${failed} parked in failed_issue_events, ${deletedWhilePending} pending entries found deleted` +
    `${reclaimed > 0 ? `, ${reclaimed} reclaimed from other consumers` : ''} in ${formatDuration(durationMs / 1000)}\n`)
  return summary
}
