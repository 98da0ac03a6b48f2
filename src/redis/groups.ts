// The one parser of XINFO GROUPS replies (flat name/value arrays in RESP2).
import type { RedisClient } from './client.js'
import { CONSUMER_GROUP } from './keys.js'

export interface GroupInfo {
  pending: number
  /** entries not yet delivered to the group; null when Redis cannot tell (after some deletions) */
  lag: number | null
  lastDeliveredId: string
  consumers: number
}

/** The state of our consumer group on a stream; null when the stream or the group does not exist. */
export async function consumerGroupInfo (redis: RedisClient, stream: string, group = CONSUMER_GROUP): Promise<GroupInfo | null> {
  const groups = await redis.xinfo('GROUPS', stream).catch(() => []) as unknown[][]
  for (const flat of groups) {
    const info = new Map<unknown, unknown>()
    for (let i = 0; i + 1 < flat.length; i += 2) info.set(flat[i], flat[i + 1])
    if (info.get('name') !== group) continue
    const lag = info.get('lag')
    return {
      pending: Number(info.get('pending') ?? 0),
      lag: lag === null || lag === undefined ? null : Number(lag),
      lastDeliveredId: String(info.get('last-delivered-id')),
      consumers: Number(info.get('consumers') ?? 0)
    }
  }
  return null
}

/** Compares two stream entry ids ("ms-seq") numerically. */
export function compareEntryIds (a: string, b: string): number {
  const [aMs, aSeq] = a.split('-').map(Number)
  const [bMs, bSeq] = b.split('-').map(Number)
  return aMs! - bMs! || aSeq! - bSeq!
}
