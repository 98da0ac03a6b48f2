// `npm run reconcile -- [couponId] [--json]`: the consistency report (check.ts) for one coupon or every
// coupon, as text or one JSON document. Exit code 0: the books balance (or the counters are absent);
// 1: at least one coupon disagrees; 2: the check could not run (bad arguments, unknown coupon, store down).
import { parseArgs } from 'node:util'
import { listCoupons } from '../db/queries/coupons.js'
import { checkConsistency, type ConsistencyDeps, type ConsistencyReport } from './check.js'

export interface ReconcileOutput { write (text: string): unknown }

export const EXIT_BALANCED = 0
export const EXIT_DISAGREES = 1
export const EXIT_FAILED = 2

export interface ReconcileArgs { couponId: number | null, json: boolean }

/** Parses `[couponId] [--json]`; throws with a usage message. */
export function parseReconcileArgs (argv: string[]): ReconcileArgs {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean', default: false } } })
  if (positionals.length > 1) throw new Error('usage: npm run reconcile -- [couponId] [--json]')
  const id = positionals[0]
  if (id !== undefined && !/^[1-9]\d{0,15}$/.test(id)) throw new Error(`not a coupon id: ${id}`)
  return { couponId: id === undefined ? null : Number(id), json: values.json }
}

async function * allCouponIds (deps: ConsistencyDeps): AsyncGenerator<number> {
  let afterId = 0
  for (;;) {
    const page = await listCoupons(deps.db, { afterId, limit: 100 })
    for (const coupon of page) yield coupon.id
    if (page.length < 100) return
    afterId = page[page.length - 1]!.id
  }
}

export function describeReport (r: ConsistencyReport): string {
  const pending = `${r.stream.unpersistedIssues} issues and ${r.stream.unpersistedRevokes} cancels unpersisted, ${r.postgres.parked} parked`
  if (r.status === 'counters-absent') {
    return `coupon ${r.couponId}: counters absent in Redis (the next request rebuilds them); Postgres ${r.postgres.activeRows} active rows, ${pending}\n`
  }
  const redis = r.redis!
  const head = `coupon ${r.couponId}: ${r.status === 'consistent' ? 'consistent' : 'INCONSISTENT'} ` +
    `(total ${redis.total}, remaining ${redis.remaining}, holders ${redis.activeHolders}; Postgres ${r.postgres.activeRows} active rows, ${pending})\n`
  if (r.status === 'consistent') return head
  const lines = [head, ...r.problems.map((p) => `  - ${p}\n`)]
  if (r.users.length > 0) {
    const columns = ['userId', 'redisHolds', 'expectedHolds', 'rows', 'activeRows', 'unpersistedIssues', 'unpersistedRevokes', 'parkedIssues', 'redisClaim', 'maxRowClaim'] as const
    const cells = [columns.map(String), ...r.users.map((u) => columns.map((c) => String(u[c])))]
    const widths = columns.map((_, i) => Math.max(...cells.map((row) => row[i]!.length)))
    for (const row of cells) lines.push(`    ${row.map((cell, i) => i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)).join('  ')}\n`)
    if (r.usersDiffering > r.users.length) lines.push(`    … and ${r.usersDiffering - r.users.length} more users\n`)
  }
  return lines.join('')
}

/** Runs the report and writes it; returns the exit code. */
export async function runReconcile (deps: ConsistencyDeps, args: ReconcileArgs, out: ReconcileOutput): Promise<number> {
  const reports: ConsistencyReport[] = []
  const ids = args.couponId === null ? allCouponIds(deps) : [args.couponId]
  for await (const id of ids) {
    const report = await checkConsistency(deps, id)
    reports.push(report)
    if (!args.json) out.write(describeReport(report))
  }
  const inconsistent = reports.filter((r) => r.status === 'inconsistent').length
  const absent = reports.filter((r) => r.status === 'counters-absent').length
  if (args.json) out.write(JSON.stringify({ checked: reports.length, inconsistent, countersAbsent: absent, coupons: reports }, null, 2) + '\n')
  else out.write(`reconcile: ${reports.length} coupon(s) checked, ${inconsistent} inconsistent, ${absent} with counters absent\n`)
  return inconsistent > 0 ? EXIT_DISAGREES : EXIT_BALANCED
}
