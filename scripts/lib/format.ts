// Plain-text report helpers shared by the load test and the bench.
import os from 'node:os'

export const int = (n: number) => Math.round(n).toLocaleString('en-US')
export const ms = (n: number) => `${n.toFixed(n < 10 ? 1 : 0)} ms`
export const ratio = (a: number, b: number) => (b > 0 ? a / b : NaN)
export const pct = (r: number) => `${(r * 100).toFixed(0)}%`

/** Left-aligned first column, right-aligned others. */
export function table (rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map(String))
  const widths = cells[0]!.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)))
  return cells.map((r) => r.map((c, i) => i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)).join('  ')).join('\n')
}

export function machine (): string {
  return `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GB, Node ${process.version}, ${os.platform()} ${os.release()}`
}
