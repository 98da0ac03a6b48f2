// Redis Cluster hash slots, computed here rather than asked for (CLUSTER KEYSLOT is a round trip): the
// request path needs a coupon's slot to know which primary runs its script, and the per-shard keys (the
// server-change record, the replication fence) need a hash tag that lands in a slot a given node serves.
// CRC16 (XMODEM) of the key, or of its hash tag `{...}` when it has a non-empty one, modulo 16384.

export const SLOTS = 16384

const TABLE = (() => {
  const table = new Uint16Array(256)
  for (let i = 0; i < 256; i++) {
    let crc = i << 8
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
    table[i] = crc
  }
  return table
})()

function crc16 (text: string): number {
  let crc = 0
  for (const byte of Buffer.from(text, 'utf8')) crc = ((crc << 8) & 0xffff) ^ TABLE[((crc >> 8) ^ byte) & 0xff]!
  return crc
}

/** The slot of a key, as Redis Cluster computes it (the hash tag alone when the key has a non-empty one). */
export function keySlot (key: string): number {
  const open = key.indexOf('{')
  if (open !== -1) {
    const close = key.indexOf('}', open + 1)
    if (close > open + 1) return crc16(key.slice(open + 1, close)) % SLOTS
  }
  return crc16(key) % SLOTS
}

const tagOfSlot = new Map<number, string>()

/**
 * A short hash tag whose slot is `slot` (`s<n>`, the first n that lands there): the per-shard keys put
 * it between braces so that they live in a slot their node serves. Found by trying, about 16384 tries
 * per slot, once per slot per process.
 */
export function tagForSlot (slot: number): string {
  if (!Number.isInteger(slot) || slot < 0 || slot >= SLOTS) throw new RangeError(`not a hash slot: ${slot}`)
  let tag = tagOfSlot.get(slot)
  if (tag === undefined) {
    for (let n = 0; ; n++) {
      if (crc16(`s${n}`) % SLOTS === slot) {
        tag = `s${n}`
        break
      }
    }
    tagOfSlot.set(slot, tag)
  }
  return tag
}
