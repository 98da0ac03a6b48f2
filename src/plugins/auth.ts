// Who may call what: admin routes take ADMIN_TOKEN; shop routes take an API key once any is configured.
import { createHash, timingSafeEqual } from 'node:crypto'
import fp from 'fastify-plugin'
import type { FastifyRequest } from 'fastify'
import { Forbidden, Unauthorized } from '../errors.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    requireAdmin: (request: FastifyRequest) => Promise<void>
    requireShop: (request: FastifyRequest) => Promise<void>
    /** onRequest hooks for the hot path: [requireShop] when API keys are configured, none otherwise */
    shopAuth: ((request: FastifyRequest) => Promise<void>)[]
  }
}

// Hashing first gives equal-length inputs, so the comparison time says nothing about the secret.
const digest = (value: string) => createHash('sha256').update(value).digest()
const matchesAny = (given: Buffer, secrets: Buffer[]) => secrets.reduce((found, secret) => timingSafeEqual(given, secret) || found, false)

function bearerToken (request: FastifyRequest): string | null {
  const header = request.headers.authorization
  if (typeof header !== 'string') return null
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
  return match ? match[1]! : null
}

export default fp(async function authPlugin (fastify, { config }: { config: Config }) {
  const adminSecret = [digest(config.adminToken)]
  const shopSecrets = config.apiKeys.map(digest)

  fastify.decorate('requireAdmin', async (request: FastifyRequest) => {
    const token = bearerToken(request)
    if (token === null) throw new Unauthorized()
    const given = digest(token)
    if (matchesAny(given, adminSecret)) return
    if (shopSecrets.length > 0 && matchesAny(given, shopSecrets)) throw new Forbidden()
    throw new Unauthorized()
  })

  fastify.decorate('requireShop', async (request: FastifyRequest) => {
    if (shopSecrets.length === 0) return
    const token = bearerToken(request)
    if (token === null) throw new Unauthorized()
    const given = digest(token)
    if (!matchesAny(given, shopSecrets) && !matchesAny(given, adminSecret)) throw new Unauthorized()
  })
  // Without API keys requireShop checks nothing, so the issue endpoint does not run it at all.
  fastify.decorate('shopAuth', shopSecrets.length > 0 ? [fastify.requireShop] : [])
}, { name: 'auth' })
