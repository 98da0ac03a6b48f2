// The consumer's batch helpers and the entry decoder are pure: decoding, merging, sizing and counting need no Redis.
import t from 'tap'
import { countPerCoupon, FIRST_READ_COUNT, largestStreamShare, mergeBatches, ReadSize, toBatch, type StreamReply } from '../src/persistence/batch.js'
import { createKeys } from '../src/redis/keys.js'
import { decodeEntry, encodeEntry, eventPayload, fieldsToObject, isEvent } from '../src/stream/events.js'

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

t.test('decodeEntry: v1 (compact) entries, and v0 ones still in a stream after an upgrade', async (t) => {
  const e1 = (value: string) => ['e1', value]
  t.same(decodeEntry(s7, 7, '1-0', e1('i|alice|3|1700000000000|')),
    { type: 'issue', streamKey: s7, id: '1-0', couponId: 7, userId: 'alice', claim: 3, at: 1700000000000 }, 'an issue; the couponId comes from the stream key')
  t.match(decodeEntry(s7, 7, '1-0', e1('i|a.b:c@d-e_f|1|1000|key-1')), { type: 'issue', userId: 'a.b:c@d-e_f', claim: 1, at: 1000, idempotencyKey: 'key-1' }, 'with its key')
  t.same(decodeEntry(s7, 7, '2-0', e1('r|alice|2|1001|3|')), { type: 'revoke', streamKey: s7, id: '2-0', couponId: 7, userId: 'alice', units: 2, at: 1001, upToClaim: 3 })
  t.match(decodeEntry(s7, 7, '2-0', e1('r|alice|2|1001|3|k:2')), { type: 'revoke', units: 2, upToClaim: 3, idempotencyKey: 'k:2' })
  t.notOk('idempotencyKey' in decodeEntry(s7, 7, '1-0', e1('i|alice|1|1000|')), 'no key: no idempotencyKey property at all')
  // The same events in v0, as an older version wrote them: decoded alike.
  t.same(decodeEntry(s7, 7, '1-0', issue('alice', 3)), { type: 'issue', streamKey: s7, id: '1-0', couponId: 7, userId: 'alice', claim: 3, at: 1000 })
  t.same(decodeEntry(s7, 7, '2-0', ['type', 'revoke', 'couponId', '7', 'userId', 'alice', 'units', '2', 'at', '1001', 'upTo', '3', 'idem', 'k:2']),
    decodeEntry(s7, 7, '2-0', e1('r|alice|2|1001|3|k:2')), 'a v0 revoke decodes to the same event as its v1 twin')
  t.match(decodeEntry(s7, 7, '2-0', ['type', 'revoke', 'couponId', '7', 'userId', 'alice', 'units', '2', 'at', '1001', 'upTo', '3', 'idem', 'k:2']),
    { type: 'revoke', units: 2, upToClaim: 3, idempotencyKey: 'k:2' })
  const legacy = decodeEntry(s7, 7, '2-0', ['type', 'revoke', 'couponId', '7', 'userId', 'alice', 'units', '2', 'at', '1001'])
  t.match(legacy, { type: 'revoke', units: 2 }, 'a v0 revoke from before upTo existed')
  t.notOk('upToClaim' in legacy, 'has no upToClaim')
  // encodeEntry writes what the scripts write.
  t.same(encodeEntry({ type: 'issue', userId: 'u', claim: 2, at: 5, idempotencyKey: 'k' }), ['e1', 'i|u|2|5|k'])
  t.same(encodeEntry({ type: 'revoke', userId: 'u', units: 1, at: 6, upToClaim: 2 }), ['e1', 'r|u|1|6|2|'])
})

t.test('decodeEntry: a malformed v1 entry is poison with a reason, never a guess', async (t) => {
  const cases: [string, string[], RegExp][] = [
    ['too few parts', ['e1', 'i|alice|1|1000'], /issue entry has 4 '\|'-separated parts, expected 5/],
    ['too many parts', ['e1', 'i|alice|1|1000||x'], /issue entry has 6 .* expected 5/],
    ['a revoke with an issue\'s parts', ['e1', 'r|alice|1|1000|'], /revoke entry has 5 .* expected 6/],
    ['a userId smuggling a separator in', ['e1', 'i|ali|ce|1|1000|'], /issue entry has 6/],
    ['an empty value', ['e1', ''], /unknown event type ""/],
    ['an unknown event type', ['e1', 'z|alice|1|1000|'], /unknown event type "z"/],
    ['a unit revoke without its reason', ['e1', 'x|alice|1|1000|'], /reason missing or unknown/],
    ['a unit revoke with an unknown reason', ['e1', 'x|alice|1|1000|lost'], /reason missing or unknown/],
    ['a v0 type name in v1', ['e1', 'issue|alice|1|1000|'], /unknown event type "issue"/],
    ['claim 0', ['e1', 'i|alice|0|1000|'], /claim missing or not a positive integer/],
    ['claim with a leading zero', ['e1', 'i|alice|01|1000|'], /claim missing/],
    ['claim not a number', ['e1', 'i|alice|one|1000|'], /claim missing/],
    ['claim negative', ['e1', 'i|alice|-1|1000|'], /claim missing/],
    ['claim in exponent form', ['e1', 'i|alice|1e3|1000|'], /claim missing/],
    ['claim beyond 16 digits', ['e1', `i|alice|${'9'.repeat(17)}|1000|`], /claim missing/],
    ['at empty', ['e1', 'i|alice|1||'], /at missing or not a timestamp/],
    ['at fractional', ['e1', 'i|alice|1|1000.5|'], /at missing/],
    ['units 0', ['e1', 'r|alice|0|1000|1|'], /units missing or not a positive integer/],
    ['upTo empty', ['e1', 'r|alice|1|1000||'], /upTo missing or not a positive integer/],
    ['upTo not a number', ['e1', 'r|alice|1|1000|x|'], /upTo missing/],
    ['an empty userId', ['e1', 'i||1|1000|'], /userId missing or malformed/],
    ['a NUL byte in the userId', ['e1', 'i|nul\u0000byte|1|1000|'], /userId missing or malformed/],
    ['a space in the userId', ['e1', 'i|a b|1|1000|'], /userId missing or malformed/],
    ['a path in the userId', ['e1', 'i|../etc/passwd|1|1000|'], /userId missing or malformed/],
    ['a \'#\' userId (the completeness marker)', ['e1', 'i|#|1|1000|'], /userId missing or malformed/],
    ['a userId of 129 characters', ['e1', `i|${'u'.repeat(129)}|1|1000|`], /userId missing or malformed/],
    ['a malformed key', ['e1', 'i|alice|1|1000|key with spaces'], /idem malformed/],
    ['an \'@\' in the key', ['e1', 'r|alice|1|1000|1|a@b'], /idem malformed/],
    ['an unknown format version', ['e2', 'i|alice|1|1000|'], /unknown entry format "e2"/],
    ['version 0 spelled as a field', ['e0', 'i|alice|1|1000|'], /unknown entry format "e0"/],
    ['e1 with another field', ['e1', 'i|alice|1|1000|', 'type', 'issue'], /exactly one field, this one has 2/],
    ['e1 without a value', ['e1'], /exactly one field/],
    ['no fields at all', [], /couponId missing/]
  ]
  for (const [what, fields, error] of cases) {
    const entry = decodeEntry(s7, 7, '9-0', fields)
    t.notOk(isEvent(entry), `${what}: poison`)
    if (!isEvent(entry)) {
      t.match(entry.error, error, `${what}: ${entry.error}`)
      t.same(entry.payload, fieldsToObject(fields), `${what}: the raw fields are kept to be parked`)
    }
  }
  const nameless = decodeEntry('not-a-coupon-stream', null, '9-0', ['e1', 'i|alice|1|1000|'])
  t.match(nameless, { error: /stream key names no coupon/ }, 'a v1 entry needs the stream key for its coupon')
})

t.test('toBatch: v0 and v1 entries in one read; a parked event round-trips through its payload', async (t) => {
  const batch = toBatch([[s7, [['1-0', issue('old')], ['2-0', ['e1', 'i|new|1|1001|k1']], ['3-0', ['e1', 'i|bad|x|1002|']], ['4-0', ['e1', 'r|new|1|1003|1|']]]]], decoding)
  t.same(batch.events.map((e) => [e.id, e.type, e.userId]), [['1-0', 'issue', 'old'], ['2-0', 'issue', 'new'], ['4-0', 'revoke', 'new']])
  t.same(batch.poison.map((p) => [p.id, p.payload]), [['3-0', { e1: 'i|bad|x|1002|' }]])
  // A decoded event parked after decoding (unknown coupon, a row Postgres refused) is stored as a v0
  // payload; a retry or discard decodes it back whole, key and upTo included.
  for (const event of batch.events) {
    const payload = eventPayload(event)
    t.same(decodeEntry(s7, 7, event.id, Object.entries(payload).flat()), event, `${event.type} ${event.id} round-trips`)
  }
  // Payloads parked before v1 named the key and upTo as the event does: still read.
  const old = { type: 'revoke', couponId: '7', userId: 'new', units: '1', at: '1003', upToClaim: '4', idempotencyKey: 'k-old' }
  t.match(decodeEntry(s7, 7, '5-0', Object.entries(old).flat()), { type: 'revoke', upToClaim: 4, idempotencyKey: 'k-old' })
})

t.test('ReadSize: COUNT grows while reads come back full, drops back after idle; linger only after a small, non-empty batch', async (t) => {
  const size = new ReadSize(1000, 50)
  t.equal(size.count, FIRST_READ_COUNT, 'starts small')
  t.equal(size.read(1), 50, 'one entry: the loop keeps up, linger')
  t.equal(size.count, 100)
  t.equal(size.read(100), 0, 'a full read: a backlog, read on at once')
  t.equal(size.count, 200, 'and ask for twice as many')
  const grown = [200]
  while (size.count < 1000) {
    t.equal(size.read(size.count), 0)
    grown.push(size.count)
  }
  t.same(grown, [200, 400, 800, 1000], 'doubles up to CONSUMER_BATCH_SIZE, never past it')
  t.equal(size.read(1000), 0)
  t.equal(size.count, 1000)
  t.equal(size.read(999), 50, 'a read that did not fill: linger')
  t.equal(size.count, 1000, 'a smaller batch does not shrink the read: only idle does')
  t.equal(size.read(0), 0, 'an empty read: idle, no linger (the next read blocks)')
  t.equal(size.count, 100, 'back to the start')
  t.equal(size.read(150, 100), 0, 'more than asked for (a read of several streams) counts as full')

  const tiny = new ReadSize(20, 0)
  t.equal(tiny.count, 20, 'a CONSUMER_BATCH_SIZE below the start is the only size')
  t.equal(tiny.read(5), 0, 'CONSUMER_LINGER_MS=0: never linger')
  t.equal(tiny.read(20), 0)
  t.equal(tiny.count, 20)
})
