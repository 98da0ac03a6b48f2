// One load generator for every measurement: autocannon's programmatic API, POSTing the issue body
// with a fresh userId per request. The bench and the load test use the same settings for every
// target, so their numbers can be divided by each other.
import autocannon from 'autocannon'

export interface CannonOptions {
  url: string
  path: string
  connections: number
  /** stop after this many requests ... */
  amount?: number
  /** ... or after this many seconds */
  duration?: number
  /** the userId of the i-th request (i counts from 0 across all connections) */
  userOf: (i: number) => string
  /** read every response body to count outcomes by error code and collect issued userIds */
  collectOutcomes?: boolean
  /** autocannon's progress bar (on a TTY only) */
  progress?: boolean
  title?: string
  headers?: Record<string, string>
}

export interface CannonResult {
  requests: number
  seconds: number
  rps: number
  latencyMs: { p50: number, p90: number, p99: number, max: number, mean: number }
  /** status code -> count */
  statuses: Record<string, number>
  /** "409 SOLD_OUT" -> count (only with collectOutcomes) */
  outcomes: Record<string, number>
  /** userIds answered 201 (only with collectOutcomes) */
  issuedUsers: string[]
  errors: number
  timeouts: number
  /** Date.now() when the last response arrived */
  endedAt: number
}

const CODE = /"code":"([A-Z_]+)"/

export async function runCannon (o: CannonOptions): Promise<CannonResult> {
  let sent = 0
  const outcomes: Record<string, number> = {}
  const issuedUsers: string[] = []
  const request: autocannon.Request = {
    method: 'POST',
    path: o.path,
    headers: { 'content-type': 'application/json', ...o.headers },
    setupRequest: (req) => ({ ...req, body: `{"userId":"${o.userOf(sent++)}"}` })
  }
  if (o.collectOutcomes) {
    request.onResponse = (status, body) => {
      let key = String(status)
      if (status === 201) {
        const user = /"userId":"([^"]+)"/.exec(body)?.[1]
        if (user) issuedUsers.push(user)
        key += ' ISSUED'
      } else {
        key += ` ${CODE.exec(body)?.[1] ?? '?'}`
      }
      outcomes[key] = (outcomes[key] ?? 0) + 1
    }
  }
  const started = Date.now()
  let done!: (result: autocannon.Result) => void
  let failed!: (err: Error) => void
  const finished = new Promise<autocannon.Result>((resolve, reject) => { done = resolve; failed = reject })
  // The callback form returns the instance the progress tracker needs.
  const instance = autocannon({
    url: o.url,
    connections: o.connections,
    pipelining: 1,
    timeout: 10,
    ...(o.amount ? { amount: o.amount } : { duration: o.duration ?? 10 }),
    requests: [request],
    title: o.title
  }, (err, result) => err ? failed(err) : done(result))
  if (o.progress && process.stderr.isTTY) {
    autocannon.track(instance, { outputStream: process.stderr, renderProgressBar: true, renderResultsTable: false, renderLatencyTable: false })
  }
  const result = await finished
  const endedAt = Date.now()
  const statuses: Record<string, number> = {}
  for (const [code, stat] of Object.entries(result.statusCodeStats ?? {})) statuses[code] = stat?.count ?? 0
  const requests = Object.values(statuses).reduce((a, b) => a + b, 0)
  const seconds = (endedAt - started) / 1000
  const l = result.latency as unknown as Record<string, number>
  return {
    requests,
    seconds,
    rps: requests / seconds,
    latencyMs: { p50: l.p50!, p90: l.p90!, p99: l.p99!, max: l.max!, mean: l.average! },
    statuses,
    outcomes,
    issuedUsers,
    errors: result.errors,
    timeouts: result.timeouts,
    endedAt
  }
}
