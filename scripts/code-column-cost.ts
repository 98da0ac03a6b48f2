// `npx tsx scripts/code-column-cost.ts [--batches N] [--rounds N]`: what the `code` of each persisted
// issue costs the consumer's process and its Postgres backend, per row. The consumer's own statement
// (persistEvents, events announced as in the service) writes batches of 1,000 new issues into a scratch
// database, with each row's code computed and written (as the service does) or null (as before codes),
// the two alternating in every round; CPU is this process's (user + system: the code's sha1 and
// characters, encoding the batch) and the backend's (/proc of pg_backend_pid()). The part of the cost
// of codes the end-to-end bench cannot resolve on shared cores (docs/benchmarks.md).
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { sql } from 'drizzle-orm'
import { openDatabase } from '../src/db/client.js'
import { insertCoupon } from '../src/db/queries/coupons.js'
import { persistEvents } from '../src/db/queries/issues.js'
import { codeOf } from '../src/issuing/codes.js'
import type { IssueEvent } from '../src/stream/events.js'
import { createScratch } from './lib/infra.js'

const { values: f } = parseArgs({ options: { batches: { type: 'string', default: '30' }, rounds: { type: 'string', default: '10' } } })
const BATCH = 1000
const BATCHES = Number(f.batches)
const ROUNDS = Number(f.rounds)

const scratch = await createScratch('codecolumn')
const database = await openDatabase({ url: scratch.databaseUrl, dataDir: '', poolSize: 1 })
try {
  await database.migrate()
  const db = database.db
  // One connection, so every statement runs on this backend.
  const { rows } = await db.execute(sql`SELECT pg_backend_pid() AS pid`) as unknown as { rows: { pid: number }[] }
  const backendCpuMicros = () => {
    const fields = readFileSync(`/proc/${rows[0]!.pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
    return (Number(fields[11]) + Number(fields[12])) * 10_000 // utime + stime, 100 ticks a second
  }
  const coupon = await insertCoupon(db, { name: 'code-column-cost', totalQuantity: 100_000_000 })
  const settings = { couponId: coupon.id, codeSecret: coupon.codeSecret, codePrefix: coupon.codePrefix, codeLength: coupon.codeLength }
  const variants = {
    codes: (e: Pick<IssueEvent, 'userId' | 'claim'>) => codeOf(settings, e.userId, e.claim),
    none: () => null
  }
  const totals = { codes: { client: 0, postgres: 0 }, none: { client: 0, postgres: 0 } }
  let next = 0
  const rowsPerSlice = BATCH * BATCHES
  console.log(`code column cost: ${ROUNDS} rounds x ${BATCHES} batches of ${BATCH} new issues per variant, alternating`)
  for (let round = 0; round < ROUNDS; round++) {
    for (const variant of (round % 2 === 0 ? ['none', 'codes'] : ['codes', 'none']) as (keyof typeof variants)[]) {
      const client0 = process.cpuUsage()
      const postgres0 = backendCpuMicros()
      for (let b = 0; b < BATCHES; b++) {
        const issues: IssueEvent[] = Array.from({ length: BATCH }, () => {
          const i = next++
          return { type: 'issue', streamKey: 'code-column-cost', id: `${1763900000000 + i}-0`, couponId: coupon.id, userId: `user-${i}`, claim: 1, at: 1763900000000 + i }
        })
        await persistEvents(db, issues, [], variants[variant])
      }
      const client = process.cpuUsage(client0)
      const postgres = backendCpuMicros() - postgres0
      totals[variant].client += client.user + client.system
      totals[variant].postgres += postgres
      console.log(`round ${round + 1}/${ROUNDS} ${variant}: client ${((client.user + client.system) / rowsPerSlice).toFixed(2)} µs/row, Postgres ${(postgres / rowsPerSlice).toFixed(2)} µs/row`)
    }
  }
  const all = rowsPerSlice * ROUNDS
  for (const [variant, t] of Object.entries(totals)) {
    console.log(`${variant.padEnd(6)} client ${(t.client / all).toFixed(2)} µs/row, Postgres ${(t.postgres / all).toFixed(2)} µs/row`)
  }
  console.log(`codes - none: client ${((totals.codes.client - totals.none.client) / all).toFixed(2)} µs/row, Postgres ${((totals.codes.postgres - totals.none.postgres) / all).toFixed(2)} µs/row`)
} finally {
  await database.close()
  await scratch.cleanup()
}
