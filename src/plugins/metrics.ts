// Prometheus metrics at GET /metrics: issue outcomes, persistence progress and backlog.
// prom-client over hand-written text exposition: its default process metrics (event loop lag,
// heap, GC) come for free and the format stays right.
import fp from 'fastify-plugin'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { sql } from 'drizzle-orm'
import { consumerGroupInfo } from '../redis/groups.js'
import { oldestUnacknowledgedMs } from '../persistence/lag.js'

/** the route whose latency is measured */
export const ISSUE_ROUTE = '/coupons/:couponId/issues'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: {
      registry: Registry
      countIssueOutcome: (outcome: string) => void
      /** a SOLD_OUT answered from this process's sold-out marker, without a Redis call */
      countSoldOutFromMemory: () => void
    }
  }
}

export default fp(async function metricsPlugin (fastify) {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'couponrush_' })
  const issueOutcomes = new Counter({
    name: 'couponrush_issue_requests_total',
    help: 'Issue requests by outcome (issued, or the error code)',
    labelNames: ['outcome'],
    registers: [registry]
  })
  // Children are cached so the hot path does no label lookups.
  const children = new Map<string, Counter.Internal>()
  const countIssueOutcome = (outcome: string) => {
    let child = children.get(outcome)
    if (!child) children.set(outcome, child = issueOutcomes.labels(outcome))
    child.inc()
  }

  const soldOutFromMemory = new Counter({
    name: 'couponrush_sold_out_from_memory_total',
    help: 'SOLD_OUT answers given from the sold-out marker without asking Redis (also counted in couponrush_issue_requests_total)',
    registers: [registry]
  })
  const countSoldOutFromMemory = () => soldOutFromMemory.inc()

  // eslint-disable-next-line no-new -- prom-client: constructing the gauge registers it in `registry`
  new Gauge({
    name: 'couponrush_stream_backlog',
    help: 'Issue events in the streams not yet acknowledged by the consumer group (lag + pending), summed over active coupons',
    registers: [registry],
    async collect () {
      const ids = await fastify.redis.smembers(fastify.keys.activeCoupons)
      let backlog = 0
      await Promise.all(ids.map(async (id) => {
        const group = await consumerGroupInfo(fastify.redis, fastify.keys.coupon(id).events)
        if (group) backlog += (group.lag ?? 0) + group.pending
      }))
      this.set(backlog)
    }
  })

  // eslint-disable-next-line no-new -- registered in `registry` by the constructor
  new Gauge({
    name: 'couponrush_persistence_lag_seconds',
    help: 'Age of the oldest issue event not yet acknowledged by the consumer group (0 when caught up), over active coupons',
    registers: [registry],
    async collect () {
      const ids = await fastify.redis.smembers(fastify.keys.activeCoupons)
      const oldest = await Promise.all(ids.map((id) => oldestUnacknowledgedMs(fastify.redis, fastify.keys.coupon(id).events)))
      const [seconds, micros] = await fastify.redis.time()
      const nowMs = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000)
      const first = Math.min(...oldest.filter((ms): ms is number => ms !== null))
      this.set(Number.isFinite(first) ? Math.max(0, nowMs - first) / 1000 : 0)
    }
  })

  // eslint-disable-next-line no-new -- registered in `registry` by the constructor
  new Gauge({
    name: 'couponrush_inconsistencies',
    help: 'Active coupons whose Redis counters disagreed with Postgres plus the unpersisted entries at their last periodic check (src/consistency/watch.ts)',
    registers: [registry],
    collect () { this.set(fastify.consistencyWatch.inconsistent) }
  })

  // The issue endpoint's latency, on that route only (an onResponse hook added as the route is
  // registered). reply.elapsedTime is Fastify's own clock, so this costs one observe() per request.
  const issueDuration = new Histogram({
    name: 'couponrush_issue_request_duration_seconds',
    help: 'Time from request to response of POST /coupons/:couponId/issues, every outcome',
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [registry]
  })
  const observeIssue = async (_request: FastifyRequest, reply: FastifyReply) => { issueDuration.observe(reply.elapsedTime / 1000) }
  fastify.addHook('onRoute', (route) => {
    if (route.url !== ISSUE_ROUTE || route.method !== 'POST') return
    const hooks = route.onResponse
    route.onResponse = hooks === undefined ? [observeIssue] : [...(Array.isArray(hooks) ? hooks : [hooks]), observeIssue]
  })

  // Counted as the consumer reports them (its events), not read back from its stats.
  const counter = (name: string, help: string) => new Counter({ name, help, registers: [registry] })
  const persistedRows = counter('couponrush_persisted_rows_total', 'Rows this process inserted into coupon_issues')
  const duplicates = counter('couponrush_persist_duplicates_total', 'Redelivered events that were already persisted')
  const parked = counter('couponrush_failed_events_total', 'Entries this process parked in failed_issue_events')
  const batches = counter('couponrush_persist_batches_total', 'Batches this process committed')
  const deletedWhilePending = counter('couponrush_deleted_while_pending_total', 'Pending entries found deleted from the stream before persistence')
  const backoffs = counter('couponrush_consumer_backoffs_total', 'Rounds the consumer failed and retried (database or Redis unwell)')
  fastify.consumer?.on('batch', (outcome) => {
    batches.inc()
    persistedRows.inc(outcome.inserted)
    duplicates.inc(outcome.duplicates)
    parked.inc(outcome.failed)
  })
  fastify.consumer?.on('reclaimed', ({ deletedWhilePending: deleted }) => { deletedWhilePending.inc(deleted) })
  fastify.consumer?.on('backoff', () => { backoffs.inc() })

  const webhookAttempts = new Counter({
    name: 'couponrush_webhook_attempts_total',
    help: 'Webhook delivery attempts this process made, by outcome (delivered: a 2xx; failed: anything else, a timeout or a connection error)',
    labelNames: ['outcome'],
    registers: [registry]
  })
  fastify.deliveryLoop?.on('attempt', (outcome) => { webhookAttempts.inc({ outcome }) })
  // eslint-disable-next-line no-new -- registered in `registry` by the constructor
  new Gauge({
    name: 'couponrush_webhook_deliveries_pending',
    help: 'Webhook deliveries not yet delivered nor given up (waiting for their next attempt or in flight), all instances',
    registers: [registry],
    async collect () {
      // Served by the partial index of pending deliveries.
      const result: any = await fastify.db.execute(sql`SELECT count(*)::int AS n FROM webhook_deliveries WHERE status = 'pending'`).catch(() => null)
      if (result) this.set(Number((result.rows ?? result)[0].n))
    }
  })

  fastify.decorate('metrics', { registry, countIssueOutcome, countSoldOutFromMemory })
  fastify.get('/metrics', { schema: { summary: 'Prometheus metrics', tags: ['health'] } }, async (_request, reply) => {
    reply.type(registry.contentType)
    return registry.metrics()
  })
}, { name: 'metrics', dependencies: ['redis', 'database', 'consumer', 'consistency-watch', 'webhooks'] })
