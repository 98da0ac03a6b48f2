// Fault 2: Postgres goes away for ~8 s under load (shortened from the 30 s to keep CI time sane;
// the consumer's backoff caps at 5 s, so 8 s already spans several retries). Issuing keeps working from
// Redis, the consumer backs off without crashing, acknowledges nothing it has not committed, and
// catches up by itself once Postgres is back.
import t from 'tap'
import pg from 'pg'
import { pollPause, throwawayPostgres, until } from './helpers/procs.js'
import { groupState, load, rowsOf } from './helpers/invariants.js'
import { spawnedScenario } from './helpers/service.js'

t.test('Postgres down for 8 s under load: issuing continues, consumer backs off and catches up', async (t) => {
  const postgres = await throwawayPostgres(t)
  const { databaseUrl, redis, service, coupon, stream, check } = await spawnedScenario(t, {
    adminUrl: postgres.adminUrl,
    total: 5000,
    env: {
      // A periodic reclaim every second of entries idle 0.5 s, and parking after 3 deliveries: an 8 s
      // outage is then far longer than MAX_DELIVERIES reclaims, as a 30 s outage is with the defaults.
      RECLAIM_MIN_IDLE_MS: '500',
      RECLAIM_CRON: '* * * * * *',
      MAX_DELIVERIES: '3',
      CONSUMER_BATCH_SIZE: '25'
    }
  })

  const running = load(() => service.base, coupon.id, { width: 4, maxCalls: 3000, maxMs: 60_000 })
  await until(() => running.calls.filter((c) => c.outcome === 'ok').length >= 20, 10_000, 'some issues before Postgres stops')
  await postgres.stop()
  const downAt = Date.now()
  const okBefore = running.calls.filter((c) => c.outcome === 'ok').length

  // While Postgres is down: the stream keeps what was issued; nothing gets acknowledged.
  // The stream is trimmed only by the ack script, after a commit: while no commit can happen it never shrinks.
  // A batch whose COMMIT was answered just before the stop is acknowledged a moment after it (rightly:
  // it is in Postgres), so the baseline is taken once that moment has passed.
  await pollPause(1000)
  let last = (await groupState(redis, stream)).length
  let shrank = 0
  while (Date.now() - downAt < 8000) {
    const { length } = await groupState(redis, stream)
    if (length < last) shrank++
    last = length
    await pollPause(250)
  }
  const okWhileDown = running.calls.filter((c) => c.outcome === 'ok').length - okBefore
  const duringOutage = await groupState(redis, stream)
  t.ok(okWhileDown > 20, `issuing kept working from Redis while Postgres was down (${okWhileDown} issued)`)
  t.equal(shrank, 0, 'the stream never shrank while Postgres was down: nothing acknowledged without a commit')
  t.ok(duringOutage.pending > 0, `the consumer holds its batch pending, unacknowledged (${duringOutage.pending})`)
  if (!t.equal(service.child.exitCode, null, 'the service did not crash')) t.comment(service.output().slice(-4000))

  await postgres.start()
  await running.stop()
  const summary = await check(t, running.calls, { settleTimeoutMs: 30_000 })
  t.equal(summary.rows.length, summary.ok.length, 'every issue persisted after Postgres returned')
  if (!t.equal(service.child.exitCode, null, 'still the same process: no crash loop')) t.comment(service.output().slice(-4000))
  t.notMatch(service.output(), /FATAL|unhandled/i, 'no fatal or unhandled error in the log')
  t.ok((await rowsOf(databaseUrl, coupon.id)).length > 0)
  const parked = new pg.Client({ connectionString: databaseUrl })
  await parked.connect()
  const failed = (await parked.query('SELECT stream_id, error FROM failed_issue_events')).rows
  await parked.end()
  t.same(failed, [], 'an outage does not turn good entries into failed events (delivery count is not inflated)')
})
