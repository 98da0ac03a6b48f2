// A connection to Redis that closes after Redis ran a script but before its reply arrived: the write
// happened, the reply is lost. ioredis by default sends every command that was in flight again once it
// has reconnected (autoResendUnfulfilledCommands), so an issue without an Idempotency-Key would run twice
// and hand a user with perUserLimit > 1 a second unit that nobody asked for. The request must instead
// end in 503 REDIS_UNAVAILABLE (outcome unknown), and a retry with a key must tell what happened.
//
// A small TCP proxy between the app and Redis drops exactly that reply: it passes everything through
// until it forwards a command naming the victim, then closes that client connection when Redis answers.
import t from 'tap'
import net from 'node:net'
import { once } from 'node:events'
import { testApp, createCoupon, uniquePrefix, REDIS_URL } from './helpers/env.js'

interface ReplyDroppingProxy {
  url: string
  /** Arm: the next connection that sends a command containing `marker` loses Redis's answer to it. */
  dropReplyTo: (marker: string) => void
  dropped: () => number
  close: () => Promise<void>
}

async function replyDroppingProxy (upstreamUrl: string): Promise<ReplyDroppingProxy> {
  const upstream = new URL(upstreamUrl)
  const sockets = new Set<net.Socket>()
  let marker: string | null = null
  let dropped = 0
  const server = net.createServer((client) => {
    const redis = net.connect(Number(upstream.port || 6379), upstream.hostname)
    sockets.add(client).add(redis)
    let armed = false
    client.on('data', (chunk: Buffer) => {
      if (marker !== null && /evalsha|eval/i.test(chunk.toString('latin1')) && chunk.includes(marker)) {
        armed = true
        marker = null
      }
      redis.write(chunk)
    })
    redis.on('data', (chunk: Buffer) => {
      if (armed) {
        // Redis has run the command; its answer never reaches the app.
        dropped++
        client.destroy()
        redis.destroy()
        return
      }
      client.write(chunk)
    })
    const end = () => { client.destroy(); redis.destroy(); sockets.delete(client); sockets.delete(redis) }
    client.on('close', end).on('error', end)
    redis.on('close', end).on('error', end)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as net.AddressInfo
  return {
    url: `redis://127.0.0.1:${port}`,
    dropReplyTo: (m) => { marker = m },
    dropped: () => dropped,
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

t.test('an issue whose reply was lost with the connection is not sent again: 503, one unit, and the keyed retry settles it', async (t) => {
  const proxy = await replyDroppingProxy(REDIS_URL)
  t.teardown(proxy.close)
  const app = await testApp(t, {
    REDIS_URL: proxy.url,
    REDIS_PREFIX: uniquePrefix(t),
    REDIS_COMMAND_TIMEOUT_MS: '500',
    CONSUMER_ENABLED: 'false',
    CONSISTENCY_CRON: ''
  })
  const coupon = await createCoupon(app, { totalQuantity: 10, perUserLimit: 2 })
  const issue = () => app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'resend-victim' } })
  t.equal((await app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, payload: { userId: 'warm-up' } })).statusCode, 201, 'the script is loaded and the path warm')

  proxy.dropReplyTo('resend-victim')
  const lost = await issue()
  t.equal(proxy.dropped(), 1, 'the proxy dropped the reply to the issue')
  t.equal(lost.statusCode, 503, 'the request whose reply was lost answers 503')
  t.equal(lost.json().code, 'REDIS_UNAVAILABLE', 'outcome unknown: the write may have happened')

  const held = await app.inject({ method: 'GET', url: `/coupons/${coupon.id}/issues/resend-victim` })
  t.equal(held.statusCode, 200, 'the script had run: the user holds a unit')
  t.equal(held.json().units, 1, 'exactly one unit: the command was not sent a second time')
  const coupons = await app.inject({ method: 'GET', url: `/coupons/${coupon.id}` })
  t.equal(coupons.json().remaining, 8, 'two units out: warm-up and the one lost reply, not three')

  // The same loss with an Idempotency-Key: the retry replays the unit the lost reply carried.
  const keyed = () => app.inject({ method: 'POST', url: `/coupons/${coupon.id}/issues`, headers: { 'idempotency-key': 'order-77-claim' }, payload: { userId: 'keyed-victim' } })
  proxy.dropReplyTo('keyed-victim')
  const lostKeyed = await keyed()
  t.equal(proxy.dropped(), 2, 'the proxy dropped the reply to the keyed issue')
  t.equal(lostKeyed.json().code, 'REDIS_UNAVAILABLE', 'the keyed request answers 503 too')
  const retried = await keyed()
  t.equal(retried.statusCode, 201, 'the retry with the same key answers 201')
  t.equal(retried.headers['idempotent-replayed'], 'true', 'as a replay of the unit the lost reply carried')
  t.equal((await app.inject({ method: 'GET', url: `/coupons/${coupon.id}` })).json().remaining, 7, 'one unit for the keyed user, not two')
})
