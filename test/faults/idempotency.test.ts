// Fault 11: a reply is lost and the client retries. The same request twice at once, and again after a
// client timeout, yields one row; with an Idempotency-Key the retry replays the first response.
import t from 'tap'
import { type Call } from './helpers/invariants.js'
import { inProcessScenario } from './helpers/inprocess.js'

interface Sent { status: number, body: any, replayed: boolean }

t.test('retries after a lost reply: one row; Idempotency-Key replays the first response', async (t) => {
  const { base, coupon, check } = await inProcessScenario(t, { RECLAIM_MIN_IDLE_MS: '60000' }, 50)
  const calls: Call[] = []
  const send = async (userId: string, key?: string, signal?: AbortSignal): Promise<Sent> => {
    const started = Date.now()
    const response = await fetch(`${base}/coupons/${coupon.id}/issues`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(key ? { 'idempotency-key': key } : {}) },
      body: JSON.stringify({ userId }),
      signal: signal ?? AbortSignal.timeout(5000)
    })
    const body = await response.json() as any
    calls.push(response.status === 201
      ? { userId, outcome: 'ok', status: 201, issuedAt: body.issuedAt, ms: Date.now() - started }
      : { userId, outcome: 'rejected', status: response.status, code: body.code, ms: Date.now() - started })
    return { status: response.status, body, replayed: response.headers.get('idempotent-replayed') === 'true' }
  }

  // No key: the same request twice at once -> one issue, the other told ALREADY_ISSUED.
  const [a, b] = await Promise.all([send('twice'), send('twice')])
  t.same([a.status, b.status].sort(), [201, 409])
  t.equal([a, b].find((r) => r.status === 409)!.body.code, 'ALREADY_ISSUED')

  // With a key: both get the same 201, one of them replayed.
  const [c, d] = await Promise.all([send('keyed', 'key-1'), send('keyed', 'key-1')])
  t.same([c.status, d.status], [201, 201], 'both concurrent calls with one key get the 201')
  t.equal(c.body.issuedAt, d.body.issuedAt, 'same issuedAt')
  t.same([c.replayed, d.replayed].sort(), [false, true], 'one of them is the replay')

  // The client gives up before the reply (lost reply), then retries with the same key.
  const lost = await fetch(`${base}/coupons/${coupon.id}/issues`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': 'key-2' },
    body: JSON.stringify({ userId: 'impatient' }),
    signal: AbortSignal.timeout(1)
  }).then(() => 'answered', () => 'timed out')
  calls.push({ userId: 'impatient', outcome: lost === 'answered' ? 'ok' : 'timed-out', status: null, ms: 1 })
  calls.pop() // the first call's outcome is unknown to the client; the retry below decides it
  const retry = await send('impatient', 'key-2')
  const again = await send('impatient', 'key-2')
  t.equal(retry.status, 201, 'the retry after a client timeout is a 201')
  t.equal(again.body.issuedAt, retry.body.issuedAt, 'and a later retry replays the same issuedAt')
  t.ok(again.replayed)
  // Without a key, the retry after a lost reply cannot issue a second unit either.
  const noKey = await send('impatient')
  t.equal(noKey.body.code, 'ALREADY_ISSUED')

  // A key reused with a different body.
  const reused = await send('someone-else', 'key-1')
  t.equal(reused.status, 422)
  t.equal(reused.body.code, 'IDEMPOTENCY_KEY_REUSED')

  // Replays count once in the invariants: keep one 201 per user.
  const firstOk = new Set<string>()
  const deduped = calls.filter((c) => c.outcome !== 'ok' || (!firstOk.has(c.userId) && firstOk.add(c.userId)))
  const summary = await check(t, deduped)
  t.equal(summary.rows.length, 3, 'three users, three rows')
})
