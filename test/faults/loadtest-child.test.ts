// The load test against the service as a real child process, with its consumer in another process
// (npm run consume). Lives in the fault suite because it spawns Node processes: in the main suite
// their coverage data made tap's report drop src/ now and then.
import t from 'tap'
import { runLoadtest } from '../../scripts/lib/loadtest.js'

t.test('the same rush against the service in a child process, its consumer in another (npm run consume)', async (t) => {
  const report = await runLoadtest({
    quantity: 100,
    users: 1000,
    connections: 20,
    rushes: 1,
    server: 'child',
    split: true,
    idleProbes: 1,
    env: { LOG_LEVEL: 'silent', CONSUMER_BLOCK_MS: '200' }
  })
  for (const check of report.rushes[0]!.checks) t.ok(check.ok, `${check.name}: ${check.detail}`)
  t.equal(report.rushes[0]!.issued, 100)
  t.ok(report.rushes[0]!.rssAfterMb! > 0, 'the child reports its RSS')
  t.ok(report.idlePersistMs.every((ms) => ms >= 0), 'an issue at idle reaches Postgres')
  t.ok(report.ok)
})
