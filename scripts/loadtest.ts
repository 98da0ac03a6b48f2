// `npm run loadtest -- [flags]`: a first-come-first-served rush against the service, then a
// correctness verdict. Exits 1 when any check fails. See docs/load-and-bench.md.
import { parseArgs } from 'node:util'
import { defaultLoadtestOptions, runLoadtest, type LoadtestReport } from './lib/loadtest.js'
import { int, ms, table } from './lib/format.js'

const { values: f } = parseArgs({
  options: {
    quantity: { type: 'string', default: String(defaultLoadtestOptions.quantity) },
    users: { type: 'string', default: String(defaultLoadtestOptions.users) },
    connections: { type: 'string', default: String(defaultLoadtestOptions.connections) },
    repeat: { type: 'string', default: '0' },
    rushes: { type: 'string', default: '1' },
    'in-process': { type: 'boolean', default: false },
    split: { type: 'boolean', default: false },
    url: { type: 'string' },
    'admin-token': { type: 'string' },
    'database-url': { type: 'string' },
    'redis-url': { type: 'string' },
    'redis-prefix': { type: 'string' },
    'log-level': { type: 'string' },
    'backlog-cap': { type: 'string' },
    'cpu-prof': { type: 'string' },
    'idle-probes': { type: 'string', default: '5' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false }
  }
})

if (f.help) {
  console.log(`npm run loadtest -- [--quantity 1000] [--users 50000] [--connections 200] [--repeat 0.1] [--rushes 3]
  [--in-process] [--split] [--log-level warn] [--backlog-cap N] [--cpu-prof DIR] [--idle-probes 5] [--json]
  [--url http://host:port --admin-token T [--database-url URL] [--redis-prefix P [--redis-url URL]]]`)
  process.exit(0)
}

function print (report: LoadtestReport) {
  console.log(`\ncouponrush load test against ${report.target}`)
  for (const [i, r] of report.rushes.entries()) {
    console.log(`\nrush ${i + 1}: coupon ${r.couponId}, ${int(r.requests)} requests in ${r.seconds.toFixed(2)} s`)
    console.log(table([
      ['requests/s', 'p50', 'p90', 'p99', 'max'],
      [int(r.rps), ms(r.latencyMs.p50), ms(r.latencyMs.p90), ms(r.latencyMs.p99), ms(r.latencyMs.max)]
    ]))
    console.log('outcomes:')
    console.log(table(Object.entries(r.outcomes).sort().map(([k, v]) => [`  ${k}`, int(v)])))
    if (r.errors || r.timeouts) console.log(`  socket errors ${r.errors}, timeouts ${r.timeouts}`)
    console.log(`persistence lag after the last response: ${r.persistenceLagMs < 0 ? 'never caught up' : ms(r.persistenceLagMs)}` +
      (r.maxBacklog === null ? '' : `; largest unpersisted backlog during the rush: ${int(r.maxBacklog)} entries (${(r.maxBacklog / r.rps).toFixed(2)} s of traffic), ${r.maxBacklogAtS!.toFixed(1)} s into the rush`))
    if (r.backlogPerSecond.length > 0) console.log(`backlog, largest per second: ${r.backlogPerSecond.map(int).join(' ')}`)
    if (r.rssAfterMb !== null) console.log(`server RSS: ${r.rssBeforeMb!.toFixed(0)} MB before, ${r.rssAfterMb.toFixed(0)} MB after`)
    for (const c of r.checks) console.log(`  ${c.ok ? 'ok  ' : 'FAIL'} ${c.name} (${c.detail})`)
  }
  if (report.rssGrowthMb !== null) console.log(`\nRSS growth from the first rush to the last: ${report.rssGrowthMb.toFixed(1)} MB`)
  if (report.idlePersistMs.length > 0) console.log(`at idle, 201 -> row in Postgres: ${report.idlePersistMs.map((x) => ms(x)).join(', ')}`)
  console.log(`\n${report.ok ? 'CORRECT' : 'INCORRECT'}`)
}

const report = await runLoadtest({
  quantity: Number(f.quantity),
  users: Number(f.users),
  connections: Number(f.connections),
  repeatShare: Number(f.repeat),
  rushes: Number(f.rushes),
  server: f['in-process'] ? 'inprocess' : 'child',
  split: f.split,
  url: f.url,
  adminToken: f['admin-token'],
  databaseUrl: f['database-url'],
  redisUrl: f['redis-url'],
  redisPrefix: f['redis-prefix'],
  env: {
    ...(f['log-level'] ? { LOG_LEVEL: f['log-level'] } : {}),
    ...(f['backlog-cap'] ? { BACKLOG_CAP: f['backlog-cap'] } : {})
  },
  cpuProfDir: f['cpu-prof'],
  idleProbes: Number(f['idle-probes']),
  progress: !f.json
}, f.json ? () => {} : (line) => console.error(line))

if (f.json) console.log(JSON.stringify(report, null, 2))
else print(report)
process.exitCode = report.ok ? 0 : 1
