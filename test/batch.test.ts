// The consumer's batch helpers are pure: decoding, merging, sizing and counting need no Redis.
import t from 'tap'
import { countPerCoupon, largestStreamShare, mergeBatches, toBatch, type StreamReply } from '../src/persistence/batch.js'
import { createKeys } from '../src/redis/keys.js'

const keys = createKeys('unit:')
const s7 = keys.coupon(7).events
const s8 = keys.coupon(8).events
const decoding = { couponIdOfStream: keys.couponIdOfStream, maxDeliveries: 3 }
const issue = (userId: string, claim = 1, couponId = 7) => ['type', 'issue', 'couponId', String(couponId), 'userId', userId, 'claim', String(claim), 'at', '1000']

t.test('toBatch: events, poison, deleted entries, delivery limit', async (t) => {
  const reply: StreamReply = [
    [s7, [['1-0', issue('a')], ['2-0', null], ['3-0', ['type', 'issue', 'couponId', '7']], ['4-0', issue('b', 1, 9)]]],
    [s8, [['5-0', issue('c', 2, 8)], ['6-0', ['type', 'revoke', 'couponId', '8', 'userId', 'c', 'units', '1', 'at', '1001', 'upTo', '2', 'idem', 'k-1']]]]
  ]
  const batch = toBatch(reply, decoding)
  t.same([...batch.ids], [[s7, ['1-0', '2-0', '3-0', '4-0']], [s8, ['5-0', '6-0']]], 'every id is acknowledged, the deleted one too')
  t.same(batch.events.map((e) => [e.type, e.userId]), [['issue', 'a'], ['issue', 'c'], ['revoke', 'c']])
  t.match(batch.events[2], { upToClaim: 2, idempotencyKey: 'k-1', units: 1 })
  t.same(batch.poison.map((p) => p.id), ['3-0', '4-0'], 'a malformed entry and one of another coupon are poison')
  t.match(batch.poison[1]!.error, /does not match stream of coupon 7/)

  const redelivered = toBatch([[s7, [['1-0', issue('a')], ['7-0', issue('d')]]]], decoding, new Map([['1-0', 4], ['7-0', 3]]))
  t.same(redelivered.events.map((e) => e.id), ['7-0'], 'at the limit it is still written')
  t.same(redelivered.poison.map((p) => [p.id, p.deliveries]), [['1-0', 4]], 'past the limit it is parked')
  t.match(redelivered.poison[0]!.error, /delivered 4 times/)
})

t.test('mergeBatches, largestStreamShare, countPerCoupon', async (t) => {
  const a = toBatch([[s7, [['1-0', issue('a')], ['2-0', issue('b')]]]], decoding)
  const b = toBatch([[s7, [['3-0', issue('c')]]], [s8, [['4-0', issue('d', 1, 8)]]]], decoding)
  const merged = mergeBatches(a, b)
  t.same(merged.ids.get(s7), ['1-0', '2-0', '3-0'])
  t.same(merged.ids.get(s8), ['4-0'])
  t.equal(merged.events.length, 4)
  t.same(a.ids.get(s7), ['1-0', '2-0'], 'the inputs are not changed')
  t.equal(largestStreamShare(merged), 3, 'COUNT applies per stream: the largest stream decides whether the read was full')
  t.equal(largestStreamShare(toBatch([], decoding)), 0)
  t.same(countPerCoupon(merged, keys.couponIdOfStream, { 7: 1 }), { 7: 4, 8: 1 })
  t.same(countPerCoupon(toBatch([['not-a-stream', [['1-0', null]]]], decoding), keys.couponIdOfStream, {}), { 'not-a-stream': 1 })
})
