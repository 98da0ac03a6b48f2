// `npx tsx scripts/decode-bench.ts`: what reading and decoding a stream entry costs the consumer's
// process, per entry, for the two entry formats (src/stream/events.ts) and for string vs Buffer
// replies. 50,000 entries per format in a scratch key on the local Redis, read back with XREADGROUP
// COUNT 1000 in 7 rounds; prints the median CPU (user + system) per entry. See docs/benchmarks.md.
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import { decodeEntry, isEvent } from '../src/stream/events.js'
import { REDIS_URL } from './lib/infra.js'

const N = 50_000
const COUNT = 1000
const ROUNDS = 7
const redis = new Redis(REDIS_URL)
const prefix = `decode-bench:${randomBytes(4).toString('hex')}:`
const streamOf = (format: 'v0' | 'v1') => `${prefix}coupon:{7}:events-${format}`

async function fill (format: 'v0' | 'v1') {
  const key = streamOf(format)
  for (let start = 0; start < N; start += 5000) {
    const pipeline = redis.pipeline()
    for (let i = start; i < start + 5000; i++) {
      const at = String(1763900000000 + i)
      if (format === 'v0') pipeline.xadd(key, '*', 'type', 'issue', 'couponId', '7', 'userId', `user-${i}`, 'claim', '1', 'at', at)
      else pipeline.xadd(key, '*', 'e1', `i|user-${i}|1|${at}|`)
    }
    await pipeline.exec()
  }
}

/** CPU µs per entry to read the whole stream once (and decode it unless `decode` is false). */
async function readAll (format: 'v0' | 'v1', buffers: boolean, decode: boolean): Promise<number> {
  const key = streamOf(format)
  await redis.xgroup('DESTROY', key, 'g')
  await redis.xgroup('CREATE', key, 'g', '0')
  const cpu0 = process.cpuUsage()
  let n = 0
  for (;;) {
    const reply = (buffers
      ? await redis.xreadgroupBuffer('GROUP', 'g', 'c', 'COUNT', COUNT, 'STREAMS', key, '>')
      : await redis.xreadgroup('GROUP', 'g', 'c', 'COUNT', COUNT, 'STREAMS', key, '>')) as [unknown, [string | Buffer, (string | Buffer)[]][]][] | null
    if (!reply) break
    for (const [, entries] of reply) {
      for (const [id, fields] of entries) {
        if (!decode) { n++; continue }
        const entry = buffers
          ? decodeEntry(key, 7, id.toString(), fields.map((f) => f.toString()))
          : decodeEntry(key, 7, id as string, fields as string[])
        if (isEvent(entry)) n++
      }
    }
  }
  const cpu = process.cpuUsage(cpu0)
  if (n !== N) throw new Error(`read ${n} of ${N}`)
  return (cpu.user + cpu.system) / N
}

try {
  await fill('v0')
  await fill('v1')
  for (const format of ['v0', 'v1'] as const) await redis.xgroup('CREATE', streamOf(format), 'g', '0')
  const variants = [['v0', false, true], ['v1', false, true], ['v0', true, true], ['v1', true, true], ['v0', false, false], ['v1', false, false]] as const
  const results = new Map<string, number[]>()
  for (let round = 0; round < ROUNDS; round++) {
    for (const [format, buffers, decode] of variants) {
      const label = `${format} ${buffers ? 'Buffer' : 'string'} replies, ${decode ? 'read + decode' : 'read only'}`
      results.set(label, [...results.get(label) ?? [], await readAll(format, buffers, decode)])
    }
  }
  for (const [label, us] of results) {
    const sorted = [...us].sort((a, b) => a - b)
    console.log(`${label.padEnd(40)} median ${sorted[ROUNDS >> 1]!.toFixed(2)} µs CPU/entry  (${us.map((x) => x.toFixed(2)).join(' / ')})`)
  }
} finally {
  await redis.del(streamOf('v0'), streamOf('v1'))
  redis.disconnect()
}
