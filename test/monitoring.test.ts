// The monitoring profile: the compose file, Prometheus config and Grafana provisioning parse and fit
// together (no container engine runs here), and every metric the dashboard queries is one /metrics
// exports (no dead panels). Also the issue-latency histogram and the lag gauge.
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse } from 'yaml'
import { CONSUMER_GROUP } from '../src/redis/keys.js'
import { oldestUnacknowledgedMs } from '../src/persistence/lag.js'
import { createCoupon, testApp } from './helpers/env.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const read = (path: string) => readFileSync(`${root}${path}`, 'utf8')
const dashboard = JSON.parse(read('docs/grafana/couponrush.json'))
const expressions: string[] = dashboard.panels.flatMap((p: any) => p.targets.map((target: any) => target.expr))

t.test('docker-compose.yml: prometheus and grafana only under the monitoring profile, mounting files that exist', async (t) => {
  const compose = parse(read('docker-compose.yml'))
  for (const name of ['app', 'redis', 'postgres']) t.equal(compose.services[name].profiles, undefined, `${name} starts with a plain docker compose up`)
  for (const name of ['prometheus', 'grafana']) {
    const service = compose.services[name]
    t.same(service.profiles, ['monitoring'], `${name} is in the monitoring profile`)
    for (const volume of service.volumes as string[]) {
      const [source] = volume.split(':')
      if (source!.startsWith('./')) t.ok(existsSync(`${root}${source!.slice(2)}`), `${name} mounts ${source}, which exists`)
      else t.ok(source! in compose.volumes, `${name}'s volume ${source} is declared`)
    }
  }
  const grafanaMounts = compose.services.grafana.volumes as string[]
  const provider = parse(read('docs/grafana/provisioning/dashboards/couponrush.yml'))
  const dashboardsPath = provider.providers[0].options.path
  t.ok(grafanaMounts.some((v) => v.startsWith('./docs/grafana/couponrush.json:') && v.split(':')[1]!.startsWith(`${dashboardsPath}/`)),
    'the dashboard is mounted where the provider looks')
  t.ok(grafanaMounts.some((v) => v.startsWith('./docs/grafana/provisioning:/etc/grafana/provisioning')), 'provisioning is mounted')
  t.ok(compose.services.prometheus.volumes.some((v: string) => v.startsWith('./docs/grafana/prometheus.yml:/etc/prometheus/prometheus.yml')), 'prometheus gets its config')
})

t.test('prometheus.yml scrapes the app; the datasource is the one the dashboard names', async (t) => {
  const prometheus = parse(read('docs/grafana/prometheus.yml'))
  const job = prometheus.scrape_configs.find((j: any) => j.job_name === 'couponrush')
  t.equal(job.metrics_path, '/metrics')
  t.same(job.dns_sd_configs[0], { names: ['app'], type: 'A', port: 3000 }, 'the compose service and its port')
  const datasources = parse(read('docs/grafana/provisioning/datasources/prometheus.yml'))
  const ds = datasources.datasources[0]
  t.equal(ds.url, 'http://prometheus:9090')
  const uids = new Set(dashboard.panels.flatMap((p: any) => [p.datasource.uid, ...p.targets.map((target: any) => target.datasource.uid)]))
  t.same([...uids], [ds.uid], 'every panel uses the provisioned datasource')
  t.equal(new Set(dashboard.panels.map((p: any) => p.id)).size, dashboard.panels.length, 'panel ids are unique')
})

t.test('every metric the dashboard queries is exported by /metrics', async (t) => {
  const app = await testApp(t, { CONSISTENCY_CRON: '' })
  const coupon = await createCoupon(app, { totalQuantity: 1 })
  for (const userId of ['a', 'b']) await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId } })
  const body = (await app.inject({ method: 'GET', url: '/metrics' })).body
  const exported = new Set(body.split('\n').filter((line) => line !== '' && !line.startsWith('#')).map((line) => /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)![0]))
  const queried = new Set(expressions.flatMap((expr) => expr.match(/\bcouponrush_[a-z0-9_]+/g) ?? []))
  t.ok(queried.size >= 14, `the dashboard queries ${queried.size} metrics`)
  for (const name of queried) t.ok(exported.has(name), `${name} is exported`)
  for (const needed of ['couponrush_issue_requests_total', 'couponrush_issue_request_duration_seconds_bucket', 'couponrush_stream_backlog',
    'couponrush_persistence_lag_seconds', 'couponrush_persisted_rows_total', 'couponrush_failed_events_total', 'couponrush_process_cpu_seconds_total',
    'couponrush_process_resident_memory_bytes', 'couponrush_inconsistencies', 'couponrush_sold_out_from_memory_total']) {
    t.ok(queried.has(needed), `a panel shows ${needed}`)
  }
  t.match(body, /couponrush_issue_request_duration_seconds_count 2/, 'both issue requests were timed')
  const other = await app.inject({ method: 'GET', url: `/coupons/${coupon.id}` })
  t.equal(other.statusCode, 200)
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /couponrush_issue_request_duration_seconds_count 2/, 'other routes are not timed')
})

t.test('persistence lag: the age of the oldest unacknowledged entry, pending or undelivered', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false', CONSISTENCY_CRON: '' })
  const coupon = await createCoupon(app, { totalQuantity: 5 })
  const k = app.keys.coupon(coupon.id)
  t.equal(await oldestUnacknowledgedMs(app.redis, k.events), null, 'an empty stream has no lag')
  const first = await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'a' } })
  const issuedAt = Date.parse(first.json().issuedAt)
  // The lag counts from the entry's id, which XADD takes from the clock a little after the script read
  // TIME for issuedAt: the same millisecond, or a later one when the script crossed a millisecond.
  const entries = await app.redis.xrange(k.events, '-', '+') as [string, string[]][]
  const entryMs = Number(entries[0]![0].split('-')[0])
  t.ok(entryMs >= issuedAt && entryMs <= issuedAt + 50, `the entry's id (${entryMs}) is the moment of issue (${issuedAt}), give or take the script's run`)
  t.equal(await oldestUnacknowledgedMs(app.redis, k.events), entryMs, 'undelivered')
  await app.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'slow', 'COUNT', 10, 'STREAMS', k.events, '>')
  t.equal(await oldestUnacknowledgedMs(app.redis, k.events), entryMs, 'pending')
  t.equal(await oldestUnacknowledgedMs(app.redis, `${k.events}:none`), null, 'no stream, no group')
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /couponrush_persistence_lag_seconds \d/)
})
