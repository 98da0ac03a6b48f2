// Part 4 of the bench: how fast the consumer moves entries from a stream into Postgres, against a
// raw unnest INSERT loop on the same table (the ceiling: Postgres alone, no Redis, no decoding), and
// against COPY at the same batch sizes (to decide whether the consumer should write with COPY).
import { once } from 'node:events'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import pg from 'pg'
import { from as copyFrom } from 'pg-copy-streams'
import { pino } from 'pino'
import type { Config } from '../../src/config.js'
import { openDatabase } from '../../src/db/client.js'
import { insertCoupon } from '../../src/db/queries/coupons.js'
import { CouponStore } from '../../src/issuing/coupon-store.js'
import { IssueEventConsumer } from '../../src/persistence/consumer.js'
import { connectRedis, createRedis } from '../../src/redis/client.js'
import { createKeys } from '../../src/redis/keys.js'

export interface ConsumerBenchResult {
  /** rows per variant per round */
  rows: number
  rounds: number
  /** variant ('500', 'copy-1000', 'plain-1000', 'consumer') -> rows/s in each round */
  perRound: Record<string, number[]>
  /** CONSUMER_BATCH_SIZE: the largest read COUNT */
  consumerBatchSize: number
  /** entries/s from a full stream into Postgres, the service's consumer loop */
  consumer: number
  /** the consumer's own CPU (user + system, this process) per entry while draining, µs */
  consumerCpuUsPerEntry: number
  /** entries per batch the consumer wrote, on average */
  consumerMeanBatch: number
  /** rows/s of a sequential INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING loop, keyed by rows per statement */
  raw: Record<string, number>
  /** rows/s of COPY into a temp table + INSERT ... SELECT ... ON CONFLICT DO NOTHING, one transaction per batch (idempotent, as the consumer must be) */
  copy: Record<string, number>
  /** rows/s of a bare COPY into the table (not idempotent: a redelivered row would fail the batch; the ceiling only) */
  copyPlain: Record<string, number>
  /** variant -> this process's CPU per row of the raw loops (preparing the batch included), µs */
  cpuUsPerRow: Record<string, number>
  /** entries left in the stream after the consumer finished (it trims what it persisted) */
  streamLeft: number
}

/** How a variant is named in the log and the report. */
export function variantLabel (variant: string): string {
  if (variant === 'consumer') return 'consumer'
  const [kind, batch] = variant.split('-')
  if (kind === 'copy') return `COPY to temp + INSERT ON CONFLICT, ${batch} rows/batch`
  if (kind === 'plain') return `bare COPY (not idempotent), ${batch} rows/batch`
  return `raw unnest INSERT, ${variant} rows/statement`
}

const RAW_INSERT = `INSERT INTO coupon_issues (coupon_id, user_id, claim, created_at, stream_id)
  SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::timestamptz[], $5::text[])
  ON CONFLICT (coupon_id, user_id, claim) DO NOTHING`

async function rawInsertLoop (pool: pg.Pool, couponId: number, rows: number, batch: number): Promise<number> {
  const now = Date.now()
  const batches: unknown[][] = []
  for (let start = 0; start < rows; start += batch) {
    const n = Math.min(batch, rows - start)
    const idx = Array.from({ length: n }, (_, i) => start + i)
    batches.push([idx.map(() => couponId), idx.map((i) => `raw-${batch}-${i}`), idx.map(() => 1),
      idx.map((i) => new Date(now + i).toISOString()), idx.map((i) => `${now + i}-0`)])
  }
  const client = await pool.connect()
  try {
    const t0 = performance.now()
    for (const params of batches) await client.query(RAW_INSERT, params)
    return rows / ((performance.now() - t0) / 1000)
  } finally {
    client.release()
  }
}

const COLUMNS = 'coupon_id, user_id, claim, created_at, stream_id'
// COPY cannot say ON CONFLICT: an idempotent write copies into a temp table and inserts from there.
// The temp table is per connection; IF NOT EXISTS per batch, as a consumer on a pool would have to.
const COPY_BEGIN = 'BEGIN; CREATE TEMP TABLE IF NOT EXISTS copy_issues (coupon_id bigint, user_id text, claim int, created_at timestamptz, stream_id text) ON COMMIT DELETE ROWS'
const COPY_FINISH = `INSERT INTO coupon_issues (${COLUMNS}) SELECT ${COLUMNS} FROM copy_issues ON CONFLICT (coupon_id, user_id, claim) DO NOTHING; COMMIT`

/** COPY (text format) in batches; `idempotent`: through the temp table, else straight into coupon_issues. */
async function rawCopyLoop (pool: pg.Pool, couponId: number, rows: number, batch: number, idempotent: boolean): Promise<number> {
  const now = Date.now()
  const batches: string[] = []
  for (let start = 0; start < rows; start += batch) {
    let text = ''
    // userIds, stream ids and ISO timestamps hold no tab, newline or backslash: nothing to escape.
    for (let i = start; i < Math.min(start + batch, rows); i++) text += `${couponId}\tcopy-${batch}-${i}\t1\t${new Date(now + i).toISOString()}\t${now + i}-0\n`
    batches.push(text)
  }
  const client = await pool.connect()
  try {
    const t0 = performance.now()
    for (const text of batches) {
      if (idempotent) await client.query(COPY_BEGIN)
      await pipeline(Readable.from([text]), client.query(copyFrom(`COPY ${idempotent ? 'copy_issues' : 'coupon_issues'} (${COLUMNS}) FROM STDIN`)))
      if (idempotent) await client.query(COPY_FINISH)
    }
    return rows / ((performance.now() - t0) / 1000)
  } finally {
    client.release()
  }
}

/**
 * Rounds of [raw inserts and COPYs at each batch size, consumer], in rotating order, each on an
 * emptied table, so a burst of background load on a shared machine does not land on one side only.
 * Rates are total rows / total seconds over the rounds; perRound keeps the spread.
 */
export async function consumerBench (config: Config, rows: number, rawBatches = [500, 1000], rounds = 3, log: (s: string) => void = () => {}, copyBatches: number[] = []): Promise<ConsumerBenchResult> {
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir })
  await database.migrate()
  const pool = new pg.Pool({ connectionString: config.databaseUrl, max: 1 })
  const redis = await connectRedis(createRedis({ target: config.redis, commandTimeoutMs: 30_000 }))
  const blockingRedis = await connectRedis(createRedis({ target: config.redis, blocking: true }))
  const keys = createKeys(`${config.redisPrefix}consumer-bench:`)
  const truncate = () => pool.query('TRUNCATE coupon_issues')
  const store = new CouponStore({ redis, db: database.db, keys, backlogCap: 0, idempotencyTtlSeconds: 60 })
  try {
    const rawCoupon = await insertCoupon(database.db, { name: 'raw insert ceiling', totalQuantity: rows })
    // Warm up the table and the connection so the first measurement is not the odd one out.
    await rawInsertLoop(pool, rawCoupon.id, Math.min(rows, 20_000), 500)
    const seconds: Record<string, number> = {}
    const perRound: Record<string, number[]> = {}
    let streamLeft = 0
    const cpuUs: Record<string, number> = {}
    let consumerCpuUs = 0
    let consumerBatches = 0
    const variants = [...rawBatches.map(String), ...copyBatches.flatMap((b) => [`copy-${b}`, `plain-${b}`]), 'consumer']
    for (let round = 0; round < rounds; round++) {
      for (let k = 0; k < variants.length; k++) {
        const variant = variants[(k + round) % variants.length]!
        await truncate()
        let s: number
        if (variant === 'consumer') {
          // Fill a real coupon's stream through the issue script, then let the consumer loose on it.
          const coupon = await insertCoupon(database.db, { name: 'consumer bench', totalQuantity: rows })
          await store.load(coupon)
          for (let start = 0; start < rows; start += 2000) {
            await Promise.all(Array.from({ length: Math.min(2000, rows - start) }, (_, i) => store.issue(coupon.id, `c-${start + i}`)))
          }
          const consumer = new IssueEventConsumer({
            redis, blockingRedis, db: database.db, keys, log: pino({ level: 'silent' }), ...config.consumer, name: 'consumer-bench'
          })
          const cpu0 = process.cpuUsage()
          const t0 = performance.now()
          consumer.start()
          while (consumer.stats.inserted < rows) await once(consumer, 'batch')
          s = (performance.now() - t0) / 1000
          const cpu = process.cpuUsage(cpu0)
          consumerCpuUs += cpu.user + cpu.system
          consumerBatches += consumer.stats.batches
          await consumer.stop()
          await redis.srem(keys.activeCoupons, String(coupon.id))
          streamLeft += await redis.xlen(keys.coupon(coupon.id).events)
        } else {
          // This process's CPU, preparing the batches included (a writer builds them from events too).
          const cpu0 = process.cpuUsage()
          if (variant.startsWith('copy-') || variant.startsWith('plain-')) {
            const [kind, batch] = variant.split('-')
            s = rows / await rawCopyLoop(pool, rawCoupon.id, rows, Number(batch), kind === 'copy')
          } else {
            s = rows / await rawInsertLoop(pool, rawCoupon.id, rows, Number(variant))
          }
          const cpu = process.cpuUsage(cpu0)
          cpuUs[variant] = (cpuUs[variant] ?? 0) + cpu.user + cpu.system
        }
        seconds[variant] = (seconds[variant] ?? 0) + s
        ;(perRound[variant] ??= []).push(rows / s)
        log(`round ${round + 1}/${rounds} ${variantLabel(variant)}: ${Math.round(rows / s)} rows/s`)
      }
    }
    const rate = (v: string) => rows * rounds / seconds[v]!
    return {
      rows,
      rounds,
      consumerBatchSize: config.consumer.batchSize,
      consumer: rate('consumer'),
      consumerCpuUsPerEntry: consumerCpuUs / (rows * rounds),
      consumerMeanBatch: rows * rounds / consumerBatches,
      raw: Object.fromEntries(rawBatches.map((b) => [b, rate(String(b))])),
      copy: Object.fromEntries(copyBatches.map((b) => [b, rate(`copy-${b}`)])),
      copyPlain: Object.fromEntries(copyBatches.map((b) => [b, rate(`plain-${b}`)])),
      cpuUsPerRow: Object.fromEntries(Object.entries(cpuUs).map(([variant, us]) => [variant, us / (rows * rounds)])),
      perRound,
      streamLeft
    }
  } finally {
    redis.disconnect()
    blockingRedis.disconnect()
    await pool.end()
    await database.close()
  }
}
