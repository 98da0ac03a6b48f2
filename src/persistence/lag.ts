// How far behind persistence is, in time: the age of the oldest entry the group has not acknowledged
// (pending, or not yet delivered). The backlog gauge says how many; this says since when.
import type { RedisClient } from '../redis/client.js'
import { CONSUMER_GROUP } from '../redis/keys.js'
import { consumerGroupInfo } from '../redis/groups.js'

const msOf = (entryId: string) => Number(entryId.split('-')[0])

/** The moment (ms, from the entry id) of the oldest unacknowledged entry of a stream; null when there is none. */
export async function oldestUnacknowledgedMs (redis: RedisClient, stream: string): Promise<number | null> {
  const group = await consumerGroupInfo(redis, stream)
  if (!group) return null
  if (group.pending > 0) {
    const [, oldest] = await redis.xpending(stream, CONSUMER_GROUP) as [number, string | null, ...unknown[]]
    if (oldest) return msOf(oldest)
  }
  const [next] = await redis.xrange(stream, `(${group.lastDeliveredId}`, '+', 'COUNT', 1)
  return next ? msOf(next[0]) : null
}
