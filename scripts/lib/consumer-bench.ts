// Part 4 of the bench: how fast the consumer moves entries from a stream into Postgres, against a
// raw unnest INSERT loop on the same table (the ceiling: Postgres alone, no Redis, no decoding).
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
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
  /** variant ('500', '1000', 'consumer') -> rows/s in each round */
  perRound: Record<string, number[]>
  consumerBatchSize: number
  /** entries/s from a full stream into Postgres, the service's consumer loop */
  consumer: number
  /** rows/s of a sequential INSERT ... SELECT FROM unnest(...) loop, keyed by rows per statement */
  raw: Record<string, number>
  /** entries left in the stream after the consumer finished (it trims what it persisted) */
  streamLeft: number
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

/**
 * Rounds of [raw inserts at each batch size, consumer], in rotating order, each on an emptied table,
 * so a burst of background load on a shared machine does not land on one side only.
 * Rates are total rows / total seconds over the rounds; perRound keeps the spread.
 */
export async function consumerBench (config: Config, rows: number, rawBatches = [500, 1000], rounds = 3, log: (s: string) => void = () => {}): Promise<ConsumerBenchResult> {
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir })
  await database.migrate()
  const pool = new pg.Pool({ connectionString: config.databaseUrl, max: 1 })
  const redis = await connectRedis(createRedis({ url: config.redisUrl, commandTimeoutMs: 30_000 }))
  const blockingRedis = await connectRedis(createRedis({ url: config.redisUrl, blocking: true }))
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
    const variants = [...rawBatches.map(String), 'consumer']
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
          const t0 = performance.now()
          consumer.start()
          while (consumer.stats.inserted < rows) await sleep(1)
          s = (performance.now() - t0) / 1000
          await consumer.stop()
          await redis.srem(keys.activeCoupons, String(coupon.id))
          streamLeft += await redis.xlen(keys.coupon(coupon.id).events)
        } else {
          s = rows / await rawInsertLoop(pool, rawCoupon.id, rows, Number(variant))
        }
        seconds[variant] = (seconds[variant] ?? 0) + s
        ;(perRound[variant] ??= []).push(rows / s)
        log(`round ${round + 1}/${rounds} ${variant === 'consumer' ? 'consumer' : `raw unnest insert, ${variant} rows per statement`}: ${Math.round(rows / s)} rows/s`)
      }
    }
    const rate = (v: string) => rows * rounds / seconds[v]!
    return {
      rows,
      rounds,
      consumerBatchSize: config.consumer.batchSize,
      consumer: rate('consumer'),
      raw: Object.fromEntries(rawBatches.map((b) => [b, rate(String(b))])),
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
