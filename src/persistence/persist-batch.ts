// Where issued coupons are persisted: a batch of stream entries becomes rows in Postgres.
// Deterministically bad entries (poison) are parked in failed_issue_events; a database fault is
// thrown so the caller retries the whole batch later. Nothing here acknowledges anything.
import { driverError, type Db } from '../db/client.js'
import { codeSettingsOf } from '../db/queries/coupons.js'
import { codeOf, type CodeSettings } from '../issuing/codes.js'
import { persistEvents, persistRedemptions, recordFailedEvents, type FailedEntry } from '../db/queries/issues.js'
import { recordSoldOut } from '../events/outbox.js'
import { eventPayload, type CouponEvent, type IssueEvent, type RedemptionEvent, type RevokeEvent, type UnitRevokeEvent } from '../stream/events.js'

export interface BatchOutcome {
  /** new rows in coupon_issues */
  inserted: number
  /** issue events whose row already existed (redelivery) */
  duplicates: number
  /** entries parked in failed_issue_events */
  failed: number
  /** those entries */
  parked: FailedEntry[]
}

/** SQLSTATE classes that say "this row is bad", as opposed to "the database is unwell". */
const ROW_ERROR_CLASSES = ['22', '23']
export const isRowError = (err: unknown) => {
  const { code } = driverError(err)
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && ROW_ERROR_CLASSES.includes(code.slice(0, 2))
}

export interface PersistBatchOptions {
  /**
   * Of these coupons, the ones that may be sold out (Redis stock 0 or unknown). Counting a coupon's
   * active rows costs up to totalQuantity index entries, too much for every batch of a large campaign;
   * without this hint every coupon with an issue in the batch is counted.
   */
  maybeSoldOut?: (couponIds: number[]) => Promise<number[]>
  /** EVENTS_ENABLED: announce what is persisted in the event outbox (default false; the consumer passes the setting) */
  announce?: boolean
}

export class PersistBatch {
  readonly #db: Db
  readonly #maybeSoldOut: (couponIds: number[]) => Promise<number[]>
  readonly #announce: boolean
  /**
   * Coupons never disappear and their code settings never change, so a positive lookup is cached for the
   * life of the process.
   */
  readonly #knownCoupons = new Map<number, CodeSettings>()

  constructor (db: Db, { maybeSoldOut = async (ids) => ids, announce = false }: PersistBatchOptions = {}) {
    this.#db = db
    this.#maybeSoldOut = maybeSoldOut
    this.#announce = announce
  }

  async persist (events: CouponEvent[], poison: FailedEntry[]): Promise<BatchOutcome> {
    const unknown = await this.#unknownCoupons(events)
    const failed = [...poison]
    let good: CouponEvent[] = []
    for (const event of events) {
      if (unknown.has(event.couponId)) failed.push(toFailed(event, `coupon ${event.couponId} does not exist`, 1))
      else good.push(event)
    }
    let inserted: number
    try {
      inserted = await this.#write(good)
    } catch (err) {
      if (!isRowError(err)) throw err
      // An entry the checks above did not foresee: find it by writing one at a time.
      ;({ inserted, good } = await this.#writeOneByOne(good, failed))
    }
    await recordFailedEvents(this.#db, failed)
    await this.#announceSoldOut(good)
    const issuesWritten = good.reduce((n, e) => e.type === 'issue' ? n + 1 : n, 0)
    return { inserted, duplicates: issuesWritten - inserted, failed: failed.length, parked: failed }
  }

  async #writeOneByOne (events: CouponEvent[], failed: FailedEntry[]) {
    let inserted = 0
    const good: CouponEvent[] = []
    for (const event of events) {
      try {
        inserted += await this.#write([event])
        good.push(event)
      } catch (err) {
        if (!isRowError(err)) throw err
        failed.push(toFailed(event, String(driverError(err).message ?? err), 1))
      }
    }
    return { inserted, good }
  }

  async #write (events: CouponEvent[]): Promise<number> {
    const issues: IssueEvent[] = []
    const revokes: (RevokeEvent | UnitRevokeEvent)[] = []
    const redemptions: RedemptionEvent[] = []
    for (const event of events) {
      if (event.type === 'issue') issues.push(event)
      else if (event.type === 'revoke' || event.type === 'revokeUnit') revokes.push(event)
      else redemptions.push(event)
    }
    if (issues.length === 0 && revokes.length === 0 && redemptions.length === 0) return 0
    // The code follows from the unit (src/issuing/codes.ts): the entry need not carry it.
    const announce = this.#announce
    const inserted = await persistEvents(this.#db, issues, revokes, (e) => codeOf(this.#knownCoupons.get(e.couponId)!, e.userId, e.claim), { announce })
    await persistRedemptions(this.#db, redemptions, issues, { announce })
    return inserted
  }

  /**
   * After the batch committed (and its revocation fix-up ran): coupon.sold_out for coupons whose
   * persisted active units reached the total. Every coupon with an issue in the batch is considered,
   * not only those with new rows: a crash after the commit redelivers the batch (no new rows then) and
   * the check must still run.
   */
  async #announceSoldOut (events: CouponEvent[]): Promise<void> {
    if (!this.#announce) return
    const coupons = new Set<number>()
    for (const e of events) if (e.type === 'issue') coupons.add(e.couponId)
    if (coupons.size === 0) return
    await recordSoldOut(this.#db, await this.#maybeSoldOut([...coupons]))
  }

  async #unknownCoupons (events: CouponEvent[]): Promise<Set<number>> {
    const unseen = new Set<number>()
    for (const event of events) if (!this.#knownCoupons.has(event.couponId)) unseen.add(event.couponId)
    if (unseen.size === 0) return unseen
    for (const [id, settings] of await codeSettingsOf(this.#db, [...unseen])) {
      this.#knownCoupons.set(id, settings)
      unseen.delete(id)
    }
    return unseen
  }
}

/** A decoded event to park, stored as a v0 payload (events.ts) so that a retry or discard decodes it whole. */
export function toFailed (event: CouponEvent, error: string, deliveries: number): FailedEntry {
  return { streamKey: event.streamKey, id: event.id, payload: eventPayload(event), error, deliveries }
}
