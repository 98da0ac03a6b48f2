// The model-based interleaving test, pure part: the commands, their generators, and the reference
// model that says which answers are consistent with SOME serialization of a batch of concurrent calls.
// The I/O part (driving the real service, sampling Redis, the checks after a drain) is harness.ts;
// test/interleavings.test.ts and scripts/fuzz.ts both build on these two files.
//
// A scenario is one coupon and a list of batches. The commands of a batch are fired at once (real
// HTTP, several connections, some pairs pipelined on one socket); batches run one after the other, so
// between two batches every answer is in and the model knows exactly what Redis must hold.
import fc from 'fast-check'

export type WindowTo = 'ended' | 'endedLongAgo' | 'open'

export type Cmd =
  /** POST /coupons/:id/issues; key: index of the user's Idempotency-Key (null = none) */
  | { k: 'issue', u: number, via: number, key: number | null }
  /** DELETE /coupons/:id/issues/:user */
  | { k: 'cancel', u: number, via: number }
  /** n issues without a key by users u, u+1, …, fired at once: after a sell-out these meet the sold-out markers */
  | { k: 'rush', u: number, n: number, via: number }
  /** cancel and re-claim pipelined on one socket: the two land in Redis within microseconds */
  | { k: 'reclaim', u: number, via: number }
  /** claim and cancel pipelined on one socket (the issue and its revoke reach the consumers back to back) */
  | { k: 'issueCancel', u: number, via: number }
  /** PATCH {totalQuantity} */
  | { k: 'total', to: number, via: number }
  /** PATCH {endsAt}: a second ago, two minutes ago (older than the consumer's prune grace), an hour ahead */
  | { k: 'window', to: WindowTo, via: number }
  /** POST /coupons/:id/pause (on) or /resume */
  | { k: 'pause', on: boolean, via: number }
  /** delete the coupon's counter keys (meta, stock, holders, claims); idem: its Idempotency-Key records too (Redis lost them) */
  | { k: 'lose', idem: boolean }
  /** app.consumer.stop() / start() on one instance */
  | { k: 'consumer', on: boolean, via: number }
  /** a separate IssueEventConsumer's drain(), concurrently with whatever runs */
  | { k: 'drain' }
  /** the periodic maintenance tick (reclaim + prune ended streams), after letting the consumers catch up */
  | { k: 'tick', via: number }
  /** GET /coupons/:id (a read; triggers a rebuild when counters are missing) */
  | { k: 'get', via: number }
  /** POST /codes/:code/redemptions: the code of the n-th unit handed out so far (mod their number), for order o<order> */
  | { k: 'redeem', n: number, order: number, via: number }
  /** DELETE /codes/:code/redemptions/o<order>: the same choice of unit */
  | { k: 'rollback', n: number, order: number, via: number }
  /** the expiry job's run on one instance (app.expiryJob.tick()) */
  | { k: 'expire', via: number }
  /**
   * The campaign's validUntil passes, before the batch's other commands start: every unit out and every
   * unit issued from then on is expired (a one-way step; again is a no-op)
   */
  | { k: 'clock' }

export interface Scenario {
  total: number
  perUserLimit: number
  users: number
  batches: Cmd[][]
}

export const userName = (sc: Pick<Scenario, 'users'>, u: number) => `u${u % sc.users}`
export const idemKeyName = (sc: Pick<Scenario, 'users'>, u: number, key: number) => `${userName(sc, u)}-k${key}`

export function formatCmd (c: Cmd): string {
  switch (c.k) {
    case 'issue': return `issue u${c.u}@${c.via}${c.key === null ? '' : ` key=k${c.key}`}`
    case 'cancel': return `cancel u${c.u}@${c.via}`
    case 'rush': return `rush u${c.u}..u${c.u + c.n - 1}@${c.via}`
    case 'reclaim': return `cancel+reclaim u${c.u}@${c.via}`
    case 'issueCancel': return `issue+cancel u${c.u}@${c.via}`
    case 'total': return `total=${c.to}@${c.via}`
    case 'window': return `window=${c.to}@${c.via}`
    case 'pause': return `${c.on ? 'pause' : 'resume'}@${c.via}`
    case 'lose': return c.idem ? 'lose counters+idempotency' : 'lose counters'
    case 'consumer': return `consumer.${c.on ? 'start' : 'stop'}@${c.via}`
    case 'drain': return 'drain'
    case 'tick': return `tick@${c.via}`
    case 'get': return `get@${c.via}`
    case 'redeem': return `redeem #${c.n} o${c.order}@${c.via}`
    case 'rollback': return `rollback #${c.n} o${c.order}@${c.via}`
    case 'expire': return `expire@${c.via}`
    case 'clock': return 'clock passes validUntil'
  }
}

export function formatScenario (sc: Scenario): string {
  const head = `coupon total=${sc.total} perUserLimit=${sc.perUserLimit} users=${sc.users} (user uN means u(N mod ${sc.users}), @i = instance i)`
  return [head, ...sc.batches.map((b, i) => `  batch ${i}: ${b.map(formatCmd).join(' | ')}`)].join('\n')
}

const printable = <T extends object>(value: T, show: (v: T) => string): T =>
  Object.defineProperty(value, fc.toStringMethod, { value: () => show(value), enumerable: false })

export const CMD_KINDS = ['issue', 'rush', 'cancel', 'reclaim', 'issueCancel', 'total', 'window', 'pause', 'lose', 'consumer', 'drain', 'tick', 'get', 'redeem', 'rollback', 'expire', 'clock'] as const

export interface ScenarioOptions {
  maxBatches?: number
  maxBatchSize?: number
  /** command kinds not to generate (to look past a known defect that every run hits first) */
  without?: Cmd['k'][]
}

export function scenarioArbitrary ({ maxBatches = 10, maxBatchSize = 5, without = [] }: ScenarioOptions = {}): fc.Arbitrary<Scenario> {
  const u = fc.integer({ min: 0, max: 5 })
  const via = fc.integer({ min: 0, max: 1 })
  const kinds: { arbitrary: fc.Arbitrary<Cmd>, weight: number }[] = [
    { arbitrary: fc.record({ k: fc.constant('issue' as const), u, via, key: fc.constant(null) }), weight: 6 },
    { arbitrary: fc.record({ k: fc.constant('issue' as const), u, via, key: fc.integer({ min: 0, max: 1 }) }), weight: 4 },
    { arbitrary: fc.record({ k: fc.constant('rush' as const), u, n: fc.integer({ min: 2, max: 6 }), via }), weight: 3 },
    { arbitrary: fc.record({ k: fc.constant('cancel' as const), u, via }), weight: 3 },
    { arbitrary: fc.record({ k: fc.constant('reclaim' as const), u, via }), weight: 2 },
    { arbitrary: fc.record({ k: fc.constant('issueCancel' as const), u, via }), weight: 2 },
    { arbitrary: fc.record({ k: fc.constant('total' as const), to: fc.integer({ min: 1, max: 12 }), via }), weight: 3 },
    { arbitrary: fc.record({ k: fc.constant('window' as const), to: fc.constantFrom('open' as const, 'ended' as const, 'endedLongAgo' as const), via }), weight: 2 },
    { arbitrary: fc.record({ k: fc.constant('pause' as const), on: fc.boolean(), via }), weight: 2 },
    { arbitrary: fc.record({ k: fc.constant('lose' as const), idem: fc.boolean() }), weight: 2 },
    { arbitrary: fc.record({ k: fc.constant('consumer' as const), on: fc.boolean(), via }), weight: 1 },
    { arbitrary: fc.record({ k: fc.constant('drain' as const) }), weight: 1 },
    { arbitrary: fc.record({ k: fc.constant('tick' as const), via }), weight: 2 },
    { arbitrary: fc.record({ k: fc.constant('get' as const), via }), weight: 1 },
    { arbitrary: fc.record({ k: fc.constant('redeem' as const), n: fc.integer({ min: 0, max: 20 }), order: fc.integer({ min: 0, max: 2 }), via }), weight: 4 },
    { arbitrary: fc.record({ k: fc.constant('rollback' as const), n: fc.integer({ min: 0, max: 20 }), order: fc.integer({ min: 0, max: 2 }), via }), weight: 2 },
    { arbitrary: fc.record({ k: fc.constant('expire' as const), via }), weight: 3 },
    { arbitrary: fc.record({ k: fc.constant('clock' as const) }), weight: 1 }
  ]
  const chosen = kinds.filter(({ arbitrary }) => !without.includes(fc.sample(arbitrary, 1)[0]!.k))
  if (chosen.length === 0) throw new Error('every command kind excluded')
  const cmd = fc.oneof(...chosen).map((c) => printable(c as Cmd, formatCmd))
  return fc.record({
    total: fc.integer({ min: 3, max: 10 }),
    perUserLimit: fc.integer({ min: 1, max: 3 }),
    users: fc.integer({ min: 3, max: 6 }),
    batches: fc.array(fc.array(cmd, { minLength: 1, maxLength: maxBatchSize }), { minLength: 1, maxLength: maxBatches })
  }).map((sc) => printable(sc, formatScenario))
}

// ------------------------------------------------------------------------------------------ answers

export type Op = 'issue' | 'cancel' | 'patchTotal' | 'patchWindow' | 'pause' | 'get' | 'redeem' | 'rollback' | 'expire'

export interface Answer {
  batch: number
  op: Op
  user?: string
  key?: string
  /** PATCH totalQuantity asked for */
  to?: number
  window?: WindowTo
  /** pause: true for /pause, false for /resume */
  paused?: boolean
  /** redeem / rollback: the unit ("user#claim") and the order */
  unit?: string
  order?: string
  /** HTTP status; 0 = no answer (connection failed) */
  status: number
  code?: string
  body: any
  replayed: boolean
}

/** One broken invariant: which one, and the concrete numbers. */
export class Violation {
  constructor (readonly invariant: string, readonly message: string) {}
  toString () { return `(${this.invariant}) ${this.message}` }
}

export const INVARIANTS: Record<string, string> = {
  a: 'issued <= total at every observed moment (Redis stock + held = total in force, stock >= 0, remaining >= 0)',
  b: 'every 201 has exactly one row with created_at = its issuedAt (and no row without a 201; the stream fully consumed)',
  c: 'exactly the cancelled claims are revoked in Postgres',
  d: 'remaining = total - active holders',
  e: 'a counter rebuild reproduces the live counters exactly',
  f: 'no 5xx other than 503 with a code, every non-2xx has a code',
  g: 'a retry with the same Idempotency-Key replays the first 201 (same claim, same issuedAt)',
  m: 'the answers of a batch are consistent with some serialization of it',
  r: 'at most one active redemption per code, held by an order whose redemption answered 201; redemption answers consistent with some serialization',
  x: 'a redeemed unit is never returned to stock at expiry nor cancelled unforced; returns only after validUntil, before the end, as many as the job said',
  q: 'after each batch, Redis counters equal what the answers imply'
}

interface Claim { issuedAt: string, batch: number }

/** What Redis says about the units after a batch (the harness reads it once every answer is in). */
export interface Observed {
  /** units ("user#claim") the expiry job returned to stock, so far */
  returned: Set<string>
  /** unit -> the order holding its redemption now */
  redeemed: Map<string, string>
}
interface Cancel { user: string, units: number, revokedAt: string, batch: number }

/** Codes an issue script does not remember under an Idempotency-Key (a later retry may still succeed). */
const NOT_REMEMBERED = new Set(['ENDED', 'NOT_STARTED', 'PAUSED', 'BACKLOG_FULL', 'RESTORING', 'REDIS_UNAVAILABLE', 'ISSUE_SCRIPT_FAILED', 'DATABASE_UNAVAILABLE'])

/**
 * What the answers so far imply. Per user: the claims answered 201 (claim numbers never repeat), and
 * the units given back by successful cancels. A cancel takes back everything the user holds, so the
 * cancelled claims are always a prefix of the user's claims in claim order: with claims 1..n and
 * cancels totalling c units, claims 1..c are revoked and c+1..n are active, whatever the timing.
 */
export class Model {
  readonly claims = new Map<string, Map<number, Claim>>()
  readonly cancelled = new Map<string, number>()
  readonly cancels: Cancel[] = []
  readonly keyAnswers = new Map<string, Answer[]>()
  /** batches in which the harness deleted the coupon's Idempotency-Key records */
  readonly idempotencyLost: number[] = []
  total: number
  endsAt: number | null
  paused = false
  readonly limit: number
  readonly users: string[]
  /** "user#claim" -> its code, from the 201s; `units` in the order they were first answered */
  readonly codes = new Map<string, string>()
  readonly units: string[] = []
  /** unit -> the order holding its redemption (as checked against the answers) */
  readonly redeemedBy = new Map<string, string>()
  /** user -> claims the expiry job returned to stock */
  readonly returned = new Map<string, Set<number>>()
  /** the clock passed validUntil: every unit out, and every unit issued from then on, is expired */
  expired = false

  constructor (readonly sc: Scenario, endsAt: number | null) {
    this.total = sc.total
    this.endsAt = endsAt
    this.limit = sc.perUserLimit
    this.users = Array.from({ length: sc.users }, (_, i) => `u${i}`)
  }

  claimsOf (user: string): Map<number, Claim> {
    let claims = this.claims.get(user)
    if (!claims) this.claims.set(user, claims = new Map())
    return claims
  }

  held (user: string): number {
    return this.claimsOf(user).size - (this.cancelled.get(user) ?? 0) - this.returnedOf(user).size
  }

  returnedOf (user: string): Set<number> {
    let returned = this.returned.get(user)
    if (!returned) this.returned.set(user, returned = new Set())
    return returned
  }

  /** The unit a redeem or rollback command names: the n-th unit handed out before the batch (null: none yet). */
  unitFor (n: number): { unit: string, code: string } | null {
    if (this.units.length === 0) return null
    const unit = this.units[n % this.units.length]!
    return { unit, code: this.codes.get(unit)! }
  }

  /**
   * Claims a cancel took back: a cancel takes everything the user holds, and claim numbers only grow, so
   * among the claims the expiry job did not return, the cancelled ones are the first `cancelled` in order.
   */
  private cancelledClaims (user: string): number[] {
    const returned = this.returnedOf(user)
    const kept = [...this.claimsOf(user).keys()].filter((c) => !returned.has(c)).sort((a, b) => a - b)
    return kept.slice(0, this.cancelled.get(user) ?? 0)
  }

  heldTotal (): number {
    return this.users.reduce((sum, u) => sum + this.held(u), 0)
  }

  lastClaim (user: string): number {
    return Math.max(0, ...this.claimsOf(user).keys())
  }

  closed (now = Date.now()): boolean {
    return this.endsAt !== null && this.endsAt <= now
  }

  /** Claims revoked per the answers: by a cancel (see cancelledClaims) or returned to stock at expiry. */
  expectedRevoked (user: string): Set<number> {
    return new Set([...this.cancelledClaims(user), ...this.returnedOf(user)])
  }

  /** The cancel whose units covered this claim (cancels of a user in answer order). */
  coveringCancel (user: string, claim: number): Cancel | undefined {
    const returned = this.returnedOf(user)
    const sorted = [...this.claimsOf(user).keys()].filter((c) => !returned.has(c)).sort((a, b) => a - b)
    const index = sorted.indexOf(claim)
    let covered = 0
    const mine = this.cancels.filter((c) => c.user === user).sort((a, b) => a.batch - b.batch || a.revokedAt.localeCompare(b.revokedAt))
    for (const cancel of mine) {
      covered += cancel.units
      if (index < covered) return cancel
    }
    return undefined
  }

  /** Checks the answers of one batch (and what Redis says of the units after it) against the state before it, then applies them. */
  applyBatch (batch: number, answers: Answer[], observed: Observed = { returned: new Set(), redeemed: new Map() }): Violation[] {
    const v: Violation[] = []
    const bad = (inv: string, msg: string) => v.push(new Violation(inv, `batch ${batch}: ${msg}`))
    const held0 = new Map(this.users.map((u) => [u, this.held(u)]))
    const heldTotal0 = this.heldTotal()
    const total0 = this.total
    const closed0 = this.closed()
    const paused0 = this.paused
    const pauses = answers.filter((a) => a.op === 'pause' && a.status === 200)
    const resumedInBatch = pauses.some((a) => a.paused === false)
    const pausedInBatch = pauses.some((a) => a.paused === true)

    for (const a of answers) {
      if (a.status === 0) bad('f', `${describe(a)} got no answer (${a.code ?? 'connection failed'})`)
      else if (a.status >= 500 && a.status !== 503) bad('f', `${describe(a)} answered ${a.status} ${JSON.stringify(a.body)}`)
      else if (a.status >= 400 && typeof a.body?.code !== 'string') bad('f', `${describe(a)} answered ${a.status} without a code: ${JSON.stringify(a.body)}`)
    }

    const windowTargets = answers.filter((a) => a.op === 'patchWindow').map((a) => a.window)
    const totals200 = answers.filter((a) => a.op === 'patchTotal' && a.status === 200).map((a) => a.to!)
    const minTotal = Math.min(total0, ...totals200)
    const issued = answers.filter((a) => a.op === 'issue' && a.status === 201)
    const fresh = issued.filter((a) => !a.replayed)
    const freshOf = (u: string) => fresh.filter((a) => a.user === u).length
    const okCancels = answers.filter((a) => a.op === 'cancel' && a.status === 200 && !a.replayed)
    const priorKeyCodes = (key: string | undefined) => new Set((key ? this.keyAnswers.get(key) ?? [] : []).map((a) => a.code))

    // 201s: a fresh one brings a claim number never seen before; a replayed one repeats a known claim.
    const newClaims = new Map<string, Map<number, Claim>>()
    for (const a of fresh) {
      const user = a.user!
      const claim = Number(a.body?.claim)
      const known = this.claimsOf(user).get(claim) ?? newClaims.get(user)?.get(claim)
      if (!Number.isInteger(claim) || claim < 1) bad('m', `201 for ${user} without a claim number: ${JSON.stringify(a.body)}`)
      else if (known) bad('m', `claim ${user}#${claim} handed out twice: issuedAt ${known.issuedAt} and ${a.body.issuedAt}`)
      else {
        let mine = newClaims.get(user)
        if (!mine) newClaims.set(user, mine = new Map())
        mine.set(claim, { issuedAt: a.body.issuedAt, batch })
      }
      if (paused0 && !resumedInBatch) bad('m', `201 for ${user} (claim ${claim}) although the campaign was paused and nothing resumed it`)
      if (closed0 && !windowTargets.includes('open')) bad('m', `201 for ${user} (claim ${claim}) although the campaign had ended (endsAt ${iso(this.endsAt)}) and no PATCH reopened it`)
    }
    for (const a of issued.filter((a) => a.replayed)) {
      const claim = Number(a.body?.claim)
      const known = this.claimsOf(a.user!).get(claim) ?? newClaims.get(a.user!)?.get(claim)
      if (!known) bad('g', `replayed 201 for ${a.user} (key ${a.key}) names claim ${claim}, which no earlier 201 handed out`)
      else if (known.issuedAt !== a.body.issuedAt) bad('g', `replayed 201 for ${a.user}#${claim} says issuedAt ${a.body.issuedAt}, the first answer said ${known.issuedAt}`)
    }

    // Rejections must be possible in some order of the batch.
    for (const a of answers.filter((a) => a.op === 'issue' && a.status === 409)) {
      const user = a.user!
      if (a.key && priorKeyCodes(a.key).has(a.code)) continue // a replay of an earlier rejection
      const sameKeyInBatch = a.key !== undefined && answers.some((o) => o !== a && o.key === a.key)
      if (a.code === 'ALREADY_ISSUED') {
        const most = held0.get(user)! + freshOf(user)
        if (most < this.limit && !sameKeyInBatch) bad('m', `ALREADY_ISSUED for ${user} although it held at most ${most} < perUserLimit ${this.limit} during the batch`)
      } else if (a.code === 'SOLD_OUT') {
        const most = heldTotal0 + fresh.length
        if (most < minTotal && !sameKeyInBatch) bad('m', `SOLD_OUT for ${user} although at most ${most} units were out and the total was at least ${minTotal}`)
      } else if (a.code === 'PAUSED') {
        if (!paused0 && !pausedInBatch) bad('m', `PAUSED for ${user} although the campaign was not paused and no pause answered in the batch`)
      } else if (a.code === 'ENDED' || a.code === 'NOT_STARTED') {
        if (!closed0 && !windowTargets.some((w) => w !== 'open')) bad('m', `${a.code} for ${user} although the window was open (endsAt ${iso(this.endsAt)}) and no PATCH closed it`)
      }
    }
    const newlyReturned = [...observed.returned].filter((unit) => { const [u, c] = unit.split('#'); return !this.returnedOf(u!).has(Number(c)) })
    const returnedNowOf = (user: string) => newlyReturned.filter((unit) => unit.startsWith(`${user}#`)).length
    for (const a of answers.filter((a) => a.op === 'cancel')) {
      const user = a.user!
      const others = okCancels.filter((o) => o !== a && o.user === user).length
      if (a.status === 404 && held0.get(user)! > 0 && others === 0 && returnedNowOf(user) < held0.get(user)!) {
        bad('m', `cancel of ${user} answered ${a.code} although it held ${held0.get(user)} unit(s) and nothing else cancelled them`)
      }
      if (a.status === 200 && !a.replayed) {
        const units = Number(a.body?.units)
        const most = Math.min(this.limit, held0.get(user)! + freshOf(user))
        if (!(units >= 1 && units <= most)) bad('m', `cancel of ${user} gave back ${a.body?.units} unit(s); it held at most ${most} (held ${held0.get(user)} before, ${freshOf(user)} new 201s, limit ${this.limit})`)
      }
    }
    for (const a of answers.filter((a) => a.op === 'patchTotal')) {
      if (a.status === 200 && a.body?.totalQuantity !== a.to) bad('m', `PATCH totalQuantity=${a.to} answered 200 with totalQuantity ${a.body?.totalQuantity}`)
      if (a.status === 409 && a.code === 'STOCK_BELOW_ISSUED') {
        const highest = Math.max(total0, ...totals200)
        if (a.to! >= highest) bad('m', `PATCH totalQuantity=${a.to} refused STOCK_BELOW_ISSUED although it is no decrease (total was at most ${highest})`)
      }
    }
    for (const a of answers.filter((a) => a.op === 'get' && a.status === 200)) {
      const most = Math.max(total0, ...answers.filter((o) => o.op === 'patchTotal').map((o) => o.to!))
      if (!(a.body.remaining >= 0 && a.body.remaining <= most)) bad('a', `GET says remaining ${a.body.remaining}; must be within 0..${most}`)
    }

    // Idempotency: once a key answered 201, every answer with that key is that same 201.
    for (const a of answers) {
      if (!a.key) continue
      let list = this.keyAnswers.get(a.key)
      if (!list) this.keyAnswers.set(a.key, list = [])
      list.push(a)
    }
    // A 503 says "retry", no outcome; a rejection remembered before Redis lost the key records may be followed by a 201.
    for (const [key, list] of this.keyAnswers) {
      if (!list.some((a) => a.batch === batch)) continue
      const first201 = list.find((a) => a.status === 201)
      if (!first201) continue
      for (const a of list) {
        if (a === first201 || a.status === 503 || (a.batch !== batch && first201.batch !== batch)) continue
        if (a.status === 201) {
          if (a.body.claim !== first201.body.claim || a.body.issuedAt !== first201.body.issuedAt) {
            bad('g', `retry of ${a.user} with Idempotency-Key ${key} answered 201 claim ${a.body.claim} at ${a.body.issuedAt}${a.replayed ? '' : ' (a NEW unit, not a replay)'}; the first 201 was claim ${first201.body.claim} at ${first201.body.issuedAt} (batch ${first201.batch})`)
          }
        } else if (a.batch > first201.batch || (a.batch === first201.batch && !NOT_REMEMBERED.has(a.code ?? ''))) {
          bad('g', `retry of ${a.user} with Idempotency-Key ${key} answered ${a.status} ${a.code}; the key's first 201 (batch ${first201.batch}) was claim ${first201.body.claim} at ${first201.body.issuedAt}`)
        } else if (!NOT_REMEMBERED.has(a.code ?? '') && !this.idempotencyLost.some((b) => b >= a.batch && b <= first201.batch)) {
          bad('g', `${a.user} with Idempotency-Key ${key} was answered ${a.status} ${a.code} (batch ${a.batch}), yet a later retry with the key issued claim ${first201.body.claim} (batch ${first201.batch}) instead of replaying that`)
        }
      }
    }

    this.checkRedemptions(batch, answers, observed, newlyReturned, newClaims, closed0 && !windowTargets.includes('open'), bad)

    // Apply.
    for (const [user, mine] of newClaims) for (const [claim, c] of mine) this.claimsOf(user).set(claim, c)
    for (const a of fresh) {
      const unit = `${a.user}#${a.body?.claim}`
      if (!this.codes.has(unit) && typeof a.body?.code === 'string') { this.codes.set(unit, a.body.code); this.units.push(unit) }
    }
    for (const unit of newlyReturned) { const [u, c] = unit.split('#'); this.returnedOf(u!).add(Number(c)) }
    this.redeemedBy.clear()
    for (const [unit, order] of observed.redeemed) this.redeemedBy.set(unit, order)
    for (const a of okCancels) {
      const units = Number(a.body.units) || 0
      this.cancelled.set(a.user!, (this.cancelled.get(a.user!) ?? 0) + units)
      this.cancels.push({ user: a.user!, units, revokedAt: a.body.revokedAt, batch })
    }
    for (const user of this.users) {
      const held = this.held(user)
      if (held < 0 || held > this.limit) bad('m', `the answers imply ${user} holds ${held} unit(s) (claims ${[...this.claimsOf(user).keys()].join(',')}, cancelled ${this.cancelled.get(user) ?? 0}), limit ${this.limit}`)
      const numbers = [...this.claimsOf(user).keys()].sort((a, b) => a - b)
      if (numbers.some((n, i) => n !== i + 1)) bad('m', `claim numbers of ${user} are not 1..n: ${numbers.join(',')}`)
    }
    return v
  }

  /**
   * (r) and (x): the redemption and expiry answers of a batch, against the state before it and what Redis
   * holds after it. Only the order whose redemption stands can roll it back, so a unit redeemed before
   * the batch changes hands only through a rollback by that order answered in the batch.
   */
  private checkRedemptions (batch: number, answers: Answer[], observed: Observed, newlyReturned: string[], newClaims: Map<string, Map<number, Claim>>,
    ended: boolean, bad: (inv: string, msg: string) => void): void {
    const ok = (op: Op, unit: string, order?: string, replayed?: boolean) => answers.filter((a) => a.op === op && a.unit === unit && (order === undefined || a.order === order) &&
      (a.status === 201 || a.status === 200) && (replayed === undefined || a.replayed === replayed))
    const cancelledInBatch = (user: string) => answers.some((a) => a.op === 'cancel' && a.user === user && a.status === 200)
    const units = new Set([...answers.filter((a) => a.unit).map((a) => a.unit!), ...this.redeemedBy.keys(), ...observed.redeemed.keys()])
    for (const unit of units) {
      const [user, claimText] = unit.split('#') as [string, string]
      const claim = Number(claimText)
      const before = this.redeemedBy.get(unit)
      const after = observed.redeemed.get(unit)
      const freshRedeems = ok('redeem', unit, undefined, false)
      if (after !== undefined) {
        const held = before === after && ok('rollback', unit, after, false).length === 0
        if (!held && !freshRedeems.some((a) => a.order === after)) bad('r', `${unit} is redeemed by ${after} in Redis, but no redemption by ${after} answered 201 in this batch${before ? ` (it was redeemed by ${before} before)` : ''}`)
      }
      if (before !== undefined && after !== before && ok('rollback', unit, before, false).length === 0) {
        bad('r', `${unit} was redeemed by ${before} before the batch and is ${after ? `redeemed by ${after}` : 'not redeemed'} after it, but no rollback by ${before} answered 200`)
      }
      for (const a of freshRedeems) {
        if (after !== a.order && ok('rollback', unit, a.order, false).length === 0) bad('r', `redemption of ${unit} by ${a.order} answered 201, yet Redis says ${after ? `redeemed by ${after}` : 'not redeemed'} and no rollback by ${a.order} answered`)
        if (this.expired) bad('x', `redemption of ${unit} by ${a.order} answered 201 after validUntil passed`)
      }
      for (const a of answers.filter((a) => a.unit === unit)) {
        const code = a.code
        if (a.op === 'redeem' && a.status === 201 && a.replayed && before !== a.order && !freshRedeems.some((f) => f.order === a.order)) {
          bad('r', `redemption of ${unit} by ${a.order} replayed a 201 that never happened`)
        }
        if (a.op === 'redeem' && code === 'ALREADY_REDEEMED' && !((before !== undefined && before !== a.order) || freshRedeems.some((f) => f.order !== a.order))) {
          bad('r', `redemption of ${unit} by ${a.order} answered ALREADY_REDEEMED, but no other order held or took it`)
        }
        if (a.op === 'redeem' && code === 'EXPIRED' && !this.expired && !this.returnedOf(user).has(claim)) bad('x', `redemption of ${unit} answered EXPIRED before validUntil passed`)
        if (a.op === 'rollback' && a.status === 200 && !a.replayed && before !== a.order && !freshRedeems.some((f) => f.order === a.order)) {
          bad('r', `rollback of ${unit} by ${a.order} answered 200, but ${a.order} never redeemed it`)
        }
        if (a.op === 'rollback' && code === 'NOT_REDEEMED_BY_ORDER' && before === a.order) bad('r', `rollback of ${unit} by ${a.order}, which held its redemption, answered NOT_REDEEMED_BY_ORDER`)
        if ((code === 'REVOKED') && !this.expectedRevoked(user).has(claim) && !cancelledInBatch(user)) bad('r', `${a.op} of ${unit} answered REVOKED, but nothing cancelled it`)
      }
      if (after !== undefined && observed.returned.has(unit)) bad('x', `${unit} is redeemed by ${after} AND returned to stock at expiry`)
    }
    // Cancels: never while a unit of the user stays redeemed (no cancel here is forced).
    for (const a of answers.filter((a) => a.op === 'cancel' && a.status === 200 && !a.replayed)) {
      for (const [unit, order] of this.redeemedBy) {
        if (unit.startsWith(`${a.user}#`) && ok('rollback', unit, order, false).length === 0) bad('x', `cancel of ${a.user} answered 200 although ${unit} was redeemed by ${order} and nothing rolled that back`)
      }
    }
    for (const a of answers.filter((a) => a.op === 'cancel' && a.code === 'ALREADY_REDEEMED')) {
      const had = [...this.redeemedBy.keys()].some((u) => u.startsWith(`${a.user}#`)) || answers.some((r) => r.op === 'redeem' && r.status === 201 && r.unit?.startsWith(`${a.user}#`))
      if (!had) bad('r', `cancel of ${a.user} answered ALREADY_REDEEMED, but no unit of ${a.user} was redeemed`)
    }
    // Returns at expiry: only once validUntil passed, never after the end, never a redeemed unit, exactly as many as the job said.
    const said = answers.filter((a) => a.op === 'expire' && a.status === 200).reduce((n, a) => n + Number(a.body?.returned ?? 0), 0)
    if (said !== newlyReturned.length) bad('x', `the expiry job said it returned ${said} unit(s); Redis shows ${newlyReturned.length} newly returned (${newlyReturned.join(', ') || 'none'})`)
    for (const unit of newlyReturned) {
      const [user, claimText] = unit.split('#') as [string, string]
      const claim = Number(claimText)
      if (!this.expired) bad('x', `${unit} returned to stock although validUntil has not passed`)
      if (ended) bad('x', `${unit} returned to stock although the campaign had ended`)
      const known = this.claimsOf(user).has(claim) || newClaims.get(user)?.has(claim)
      if (!known) bad('x', `${unit} returned to stock, but no 201 handed it out`)
      const holder = this.redeemedBy.get(unit)
      if (holder !== undefined && ok('rollback', unit, holder, false).length === 0) bad('x', `${unit} redeemed by ${holder} was returned to stock at expiry`)
      if (this.expectedRevoked(user).has(claim)) bad('x', `${unit} returned to stock although it was already revoked`)
    }
  }

  /** After a batch: the total and window in force (read from the service), checked against the PATCH answers. */
  settle (batch: number, answers: Answer[], total: number, endsAt: number | null, paused: boolean): Violation[] {
    const v: Violation[] = []
    const switches = answers.filter((a) => a.op === 'pause' && a.status === 200).map((a) => a.paused!)
    const possiblyPaused = switches.length > 0 ? switches : [this.paused]
    if (!possiblyPaused.includes(paused)) v.push(new Violation('m', `batch ${batch}: paused is ${paused} after the batch; the pause/resume answers allow only ${possiblyPaused.join(' or ')}`))
    this.paused = paused
    const totals200 = answers.filter((a) => a.op === 'patchTotal' && a.status === 200).map((a) => a.to!)
    const possible = totals200.length > 0 ? totals200 : [this.total]
    if (!possible.includes(total)) v.push(new Violation('m', `batch ${batch}: total is ${total} after the batch; the PATCH answers allow only ${possible.join(' or ')}`))
    this.total = total
    this.endsAt = endsAt
    return v
  }
}

const iso = (ms: number | null) => ms === null ? 'none' : new Date(ms).toISOString()

export function describe (a: Answer): string {
  switch (a.op) {
    case 'issue': return `issue ${a.user}${a.key ? ` key=${a.key}` : ''}`
    case 'cancel': return `cancel ${a.user}`
    case 'patchTotal': return `PATCH totalQuantity=${a.to}`
    case 'patchWindow': return `PATCH window=${a.window}`
    case 'pause': return a.paused ? 'pause' : 'resume'
    case 'get': return 'GET coupon'
    case 'redeem': return `redeem ${a.unit} by ${a.order}`
    case 'rollback': return `rollback ${a.unit} by ${a.order}`
    case 'expire': return 'expiry job'
  }
}
