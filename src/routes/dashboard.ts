// GET /dashboard: the live campaign page (src/dashboard/, copied next to the compiled code by
// scripts/copy-assets.mjs). The page and its files hold no data and are public; the admin token stays in
// the browser (URL fragment or form) and goes to the admin API as an Authorization header only.
import { readFile } from 'node:fs/promises'
import type { FastifyPluginAsync, FastifyReply } from 'fastify'

const assets = {
  '/dashboard': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/dashboard/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
  '/dashboard/favicon.svg': { file: 'favicon.svg', type: 'image/svg+xml' }
} as const

/**
 * Nothing but this origin's own files and API: no inline script or style, no frames, and no form
 * submission (the token form is handled by app.js; without it, the browser must not send the token
 * anywhere as a query string).
 */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'"
].join('; ')

function secure (reply: FastifyReply, type: string): FastifyReply {
  return reply
    .type(type)
    .header('content-security-policy', DASHBOARD_CSP)
    .header('x-content-type-options', 'nosniff')
    .header('referrer-policy', 'no-referrer')
    .header('x-frame-options', 'DENY')
    .header('cross-origin-opener-policy', 'same-origin')
    .header('cross-origin-resource-policy', 'same-origin')
    // Small files: revalidated on every load, so an upgrade's page never runs the old script.
    .header('cache-control', 'no-cache')
}

const dashboardRoutes: FastifyPluginAsync = async (fastify) => {
  // Read once at startup: a build without the files fails here, not on the first visit.
  for (const [url, { file, type }] of Object.entries(assets)) {
    const body = await readFile(new URL(`../dashboard/${file}`, import.meta.url))
    fastify.get(url, { schema: { hide: true } }, async (_request, reply) => secure(reply, type).send(body))
  }
  fastify.get('/dashboard/', { schema: { hide: true } }, async (_request, reply) => reply.redirect('/dashboard', 301))
}

export default dashboardRoutes
