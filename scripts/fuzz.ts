// npm run fuzz -- --seconds N [--seed S [--path P]] [--instances 1|2] [--runs R] [--shrink-seconds M] [--without kinds] [--verbose]
//
// The model-based interleaving test (test/interleavings/) with random seeds until N seconds pass.
// Each seed runs R scenarios; on the first failure fast-check shrinks it (for at most M seconds) and
// this prints the seed, the replay path, the shrunk command sequence and the broken invariants, then
// exits 1. `--without reclaim,total` stops generating those command kinds (to look past a known defect
// that every run would hit first; the replay line repeats it). `--seed S --path P` replays exactly that counterexample (real concurrency: a race may need
// a few replays to show again; --repeat K replays K times).
// Needs Redis on 127.0.0.1:6379 and Postgres on 127.0.0.1:5432 like the tests; uses its own throwaway
// database and key prefix, removed at exit.
import { parseArgs } from 'node:util'
import fc from 'fast-check'
import { formatFailure, Harness, interleavingProperty } from '../test/interleavings/harness.js'
import { CMD_KINDS, type Cmd, type Scenario } from '../test/interleavings/model.js'

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    seed: { type: 'string' },
    path: { type: 'string' },
    instances: { type: 'string', default: '1' },
    runs: { type: 'string', default: '10' },
    'shrink-seconds': { type: 'string', default: '90' },
    repeat: { type: 'string', default: '1' },
    'max-batches': { type: 'string', default: '10' },
    'max-batch-size': { type: 'string', default: '5' },
    without: { type: 'string', default: '' },
    verbose: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false }
  }
})

if (values.help) {
  console.log(`npm run fuzz -- --seconds N [--seed S [--path P]] [--instances 1|2] [--runs R] [--shrink-seconds M] [--max-batches B] [--max-batch-size C (1 = no concurrency)] [--without ${CMD_KINDS.join(',')}] [--repeat K] [--verbose]`)
  process.exit(0)
}

const instances = Number(values.instances)
if (instances !== 1 && instances !== 2) throw new Error('--instances must be 1 or 2')
const seconds = Number(values.seconds)
const numRuns = Number(values.runs)
const shrinkBudgetMs = Number(values['shrink-seconds']) * 1000
const maxBatches = Number(values['max-batches'])
const maxBatchSize = Number(values['max-batch-size'])
const without = values.without.split(',').filter(Boolean) as Cmd['k'][]
for (const kind of without) if (!(CMD_KINDS as readonly string[]).includes(kind)) throw new Error(`--without: unknown command kind ${kind} (kinds: ${CMD_KINDS.join(', ')})`)

const teardowns: (() => unknown)[] = []
const t = { teardown: (fn: () => unknown) => { teardowns.push(fn) } }
const cleanup = async () => { for (const fn of teardowns.reverse()) await Promise.resolve().then(fn).catch(() => {}) }
process.once('SIGINT', () => { cleanup().then(() => process.exit(130), () => process.exit(130)) })

const harness = await Harness.create(t, { instances, log: values.verbose ? (line) => console.log(line) : undefined })

function report (details: fc.RunDetails<[Scenario]>): void {
  const hint = `npm run fuzz -- --instances ${instances}${without.length ? ` --without ${without.join(',')}` : ''}${maxBatches !== 10 ? ` --max-batches ${maxBatches}` : ''}${maxBatchSize !== 5 ? ` --max-batch-size ${maxBatchSize}` : ''}`
  console.log(`\n=== FAILURE ===\n${formatFailure(details, hint)}`)
}

let failed = false
const started = Date.now()
let seeds = 0
try {
  if (values.seed !== undefined) {
    const seed = Number(values.seed)
    for (let i = 0; i < Number(values.repeat) && !failed; i++) {
      const details = await fc.check(interleavingProperty(harness, { shrinkBudgetMs, maxBatches, maxBatchSize, without }),
        { seed, numRuns, ...(values.path ? { path: values.path } : {}), endOnFailure: values.path !== undefined })
      if (details.failed) { report(details); failed = true } else console.log(`seed ${seed}${values.path ? ` path ${values.path}` : ''}: passed (${details.numRuns} runs)`)
    }
  } else {
    while (!failed && Date.now() - started < seconds * 1000) {
      const seed = Math.floor(Math.random() * 2 ** 31)
      seeds++
      const details = await fc.check(interleavingProperty(harness, { shrinkBudgetMs, maxBatches, maxBatchSize, without }), { seed, numRuns })
      if (details.failed) { report(details); failed = true } else console.log(`seed ${seed}: ${details.numRuns} runs passed (${((Date.now() - started) / 1000).toFixed(0)} s)`)
    }
    if (!failed) console.log(`no failure in ${seeds} seed(s), ${harness.runs} scenario runs, ${((Date.now() - started) / 1000).toFixed(0)} s, ${instances} instance(s); ${await harness.soldOutFromMemory()} SOLD_OUT answered from a sold-out marker`)
  }
} finally {
  await cleanup()
}
process.exit(failed ? 1 : 0)
