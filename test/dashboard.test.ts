// The live campaign page (GET /dashboard) in a real browser: Debian's chromium driven by playwright-core
// (no browser download). A rush is run against the listening service while the page polls; its numbers
// must follow the stock down to SOLD OUT and end equal to GET /admin/coupons/:id/stats, and the admin
// token must never travel in a URL. A missing chromium fails the test: CI (.ci/run) installs it.
import t, { type Test } from 'tap'
import { existsSync, mkdirSync } from 'node:fs'
import type { IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium, type Browser, type Page } from 'playwright-core'
import type { CampaignStatsReport } from '../src/issuing/campaign-stats.js'
import { DASHBOARD_CSP } from '../src/routes/dashboard.js'
import { admin, ADMIN_TOKEN, createCoupon, testApp, waitFor, type TestApp } from './helpers/env.js'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const ROOT = fileURLToPath(new URL('..', import.meta.url))
/** Where the screenshot goes (gitignored); DASHBOARD_SCREENSHOT=docs/dashboard.png refreshes the README's. */
const ARTIFACT = resolve(ROOT, '.tap/artifacts/dashboard.png')

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

async function launch (t: Test): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: install Debian's package (apt-get install -y chromium) or set CHROMIUM_PATH. ` +
      'This test does not skip: .ci/run installs chromium when it is missing.')
  }
  // Root (CI containers) cannot use Chromium's sandbox.
  const args = process.getuid?.() === 0 ? ['--no-sandbox'] : []
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args })
  t.teardown(() => browser.close())
  return browser
}

async function listen (t: Test, overrides: Record<string, string> = {}) {
  const app = await testApp(t, overrides)
  // Every URL the server is asked for, to check that the token never is in one.
  const received: string[] = []
  app.server.prependListener('request', (request: IncomingMessage) => { received.push(request.url ?? '') })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, received, base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}` }
}

/** What the page shows for a data-testid: the raw number (data-value) when it has one, else its text. */
async function shown (page: Page, testId: string): Promise<string | null> {
  const element = page.getByTestId(testId)
  if (await element.count() === 0) return null
  return await element.getAttribute('data-value') ?? await element.textContent()
}

/** The stats route's answer, as JSON (moments as strings). */
type Stats = Omit<CampaignStatsReport, 'firstIssuedAt' | 'soldOutAt'> & { firstIssuedAt: string | null, soldOutAt: string | null, at: string }

async function stats (app: TestApp, couponId: number): Promise<Stats> {
  const r = await app.inject({ method: 'GET', url: `/admin/coupons/${couponId}/stats`, headers: admin })
  if (r.statusCode !== 200) throw new Error(`stats: ${r.statusCode} ${r.body}`)
  return r.json()
}

/** Console errors and uncaught exceptions of a page (a CSP violation is reported as a console error). */
function pageErrors (page: Page): string[] {
  const errors: string[] = []
  page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()) })
  page.on('pageerror', (err) => errors.push(String(err)))
  return errors
}

t.test('the page and its files: public, no data, strict headers, not in the OpenAPI document', async (t) => {
  const app = await testApp(t, { CONSUMER_ENABLED: 'false' })
  for (const [url, type] of [['/dashboard', 'text/html'], ['/dashboard/app.js', 'text/javascript'], ['/dashboard/style.css', 'text/css'], ['/dashboard/favicon.svg', 'image/svg+xml']] as const) {
    const r = await app.inject({ method: 'GET', url })
    t.equal(r.statusCode, 200, `${url} answers without a token`)
    t.match(r.headers['content-type'], new RegExp(`^${type.replace('+', '\\+')}`), `${url} content type`)
    t.equal(r.headers['content-security-policy'], DASHBOARD_CSP, `${url} CSP`)
    t.match(r.headers, { 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer', 'x-frame-options': 'DENY' }, `${url} security headers`)
  }
  t.match(DASHBOARD_CSP, /script-src 'self'/)
  t.notMatch(DASHBOARD_CSP, /unsafe-inline|unsafe-eval|\*/, 'no inline script or style, no wildcard')
  const html = (await app.inject({ method: 'GET', url: '/dashboard' })).body
  t.notMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script')
  t.notMatch(html, /\sstyle=|<style/, 'no inline style')
  const slash = await app.inject({ method: 'GET', url: '/dashboard/' })
  t.equal(slash.statusCode, 301)
  t.equal(slash.headers.location, '/dashboard')
  const spec = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
  t.notOk(Object.keys(spec.paths).some((path) => path.startsWith('/dashboard')), 'hidden from the API document')
})

t.test('the token form: a wrong token is refused and asked for again, the right one lists the campaigns', async (t) => {
  const { app, received, base } = await listen(t, { CONSUMER_ENABLED: 'false' })
  await createCoupon(app, { name: 'form campaign', totalQuantity: 3 })
  const browser = await launch(t)
  const page = await browser.newPage()
  const errors = pageErrors(page)
  await page.goto(`${base}/dashboard`)
  await page.getByLabel('ADMIN_TOKEN').fill('not-the-token')
  await page.getByRole('button', { name: 'Use token' }).click()
  await page.getByText('the token was refused (401)').waitFor()
  t.ok(await page.locator('#token-form').isVisible(), 'the form is back')
  await page.getByLabel('ADMIN_TOKEN').fill(ADMIN_TOKEN)
  await page.getByRole('button', { name: 'Use token' }).click()
  await page.getByTestId('campaign-name').filter({ hasText: 'form campaign' }).waitFor()
  // The name comes with the list, the numbers with the first stats answer a moment later: polled.
  t.equal(await waitFor(async () => { const left = await shown(page, 'remaining'); return left === '3' ? left : null }, { what: 'the stock shown' }), '3')
  t.equal(await page.evaluate(() => sessionStorage.getItem('couponrush.adminToken')), ADMIN_TOKEN, 'kept for this tab')
  // Reloading keeps the token (session storage); forgetting it clears it.
  await page.reload()
  await page.getByTestId('campaign-name').filter({ hasText: 'form campaign' }).waitFor()
  await page.getByRole('button', { name: 'Forget token' }).click()
  t.ok(await page.locator('#token-form').isVisible(), 'asked again')
  t.equal(await page.evaluate(() => sessionStorage.getItem('couponrush.adminToken')), null, 'forgotten')
  t.notOk(received.some((url) => url.includes(ADMIN_TOKEN) || url.includes('not-the-token')), 'no token in a URL the server saw')
  t.same(errors.filter((e) => !/status of 401/.test(e)), [], 'no console error but the refused token\'s 401')
  await browser.close()
})

t.test('a rush watched live: stock falls to SOLD OUT, the numbers match the stats API, the token stays out of URLs', async (t) => {
  const { app, received, base } = await listen(t)
  const coupon = await createCoupon(app, { name: 'Launch rush: first 50 get 10% off', totalQuantity: 50 })
  // A newer campaign: the page opens on the newest, so the test has to choose its coupon.
  await createCoupon(app, { name: 'next week', totalQuantity: 10 })
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1100, height: 560 } })
  const errors = pageErrors(page)
  const requested: { url: string, headers: Record<string, string> }[] = []
  const statsPolls: number[] = []
  page.on('request', (request) => {
    requested.push({ url: request.url(), headers: request.headers() })
    if (request.url().endsWith(`/admin/coupons/${coupon.id}/stats`)) statsPolls.push(Date.now())
  })

  await page.goto(`${base}/dashboard#token=${ADMIN_TOKEN}`)
  await page.getByTestId('campaign-name').filter({ hasText: 'next week' }).waitFor()
  t.notMatch(page.url(), ADMIN_TOKEN, 'the token left the address bar at once')
  await page.getByTestId('campaign').selectOption(String(coupon.id))
  await page.getByTestId('campaign-name').filter({ hasText: 'Launch rush' }).waitFor()
  await waitFor(async () => await shown(page, 'remaining') === '50', { what: 'the page to show 50 left' })
  t.match(page.url(), new RegExp(`#coupon=${coupon.id}$`), 'the choice is in the fragment (a link to it)')

  // The rush: 200 distinct users in five waves of 40 concurrent requests.
  const outcomes: string[] = []
  const wave = async (from: number) => {
    const answers = await Promise.all(Array.from({ length: 40 }, async (_, i) => {
      const r = await fetch(`${base}/coupons/${coupon.id}/issues`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ userId: `rush-${from + i}` })
      })
      return r.status === 201 ? 'issued' : (await r.json() as { code: string }).code
    }))
    outcomes.push(...answers)
  }
  await wave(0)
  // The page follows the stock down while the rush goes on.
  await waitFor(async () => await shown(page, 'remaining') === '10', { what: 'the page to show 10 left after the first wave' })
  t.notOk(await page.getByTestId('sold-out').isVisible(), 'not sold out yet')
  for (const from of [40, 80, 120, 160]) {
    await wave(from)
    await sleep(400)
  }
  t.equal(outcomes.filter((o) => o === 'issued').length, 50, '50 issued')
  t.equal(outcomes.filter((o) => o === 'SOLD_OUT').length, 150, '150 SOLD_OUT')

  await page.getByTestId('sold-out').waitFor({ state: 'visible' })
  t.match(await page.getByTestId('sold-out').textContent(), /^SOLD OUT at \d\d:\d\d:\d\d\.\d{3}$/)
  // Once the consumer has caught up, everything the page shows is what the API says.
  await waitFor(async () => await shown(page, 'persisted') === '50' && await shown(page, 'unpersisted') === '0' &&
    await shown(page, 'rejected-SOLD_OUT') === '150', { what: 'the page to show 50 persisted and 150 SOLD_OUT', timeoutMs: 15_000 })
  // The page's numbers against the API's. Peak rate and worst lag are added to Redis by a flush once a
  // second, which may land between the page's last poll and this read: compare the API's answer with
  // the page's next poll after it, until they agree.
  const fields: [string, (s: Stats) => number][] = [
    ['remaining', (s) => s.remaining], ['total', (s) => s.total], ['issued', (s) => s.issued], ['revoked', (s) => s.revoked],
    ['persisted', (s) => s.persisted], ['unpersisted', (s) => s.unpersisted], ['parked', (s) => s.parked],
    ['peak', (s) => s.peakIssuesPerSecond], ['lag-worst', (s) => s.lagMs.worst], ['rejected-SOLD_OUT', (s) => s.rejected.SOLD_OUT ?? 0]
  ]
  let last: { page: Record<string, string | null>, api: Record<string, string> } | undefined
  const compared = await waitFor(async () => {
    const api = await stats(app, coupon.id)
    await waitFor(async () => Date.parse(await page.getByTestId('updated-at').getAttribute('datetime') ?? '') > Date.parse(api.at),
      { what: 'the page\'s next poll' })
    const shownNow: Record<string, string | null> = {}
    for (const [id] of fields) shownNow[id] = await shown(page, id)
    last = { page: shownNow, api: Object.fromEntries(fields.map(([id, read]) => [id, String(read(api))])) }
    return JSON.stringify(last.page) === JSON.stringify(last.api) ? { ...last, soldOutAt: api.soldOutAt } : null
  }, { what: () => `the page to show the API's numbers: ${JSON.stringify(last)}`, pollIntervalMs: 0 })
  t.match(compared.api, { remaining: '0', issued: '50', persisted: '50', unpersisted: '0', parked: '0', 'rejected-SOLD_OUT': '150' })
  t.same(compared.page, compared.api, 'the page shows the API\'s numbers')
  t.equal(await page.getByTestId('sold-out-at').getAttribute('datetime'), compared.soldOutAt, 'the sell-out moment')
  // The chart: one point per sample after the first, both series drawn, some second with issues.
  const points = async (series: string) => (await page.getByTestId(`chart-${series}`).getAttribute('points') ?? '').trim().split(/\s+/).length
  t.ok(await points('issues') >= 2 && await points('rejections') >= 2, 'both rates are charted')
  t.ok(statsPolls.length >= 3, `polled ${statsPolls.length} times`)
  const gaps = statsPolls.slice(1).map((at, i) => at - statsPolls[i]!).sort((a, b) => a - b)
  t.ok(gaps[Math.floor(gaps.length / 2)]! <= 1200, `polls about every second (median gap ${gaps[Math.floor(gaps.length / 2)]} ms)`)

  mkdirSync(dirname(ARTIFACT), { recursive: true })
  await page.screenshot({ path: ARTIFACT, fullPage: true })
  if (process.env.DASHBOARD_SCREENSHOT) await page.screenshot({ path: resolve(ROOT, process.env.DASHBOARD_SCREENSHOT), fullPage: true })
  t.comment(`screenshot: ${ARTIFACT}`)

  // The token travelled only in the Authorization header: not in a URL (the fragment never leaves the
  // browser, the server saw none), not in a Referer.
  t.ok(requested.length > 5, `${requested.length} requests made by the page`)
  const withoutFragment = (url: string) => url.replace(/#.*/, '')
  t.same(requested.filter((r) => withoutFragment(r.url).includes(ADMIN_TOKEN)).map((r) => r.url), [], 'no request URL holds the token')
  t.same(requested.filter((r) => Object.entries(r.headers).some(([name, value]) => name !== 'authorization' && value.includes(ADMIN_TOKEN))).map((r) => r.url), [],
    'no header but Authorization holds the token')
  t.ok(requested.some((r) => r.headers.authorization === `Bearer ${ADMIN_TOKEN}`), 'the API calls carry it as a bearer token')
  t.same(received.filter((url) => url.includes(ADMIN_TOKEN)), [], 'no URL the server received holds the token')
  t.same(errors, [], 'no console error, no CSP violation')
  await browser.close()
})
