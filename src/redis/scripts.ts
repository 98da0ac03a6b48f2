// The Lua scripts as typed functions: one wrapper per script, taking named arguments and returning a
// typed reply whose code is named here, next to the script loader (as BullMQ keeps its error codes).
// The file name and the command name are the same (issue.lua <-> issue). Nothing else calls a script.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { Result } from 'ioredis'
import type { RedisClient } from './client.js'
import type { CouponKeys } from './keys.js'
import { macOfField } from '../issuing/codes.js'

const read = (path: string) => readFileSync(new URL(`./scripts/${path}`, import.meta.url), 'utf8')
// `-- @include x.lua` lines are replaced by scripts/includes/x.lua, so scripts share helpers (as BullMQ does).
const scriptSource = (name: string) => read(`${name}.lua`).replace(/^-- @include (\S+)$/gm, (_, file: string) => read(`includes/${file}`))

/**
 * Script name -> number of keys; null = the caller passes the count first (a variable number of keys).
 * issue.lua is not among them: see sendIssue.
 */
const SCRIPTS = {
  revoke: 9,
  restoreCounters: 11,
  lookupCode: 4,
  redeem: 6,
  rollback: 6,
  updateCoupon: 3,
  returnExpired: 9,
  ackAndTrim: 1,
  markDormant: 2,
  discardIssue: 7,
  recordStats: null,
  adoptServer: null,
  adoptShard: 1
} as const

type Arg = string | number
type RawLookup = [code: number, userId?: string, claim?: number, issuedAt?: number, revokedAt?: number, state?: string, orderId?: string, stateAt?: number, now?: number, expiresAt?: number, returnedAt?: number]
type RawRedemption = [code: number, at: number, userId: string, claim: number, entryId: string, replayed: number, reactivated: number]
type RawOutcome = [code: number, at: number, count: number, entryId: string, replayed: number, reactivated: number, unitCode?: string, expiresAt?: number]

declare module 'ioredis' {
  interface RedisCommander<Context> {
    revoke (...keysThenArgs: Arg[]): Result<RawOutcome, Context>
    lookupCode (...keysThenArgs: Arg[]): Result<RawLookup, Context>
    redeem (...keysThenArgs: Arg[]): Result<RawRedemption, Context>
    rollback (...keysThenArgs: Arg[]): Result<RawRedemption, Context>
    restoreCounters (keysThenArgs: Arg[]): Result<number, Context>
    updateCoupon (...keysThenArgs: Arg[]): Result<[code: number, issued: number], Context>
    returnExpired (...keysThenArgs: Arg[]): Result<[code: number, returned: number, more: number, reactivated: number, now: number], Context>
    ackAndTrim (...keysThenArgs: Arg[]): Result<[acked: number, trimmed: number], Context>
    markDormant (...keysThenArgs: Arg[]): Result<number, Context>
    discardIssue (...keysThenArgs: Arg[]): Result<number, Context>
    recordStats (numberOfKeys: number, ...keysThenArgs: Arg[]): Result<number, Context>
    adoptServer (numberOfKeys: number, ...keysThenArgs: Arg[]): Result<number, Context>
    adoptShard (...keysThenArgs: Arg[]): Result<number, Context>
  }
}

/** Defines every script as a command on the connection (EVALSHA, loaded on first use). */
export function defineScripts (redis: RedisClient): void {
  for (const [name, numberOfKeys] of Object.entries(SCRIPTS)) redis.defineCommand(name, { lua: scriptSource(name), ...(numberOfKeys === null ? {} : { numberOfKeys }) })
}

export const IssueCode = { ISSUED: 0, NEEDS_RESTORE: 1, ALREADY_ISSUED: 2, SOLD_OUT: 3, NOT_STARTED: 4, ENDED: 5, BACKLOG_FULL: 6, IDEMPOTENCY_KEY_REUSED: 7, PAUSED: 8, CODE_EXHAUSTED: 9 } as const
export const RevokeCode = { REVOKED: 0, NEEDS_RESTORE: 1, NOT_HELD: 2, REDEEMED: 3, IDEMPOTENCY_KEY_REUSED: 7 } as const
export const LookupCode = { FOUND: 0, NEEDS_RESTORE: 1, NOT_FOUND: 2 } as const
export const RedemptionCode = { DONE: 0, NEEDS_RESTORE: 1, NOT_FOUND: 2, REVOKED: 3, ALREADY_REDEEMED: 4, NOT_REDEEMED_BY_ORDER: 5, EXPIRED: 6 } as const
export const RestoreCode = { PRESENT: 0, RESTORED: 1, STREAM_MOVED: 2 } as const
export const UpdateCode = { UPDATED: 0, NEEDS_RESTORE: 1, STOCK_BELOW_ISSUED: 2 } as const
export const DiscardCode = { RETURNED: 0, NEEDS_RESTORE: 1, ALREADY: 2, NOT_HELD: 3 } as const
export const ReturnExpiredCode = { DONE: 0, NEEDS_RESTORE: 1, NOT_ENABLED: 2, ENDED: 3 } as const
export const AdoptCode = { SAME: 0, FIRST: 1, ADOPTED: 2, RELIST: 3 } as const
export const AdoptShardCode = { SAME: 0, KEPT: 1, ADOPTED: 2, RELIST: 3 } as const
/** Every script that can find the counters missing answers this code. */
export const NEEDS_RESTORE = 1

export type IssueCode = typeof IssueCode[keyof typeof IssueCode]
export type RevokeCode = typeof RevokeCode[keyof typeof RevokeCode]
export type LookupCode = typeof LookupCode[keyof typeof LookupCode]
export type RedemptionCode = typeof RedemptionCode[keyof typeof RedemptionCode]
export type RestoreCode = typeof RestoreCode[keyof typeof RestoreCode]
export type UpdateCode = typeof UpdateCode[keyof typeof UpdateCode]
export type DiscardCode = typeof DiscardCode[keyof typeof DiscardCode]
export type ReturnExpiredCode = typeof ReturnExpiredCode[keyof typeof ReturnExpiredCode]
export type AdoptCode = typeof AdoptCode[keyof typeof AdoptCode]
export type AdoptShardCode = typeof AdoptShardCode[keyof typeof AdoptShardCode]

export interface Outcome<C extends number> {
  code: C
  /** ms: the moment of the issue/cancel; for some refusals the limit or window edge (see the script header) */
  at: number
  /** the claim number (issue) or the units returned (revoke) */
  count: number
  entryId: string
  /** remembered from an earlier call with the same Idempotency-Key */
  replayed: boolean
  /** the stream had been marked dormant: put the coupon back on the consumer's read list */
  reactivated: boolean
  /** ISSUED: the unit's redeemable code ('' otherwise) */
  unitCode: string
  /** ISSUED: when the code stops being redeemable, ms (0 = never) */
  expiresAt: number
}

const outcome = <C extends number>([code, at, count, entryId, replayed, reactivated, unitCode, expiresAt]: RawOutcome): Outcome<C> =>
  ({ code: code as C, at, count, entryId, replayed: replayed === 1, reactivated: reactivated === 1, unitCode: unitCode ?? '', expiresAt: expiresAt ?? 0 })

export interface IssueArgs {
  userId: string
  /** '' = none */
  idempotencyKey: string
  idempotencyTtlSeconds: number
  /** 0 = no cap */
  backlogCap: number
}

const ISSUE_SOURCE = scriptSource('issue')
const ISSUE_SHA = createHash('sha1').update(ISSUE_SOURCE).digest('hex')

/**
 * issue.lua as a plain EVALSHA rather than a command defined on the client: ioredis wraps every call of a
 * defined script in a command subclass, a per-socket "loaded yet?" check and a NOSCRIPT handler, about
 * 0.9 µs of client CPU per call (docs/benchmarks.md). Redis answers NOSCRIPT when its script cache lacks
 * the script (a restart, a failover, SCRIPT FLUSH): the script did not run, so it is sent once more in
 * full (EVAL, which caches it for the next EVALSHA), as ioredis does.
 */
function sendIssue (redis: RedisClient, keysThenArgs: Arg[]): Promise<string> {
  return (redis.evalsha(ISSUE_SHA, 9, ...keysThenArgs) as Promise<string>).catch((err: Error) => {
    if (!err.message.includes('NOSCRIPT')) throw err
    return redis.eval(ISSUE_SOURCE, 9, ...keysThenArgs) as Promise<string>
  })
}

/** The hot path: the key and its TTL are sent only when there is a key (see issue.lua's ARGV). */
export function issue (redis: RedisClient, k: CouponKeys, a: IssueArgs): Promise<Outcome<IssueCode>> {
  const keysThenArgs: Arg[] = [k.meta, k.stock, k.holders, k.claims, k.events, k.idempotency, k.stats, k.codes, k.expiring, a.userId, a.backlogCap]
  if (a.idempotencyKey !== '') keysThenArgs.push(a.idempotencyKey, a.idempotencyTtlSeconds)
  return sendIssue(redis, keysThenArgs).then(unpackOutcome)
}

/**
 * issue.lua's reply, "code|at|claim|entryId|replayed|reactivated[|field|expiresAt|prefix|tail]", as an
 * Outcome; the unit's code is written here from the mac's field (src/issuing/codes.ts).
 */
function unpackOutcome (reply: string): Outcome<IssueCode> {
  const [code, at, count, entryId, replayed, reactivated, field, expiresAt, prefix, tail] = reply.split('|')
  return {
    code: Number(code) as IssueCode,
    at: Number(at),
    count: Number(count),
    entryId: entryId!,
    replayed: replayed === '1',
    reactivated: reactivated === '1',
    unitCode: field === undefined ? '' : prefix! + macOfField(field) + tail!,
    expiresAt: expiresAt === undefined ? 0 : Number(expiresAt)
  }
}

export interface RevokeArgs {
  couponId: number
  userId: string
  idempotencyKey: string
  idempotencyTtlSeconds: number
  /** cancel even when a unit of the user is redeemed (admin) */
  force: boolean
}

export async function revoke (redis: RedisClient, k: CouponKeys, a: RevokeArgs): Promise<Outcome<RevokeCode>> {
  return outcome(await redis.revoke(k.meta, k.stock, k.holders, k.claims, k.events, k.idempotency, k.revoked, k.stats, k.redemptions,
    a.couponId, a.userId, a.idempotencyKey, a.idempotencyTtlSeconds, k.stockReturned, a.force ? '1' : ''))
}

/** A unit found by its code (lookupCode.lua), moments in ms. */
export interface UnitState {
  userId: string
  claim: number
  issuedAt: number
  /** 0 = not revoked */
  revokedAt: number
  /** the unit's last redemption event: 'd' redeemed, 'u' rolled back, '' never redeemed */
  state: '' | 'd' | 'u'
  orderId: string
  stateAt: number
  /** Redis TIME */
  now: number
  /** 0 = never */
  expiresAt: number
  /** when the expiry job returned the unit to stock; 0 = it did not */
  returnedAt: number
}

export async function lookupCode (redis: RedisClient, k: CouponKeys, head: string): Promise<{ code: LookupCode, unit?: UnitState }> {
  const [code, userId, claim, issuedAt, revokedAt, state, orderId, stateAt, now, expiresAt, returnedAt] = await redis.lookupCode(k.meta, k.codes, k.redemptions, k.revoked, head)
  if (code !== LookupCode.FOUND) return { code: code as LookupCode }
  return { code, unit: { userId: userId!, claim: claim!, issuedAt: issuedAt!, revokedAt: revokedAt!, state: state as UnitState['state'], orderId: orderId!, stateAt: stateAt!, now: now!, expiresAt: expiresAt!, returnedAt: returnedAt! } }
}

export interface RedemptionOutcome {
  code: RedemptionCode
  /** ms: the redemption's or rollback's moment */
  at: number
  userId: string
  claim: number
  entryId: string
  replayed: boolean
  reactivated: boolean
}

export async function redeemOrRollback (redis: RedisClient, k: CouponKeys, action: 'redeem' | 'rollback', head: string, orderId: string): Promise<RedemptionOutcome> {
  const [code, at, userId, claim, entryId, replayed, reactivated] = await redis[action](k.meta, k.codes, k.redemptions, k.revoked, k.events, k.expiring, head, orderId)
  return { code: code as RedemptionCode, at, userId, claim, entryId, replayed: replayed === 1, reactivated: reactivated === 1 }
}

export interface CounterValues {
  total: number
  perUserLimit: number
  startsAtMs: number
  endsAtMs: number | null
  paused: boolean
  stock: number
  /** userId -> [units held now, last claim number] */
  users: Map<string, [number, number]>
  /** idempotency hash field -> record (see includes/outcomes.lua) */
  idempotency: Map<string, string>
  /** userId -> [upTo claim, revokedAt ms] of the last cancel */
  lastCancels: Map<string, [number, number]>
  /** the coupon's code settings (src/issuing/codes.ts), fixed at creation */
  /** with the codes' validity (src/issuing/validity.ts; null = none) */
  codeSettings: { secret: string, prefix: string, length: number, tail: string, validForMs: number | null, validUntilMs: number | null }
  /** a mac's field (src/issuing/codes.ts) -> "userId|claim|issuedAtMs" of every unit handed out, revoked ones too ("|returnedAtMs" appended: returned at expiry) */
  codes: Map<string, string>
  /** redemption state (includes/units.lua): a mac's field -> "d|orderId|atMs" / "u|orderId|atMs", '@userId' -> units redeemed now */
  redemptions: Map<string, string>
  /** returnExpiredToStock */
  returnExpired: boolean
  /** the expiry job's candidates (with returnExpired): "userId|claim" -> expiresAt ms of every active, unredeemed unit that expires */
  expiring: Map<string, number>
}

export interface RestoreArgs {
  group: string
  /** id of the last stream entry the caller saw ('' = none) */
  lastEntryId: string
  values: CounterValues
}

export async function restoreCounters (redis: RedisClient, k: CouponKeys, { group, lastEntryId, values: v }: RestoreArgs): Promise<RestoreCode> {
  const c = v.codeSettings
  const args: Arg[] = [k.meta, k.stock, k.holders, k.claims, k.events, k.idempotency, k.revoked, k.discarded, k.codes, k.redemptions, k.expiring,
    group, lastEntryId, v.total, v.perUserLimit, v.startsAtMs, v.endsAtMs ?? '', v.stock, v.users.size, v.idempotency.size, v.lastCancels.size,
    k.stockReturned, k.couponId, v.paused ? '1' : '', c.secret, c.prefix, c.length, c.tail, v.codes.size, v.redemptions.size, c.validForMs ?? '', c.validUntilMs ?? '',
    v.returnExpired ? '1' : '', v.returnExpired ? v.expiring.size : 0]
  for (const [userId, [held, last]] of v.users) args.push(userId, held, last)
  for (const [field, record] of v.idempotency) args.push(field, record)
  for (const [userId, [upTo, at]] of v.lastCancels) args.push(userId, `${upTo}|${at}`)
  for (const [field, unit] of v.codes) args.push(field, unit)
  for (const [field, value] of v.redemptions) args.push(field, value)
  if (v.returnExpired) for (const [member, expiresAt] of v.expiring) args.push(member, expiresAt)
  return await redis.restoreCounters(args) as RestoreCode
}

export interface UpdateArgs {
  total: number
  startsAtMs: number
  endsAtMs: number | null
  paused: boolean
  returnExpired: boolean
}

export async function updateCoupon (redis: RedisClient, k: CouponKeys, a: UpdateArgs): Promise<{ code: UpdateCode, issued: number }> {
  const [code, issued] = await redis.updateCoupon(k.meta, k.stock, k.expiring, a.total, a.startsAtMs, a.endsAtMs ?? '', k.stockReturned, k.couponId, a.paused ? '1' : '', a.returnExpired ? '1' : '')
  return { code: code as UpdateCode, issued }
}

export async function ackAndTrim (redis: RedisClient, stream: string, group: string, ids: string[]): Promise<{ acked: number, trimmed: number }> {
  const [acked, trimmed] = await redis.ackAndTrim(stream, group, ...ids)
  return { acked, trimmed }
}

export async function markDormant (redis: RedisClient, k: CouponKeys, group: string): Promise<boolean> {
  return await redis.markDormant(k.meta, k.events, group) === 1
}

export interface DiscardArgs {
  userId: string
  claim: number
  entryId: string
}

export async function discardIssue (redis: RedisClient, k: CouponKeys, a: DiscardArgs): Promise<DiscardCode> {
  return await redis.discardIssue(k.meta, k.stock, k.holders, k.revoked, k.discarded, k.stats, k.codes, a.userId, a.claim, a.entryId, k.stockReturned, k.couponId) as DiscardCode
}

export interface ReturnExpiredOutcome {
  code: ReturnExpiredCode
  /** units returned to stock by this call */
  returned: number
  /** as many candidates were due as the call looked at: there may be more */
  more: boolean
  reactivated: boolean
  /** Redis TIME of the call, ms */
  now: number
}

/** Returns up to `limit` expired, unredeemed units of the coupon to stock (returnExpired.lua). */
export async function returnExpired (redis: RedisClient, k: CouponKeys, limit: number): Promise<ReturnExpiredOutcome> {
  const [code, returned, more, reactivated, now] = await redis.returnExpired(k.meta, k.stock, k.holders, k.revoked, k.codes, k.redemptions, k.expiring, k.events, k.stats,
    k.couponId, k.stockReturned, limit)
  return { code: code as ReturnExpiredCode, returned, more: more === 1, reactivated: reactivated === 1, now }
}

export interface StatsDelta {
  /** rejections counted since the last flush, by code */
  rejected: Map<string, number>
  /** issues counted since the last flush, by unix second (Redis clock) */
  issuedPerSecond: Map<number, number>
  /** the largest persistence lag seen since the last flush, ms (0 = none) */
  lagMs: number
}

export async function recordStats (redis: RedisClient, k: CouponKeys, { rejected, issuedPerSecond, lagMs }: StatsDelta): Promise<void> {
  const seconds = [...issuedPerSecond.keys()]
  const args: Arg[] = [k.stats, ...seconds.map((s) => `${k.perSecond}${s}`), rejected.size]
  for (const [code, n] of rejected) args.push(code, n)
  for (const s of seconds) args.push(issuedPerSecond.get(s)!)
  args.push(lagMs)
  await redis.recordStats(1 + seconds.length, ...args)
}

export interface AdoptArgs {
  /** keys.serverRunId */
  recordKey: string
  runId: string
  stockReturned: string
  /** null when the caller saw no record (and so listed nothing) */
  listed: { couponIds: string[], counterKeys: string[] } | null
}

export async function adoptServer (redis: RedisClient, { recordKey, runId, stockReturned, listed }: AdoptArgs): Promise<AdoptCode> {
  const keys = [recordKey, ...(listed?.counterKeys ?? [])]
  return await redis.adoptServer(keys.length, ...keys, runId, stockReturned, listed ? 'listed' : '', ...(listed?.couponIds ?? [])) as AdoptCode
}

export interface AdoptShardArgs {
  /** keys.shardServerRunId(the node's lowest slot) */
  recordKey: string
  runId: string
  stockReturned: string
  /** the record as the caller read it (null = none) */
  seen: string | null
  /** keep: record without dropping; drop: drop the listed counters first */
  decision: 'keep' | 'drop'
  listed: { couponIds: string[], counterKeys: string[] }
}

/** Redis Cluster: adoptShard.lua on one primary's own connection (see the script). */
export async function adoptShard (node: RedisClient, { recordKey, runId, stockReturned, seen, decision, listed }: AdoptShardArgs): Promise<AdoptShardCode> {
  return await node.adoptShard(recordKey, runId, stockReturned, seen ?? '', decision, listed.counterKeys.length, ...listed.counterKeys, ...listed.couponIds) as AdoptShardCode
}
