// Model-based interleaving test: fast-check generates batches of concurrent calls (issue, duplicate
// issue, Idempotency-Key retries, cancel, cancel+re-claim pipelined on one socket, PATCH stock and
// window, counters lost, consumers stopped/started, drains, the periodic tick, redeem, rollback, the
// expiry job, the clock passing validUntil) against the real service
// (sold-out markers on, so SOLD_OUT answered from memory is judged by the same model)
// over HTTP, one and two app instances on the same Redis and Postgres. After every batch the counters
// must be what the answers imply; after a drain Postgres must hold every 201 once with its issuedAt,
// exactly the cancelled claims revoked, and a counter rebuild must reproduce the live counters.
// What each invariant means: INVARIANTS in test/interleavings/model.ts. Longer runs: npm run fuzz.
//
// Fixed seeds, few runs, a bounded shrink: a failure prints the seed, the replay path, the shrunk
// command sequence and the broken invariants with their numbers. Replay here with
// FUZZ_SEED=<seed> FUZZ_PATH=<path> [FUZZ_INSTANCES=1|2] npx tap test/interleavings.test.ts, or with
// npm run fuzz -- --seed <seed> --path <path>. Real concurrency: a race may need a replay or two.
import t from 'tap'
import fc from 'fast-check'
import { formatFailure, Harness, interleavingProperty } from './interleavings/harness.js'

const replay = process.env.FUZZ_SEED === undefined
  ? null
  : { seed: Number(process.env.FUZZ_SEED), path: process.env.FUZZ_PATH, instances: Number(process.env.FUZZ_INSTANCES ?? 1) }

const suites = [
  { instances: 1 as const, seed: 20251123, numRuns: 20, shrinkBudgetMs: 8_000 },
  { instances: 2 as const, seed: 4242, numRuns: 24, shrinkBudgetMs: 8_000 }
].filter((s) => replay === null || s.instances === replay.instances)

/** per suite: SOLD_OUT answers given from a sold-out marker (the model judged those too) */
const fromMemory: number[] = []

for (const suite of suites) {
  t.test(`${suite.instances} instance(s): random interleavings keep every invariant`, async (t) => {
    const harness = await Harness.create(t, { instances: suite.instances })
    const seed = replay?.seed ?? suite.seed
    const started = Date.now()
    const details = await fc.check(interleavingProperty(harness, { shrinkBudgetMs: suite.shrinkBudgetMs }), {
      seed,
      numRuns: suite.numRuns,
      ...(replay?.path ? { path: replay.path, endOnFailure: true } : {})
    })
    const took = `${harness.runs} runs incl. shrinking, ${Date.now() - started} ms, ${await harness.soldOutFromMemory()} SOLD_OUT answered from a sold-out marker`
    if (details.failed) {
      const report = formatFailure(details, `npm run fuzz -- --instances ${suite.instances}`)
      t.fail(`interleavings broke an invariant (seed ${seed}, path ${details.counterexamplePath}, ${suite.instances} instance(s), ${took})`,
        { diagnostic: true, stack: '', report })
    } else {
      t.pass(`seed ${seed}, ${took}`)
    }
    fromMemory.push(await harness.soldOutFromMemory())
  })
}

// Tap runs these one after the other, so this one sees the counts of both suites above.
if (replay === null) {
  t.test('the runs reached the sold-out markers (their SOLD_OUT answers were judged by the model too)', async (t) => {
    t.ok(fromMemory.reduce((a, b) => a + b, 0) > 0, `answered from memory per suite: ${fromMemory.join(', ')}`)
  })
}
