// The load test in miniature, as CI runs it: a few thousand requests through the real HTTP stack,
// checking correctness only (timing on a shared CI machine proves nothing).
import t from 'tap'
import { runLoadtest, userSequence } from '../scripts/lib/loadtest.js'

t.test('a small rush issues exactly the quantity, once per user, in Redis and Postgres', async (t) => {
  const report = await runLoadtest({
    quantity: 300,
    users: 3000,
    connections: 50,
    repeatShare: 0.1,
    rushes: 2,
    server: 'inprocess',
    idleProbes: 2,
    env: { LOG_LEVEL: 'silent', CONSUMER_BLOCK_MS: '200' }
  })
  t.equal(report.rushes.length, 2)
  for (const rush of report.rushes) {
    for (const check of rush.checks) t.ok(check.ok, `${check.name}: ${check.detail}`)
    t.equal(rush.issued, 300)
    t.equal(rush.requests, 3300, 'every request was answered')
    t.ok((rush.outcomes['409 ALREADY_ISSUED'] ?? 0) + (rush.outcomes['409 SOLD_OUT'] ?? 0) === 3000, 'everyone else lost with a 409')
    t.ok(rush.persistenceLagMs >= 0, 'Postgres caught up')
  }
  t.equal(report.idlePersistMs.length, 2)
  t.ok(report.idlePersistMs.every((ms) => ms >= 0), 'an issue at idle reaches Postgres')
  t.ok(report.ok)
})

t.test('repeat users are spread among new ones and only name earlier users', async (t) => {
  const seq = userSequence('x', 100, 0.25)
  t.equal(seq.length, 125)
  t.equal(new Set(seq).size, 100)
  const seen = new Set<string>()
  for (const user of seq) {
    if (!seen.has(user)) t.equal(user, `x-u${seen.size}`, 'new users come in order')
    seen.add(user)
  }
})
