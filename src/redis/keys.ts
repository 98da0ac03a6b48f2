// The one source of truth for Redis key names.
import { tagForSlot } from './slots.js'

// Every key of one coupon carries the hash tag `{<couponId>}`, so a script touches one slot
// and the design moves to Redis Cluster unchanged.

export const CONSUMER_GROUP = 'persisters'

/**
 * A field present in every complete holders and claims hash. A userId cannot contain '#', so the
 * scripts tell "nobody claimed yet" from "the hash was lost" (see issue.lua).
 */
export const COMPLETE_MARKER = '#'

export interface CouponKeys {
  /** the coupon id these keys belong to, as the scripts publish it */
  couponId: string
  /** pub/sub channel (one per prefix, not a key): coupon ids whose stock may have come back */
  stockReturned: string
  /** hash: total, perUserLimit, startsAt (ms), endsAt (ms or '') */
  meta: string
  /** string integer: units still available */
  stock: string
  /** hash: userId -> units the user holds now */
  holders: string
  /** hash: userId -> last claim number handed to the user (never decreases; part of the row identity) */
  claims: string
  /** stream of issue and revoke events, persisted by the consumer group */
  events: string
  /** hash: remembered outcomes of requests sent with an Idempotency-Key ("issue:<key>", "revoke:<key>") */
  idempotency: string
  /** hash: userId -> "upTo|revokedAtMs" of the user's last cancel */
  revoked: string
  /** set: ids of parked entries an admin discarded since the last rebuild */
  discarded: string
  /**
   * hash: a code mac's field (its bits as hex, src/issuing/codes.ts) -> "userId|claim|issuedAtMs" of every
   * unit handed out, with "|returnedAtMs" appended once the expiry job returned the unit to stock; field
   * '#' = complete
   */
  codes: string
  /**
   * hash: redemption state (src/redis/scripts/includes/units.lua): a mac's field -> "d|orderId|atMs"
   * (redeemed) or "u|orderId|atMs" (rolled back); '@userId' -> units of the user redeemed now; field '#' =
   * complete
   */
  redemptions: string
  /**
   * The two hashes above as versions before 2026-11-24 kept them, keyed by the mac's characters. The
   * names changed with the keying: a coupon whose counters were written by an older version finds its
   * hashes missing and rebuilds them from Postgres and the stream (restoreCounters.lua keeps the live
   * counters when only these are lost); the rebuild then drops the old ones.
   */
  legacyCodeKeys: string[]
  /**
   * sorted set, only while the campaign has returnExpiredToStock (meta field returnExpired = '1'):
   * "userId|claim" scored by the unit's expiresAt (ms), the candidates of the expiry job
   * (returnExpired.lua); member '#' (score +inf) marks it complete. A candidate is only a hint: the job
   * checks the unit itself before returning it.
   */
  expiring: string
  /** string: short lock while one request rebuilds the counters */
  restoreLock: string
  /**
   * hash: campaign statistics that survive a counter rebuild: issued, revoked, discarded, returned (units, cumulative),
   * firstIssuedAt, soldOutAt (ms, first time), rejected:<CODE>, peakPerSecond, lagWorstMs (src/issuing/campaign-stats.ts)
   */
  stats: string
  /** prefix of the per-second issue counters (`<prefix><unix second>`, expiring), for the peak rate */
  perSecond: string
}

export function createKeys (prefix: string) {
  const couponKey = (couponId: number | string, part: string) => `${prefix}coupon:{${couponId}}:${part}`
  const stockReturned = `${prefix}stock-returned`
  return {
    coupon (couponId: number | string): CouponKeys {
      return {
        couponId: String(couponId),
        stockReturned,
        meta: couponKey(couponId, 'meta'),
        stock: couponKey(couponId, 'stock'),
        holders: couponKey(couponId, 'holders'),
        claims: couponKey(couponId, 'claims'),
        events: couponKey(couponId, 'events'),
        idempotency: couponKey(couponId, 'idempotency'),
        revoked: couponKey(couponId, 'revoked'),
        discarded: couponKey(couponId, 'discarded'),
        codes: couponKey(couponId, 'codes-v2'),
        redemptions: couponKey(couponId, 'redemptions-v2'),
        legacyCodeKeys: [couponKey(couponId, 'codes'), couponKey(couponId, 'redemptions')],
        expiring: couponKey(couponId, 'expiring'),
        restoreLock: couponKey(couponId, 'restore-lock'),
        stats: couponKey(couponId, 'stats'),
        perSecond: couponKey(couponId, 'second:')
      }
    },
    /** SCAN pattern matching every coupon's events stream under this prefix */
    eventStreamPattern: `${prefix.replace(/[*?[\]\\]/g, '\\$&')}coupon:*:events`,
    /** string: id of the Postgres database these keys belong to */
    databaseId: `${prefix}database-id`,
    /** string: run_id of the Redis server the counters were last checked against (src/issuing/server-change.ts) */
    serverRunId: `${prefix}server-run-id`,
    /** string: a counter the replication fence writes so WAIT has an offset to wait for (src/redis/replication-fence.ts) */
    replicationFence: `${prefix}replication-fence`,
    /**
     * Redis Cluster, one per primary: string, run_id of the server the counters of that primary's coupons were
     * last checked against, in a slot the primary serves (its lowest; src/issuing/server-change.ts)
     */
    shardServerRunId: (slot: number) => `${prefix}server-run-id:{${tagForSlot(slot)}}`,
    /** Redis Cluster, one per primary: the replication fence's counter, in a slot the primary serves (its lowest) */
    shardReplicationFence: (slot: number) => `${prefix}replication-fence:{${tagForSlot(slot)}}`,
    /** SCAN pattern matching every coupon's meta hash under this prefix */
    couponMetaPattern: `${prefix.replace(/[*?[\]\\]/g, '\\$&')}coupon:*:meta`,
    /** set of coupon ids whose event streams the consumer reads */
    activeCoupons: `${prefix}active-coupons`,
    /**
     * pub/sub channel: revoke, updateCoupon, discardIssue, returnExpired and a full restoreCounters publish the coupon id
     * here, so every instance drops its sold-out marker (src/issuing/sold-out-markers.ts)
     */
    stockReturned,
    /** prefix for @fastify/rate-limit counters */
    rateLimit: `${prefix}rate:`,
    /** Parses the coupon id back out of an events stream key. */
    couponIdOfStream (streamKey: string): number | null {
      const match = /\{(\d+)\}:events$/.exec(streamKey)
      return match ? Number(match[1]) : null
    }
  }
}

export type Keys = ReturnType<typeof createKeys>
