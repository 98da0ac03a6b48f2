// Prometheus metrics at GET /metrics: issue outcomes, persistence progress and backlog.
// prom-client over hand-written text exposition: its default process metrics (event loop lag,
// heap, GC) come for free and the format stays right.
import fp from 'fastify-plugin'
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client'
import { consumerGroupInfo } from '../redis/groups.js'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: { registry: Registry, countIssueOutcome: (outcome: string) => void }
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

  fastify.decorate('metrics', { registry, countIssueOutcome })
  fastify.get('/metrics', { schema: { summary: 'Prometheus metrics', tags: ['health'] } }, async (_request, reply) => {
    reply.type(registry.contentType)
    return registry.metrics()
  })
}, { name: 'metrics', dependencies: ['redis', 'consumer'] })
