// The live campaign page: lists the campaigns (GET /coupons) and polls one campaign's statistics
// (GET /admin/coupons/:id/stats) every second. Rates are computed here, from successive samples.
// The admin token comes from the URL fragment (#token=…, which browsers never send to a server) or the
// form; it is kept in this tab's sessionStorage, removed from the address bar at once, and only ever
// sent as an Authorization header. No library, no build step: this file is served as it is.

const POLL_MS = 1000
const CHART_SECONDS = 60
const PAGE_SIZE = 200
const MAX_PAGES = 10
const TOKEN_KEY = 'couponrush.adminToken'

const $ = (id) => document.getElementById(id)
const numbers = new Intl.NumberFormat('en-US')
const SVG = 'http://www.w3.org/2000/svg'

// sessionStorage can be unavailable (privacy settings); the token then lives in memory only.
const storage = {
  get () { try { return sessionStorage.getItem(TOKEN_KEY) } catch { return null } },
  set (value) { try { sessionStorage.setItem(TOKEN_KEY, value) } catch {} },
  clear () { try { sessionStorage.removeItem(TOKEN_KEY) } catch {} }
}

let token = null
/** id -> coupon from the list */
let campaigns = new Map()
/** the campaign being polled: { couponId, controller, timer, samples } */
let current = null
let lastStatus = ''

class AuthError extends Error {}

function setStatus (text) {
  if (text === lastStatus) return
  lastStatus = text
  $('status').textContent = text
}

function fragment () {
  return new URLSearchParams(location.hash.slice(1))
}

function replaceFragment (params) {
  const rest = params.toString()
  history.replaceState(null, '', location.pathname + location.search + (rest ? `#${rest}` : ''))
}

async function api (path, signal) {
  const response = await fetch(path, {
    headers: { authorization: `Bearer ${token}`, accept: 'application/json' },
    cache: 'no-store',
    signal
  })
  if (response.status === 401 || response.status === 403) throw new AuthError(`the token was refused (${response.status})`)
  const body = await response.json().catch(() => null)
  if (!response.ok) throw new Error(body?.message ?? `HTTP ${response.status}`)
  return body
}

// ---- token

function askForToken (why) {
  stopPolling()
  token = null
  storage.clear()
  $('picker').hidden = true
  $('campaign-view').hidden = true
  $('token-form').hidden = false
  $('token-input').focus()
  setStatus(why)
}

function useToken (value) {
  token = value
  storage.set(value)
  $('token-form').hidden = true
  $('token-input').value = ''
  loadCampaigns().catch(failed)
}

function failed (err) {
  if (err instanceof AuthError) askForToken(`Enter the admin token: ${err.message}.`)
  else if (err.name !== 'AbortError') setStatus(`Could not load: ${err.message}`)
}

// ---- campaign list

async function loadCampaigns () {
  setStatus('Loading campaigns…')
  const found = new Map()
  let after = 0
  let more = false
  for (let page = 0; page < MAX_PAGES; page++) {
    const { items, next } = await api(`/coupons?limit=${PAGE_SIZE}&after=${after}`)
    for (const coupon of items) found.set(coupon.id, coupon)
    if (next === null) break
    after = next
    more = page === MAX_PAGES - 1
  }
  campaigns = found
  const select = $('campaign')
  const wanted = Number(fragment().get('coupon') ?? current?.couponId ?? NaN)
  select.replaceChildren(...[...found.values()].map((coupon) => {
    const option = document.createElement('option')
    option.value = String(coupon.id)
    option.textContent = optionLabel(coupon, coupon.remaining)
    return option
  }))
  $('picker').hidden = false
  if (found.size === 0) {
    $('campaign-view').hidden = true
    setStatus('No campaigns yet: create one with POST /coupons, then reload the list.')
    return
  }
  // The campaign named in the fragment, or the one shown before, or the newest.
  const chosen = found.has(wanted) ? wanted : [...found.keys()].at(-1)
  select.value = String(chosen)
  setStatus(more ? `Showing the first ${found.size} campaigns.` : '')
  show(chosen)
}

// ---- polling one campaign

function stopPolling () {
  if (!current) return
  current.controller.abort()
  clearTimeout(current.timer)
  current = null
}

function show (couponId) {
  if (current?.couponId === couponId) return
  stopPolling()
  const params = fragment()
  params.set('coupon', String(couponId))
  replaceFragment(params)
  const coupon = campaigns.get(couponId)
  $('campaign-name').textContent = coupon ? `#${coupon.id} ${coupon.name}` : `#${couponId}`
  $('coupon-id').textContent = String(couponId)
  $('campaign-view').hidden = false
  current = { couponId, controller: new AbortController(), timer: undefined, samples: [] }
  tick(current)
}

async function tick (state) {
  const started = performance.now()
  try {
    const stats = await api(`/admin/coupons/${state.couponId}/stats`, state.controller.signal)
    if (state !== current) return
    render(state, stats)
    setStatus('')
  } catch (err) {
    if (state !== current) return
    if (err instanceof AuthError) return askForToken(`Enter the admin token: ${err.message}.`)
    setStatus(`Statistics unavailable (${err.message}); retrying every second.`)
  }
  state.timer = setTimeout(tick, Math.max(0, POLL_MS - (performance.now() - started)), state)
}

// ---- rendering

const pad = (n, width = 2) => String(n).padStart(width, '0')
/** hh:mm:ss.mmm in the browser's time zone */
const clock = (date) => `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`

function setNumber (id, value) {
  const element = $(id)
  element.dataset.value = String(value)
  element.textContent = numbers.format(value)
}

function setMoment (id, iso) {
  const element = $(id)
  if (iso === null) {
    element.textContent = '–'
    element.removeAttribute('datetime')
    return
  }
  element.dateTime = iso
  element.title = iso
  element.textContent = clock(new Date(iso))
}

const sum = (values) => values.reduce((a, b) => a + b, 0)

function optionLabel (coupon, remaining) {
  return `#${coupon.id} ${coupon.name} (${numbers.format(remaining ?? 0)}/${numbers.format(coupon.totalQuantity)} left${coupon.paused ? ', paused' : ''})`
}

function render (state, stats) {
  setNumber('remaining', stats.remaining)
  setNumber('total', stats.total)
  setNumber('issued', stats.issued)
  setNumber('issued-2', stats.issued)
  setNumber('revoked', stats.revoked)
  setNumber('discarded', stats.discarded)
  setNumber('persisted', stats.persisted)
  setNumber('unpersisted', stats.unpersisted)
  setNumber('parked', stats.parked)
  setNumber('lag-now', stats.lagMs.now)
  setNumber('lag-worst', stats.lagMs.worst)
  setNumber('peak', stats.peakIssuesPerSecond)
  setMoment('first-issued-at', stats.firstIssuedAt)
  setMoment('updated-at', stats.at)
  const stock = $('stock-meter')
  stock.max = Math.max(stats.total, 1)
  stock.value = stats.remaining
  const persisted = $('persisted-meter')
  persisted.max = Math.max(stats.issued, 1)
  persisted.value = Math.min(stats.persisted, stats.issued)
  $('parked').classList.toggle('alert', stats.parked > 0)
  // The list's label follows too (the total may have been changed since the list was loaded).
  const coupon = campaigns.get(state.couponId)
  const option = $('campaign').selectedOptions[0]
  if (coupon && option?.value === String(state.couponId)) option.textContent = optionLabel({ ...coupon, totalQuantity: stats.total }, stats.remaining)

  const soldOut = stats.remaining === 0 && stats.soldOutAt !== null
  $('sold-out').hidden = !soldOut
  if (soldOut) setMoment('sold-out-at', stats.soldOutAt)

  const codes = Object.entries(stats.rejected).sort(([a, x], [b, y]) => y - x || a.localeCompare(b))
  $('rejections').replaceChildren(...codes.map(([code, n]) => {
    const row = document.createElement('tr')
    const name = document.createElement('th')
    name.scope = 'row'
    name.textContent = code
    const count = document.createElement('td')
    count.className = 'num'
    count.dataset.testid = `rejected-${code}`
    count.dataset.value = String(n)
    count.textContent = numbers.format(n)
    row.append(name, count)
    return row
  }))
  $('no-rejections').hidden = codes.length > 0

  // Rates from successive samples, on the server's clock (`at`).
  const samples = state.samples
  samples.push({ t: Date.parse(stats.at), issued: stats.issued, rejected: sum(Object.values(stats.rejected)) })
  while (samples.length > 2 && samples[0].t < samples.at(-1).t - CHART_SECONDS * 1000) samples.shift()
  const rates = []
  for (let i = 1; i < samples.length; i++) {
    const seconds = (samples[i].t - samples[i - 1].t) / 1000
    if (seconds <= 0) continue
    rates.push({
      t: samples[i].t,
      issues: Math.max(0, samples[i].issued - samples[i - 1].issued) / seconds,
      rejections: Math.max(0, samples[i].rejected - samples[i - 1].rejected) / seconds
    })
  }
  const last = rates.at(-1)
  setNumber('issues-per-second', last ? Math.round(last.issues) : 0)
  setNumber('rejections-per-second', last ? Math.round(last.rejections) : 0)
  drawChart(rates, samples[0].t, samples.at(-1).t)
}

function svg (name, attributes, text) {
  const element = document.createElementNS(SVG, name)
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value))
  if (text !== undefined) element.textContent = text
  return element
}

/** A rounded-up axis maximum: 1, 2, 5, 10, 20, 50, … */
function niceMax (value) {
  if (value <= 1) return 1
  const magnitude = 10 ** Math.floor(Math.log10(value))
  return [1, 2, 5, 10].map((step) => step * magnitude).find((candidate) => candidate >= value)
}

/** The last minute at most; a shorter history (at least 10 s) fills the width. */
function drawChart (rates, first, now) {
  const chart = $('chart')
  const left = 34; const right = 594; const top = 8; const bottom = 146
  const span = Math.min(CHART_SECONDS * 1000, Math.max(10_000, now - first))
  const max = niceMax(Math.max(0, ...rates.map((r) => Math.max(r.issues, r.rejections))))
  const x = (t) => right - (now - t) / span * (right - left)
  const y = (v) => bottom - v / max * (bottom - top)
  const parts = []
  for (const v of [0, max / 2, max]) {
    parts.push(svg('line', { x1: left, x2: right, y1: y(v), y2: y(v), class: 'gridline' }))
    parts.push(svg('text', { x: left - 4, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, numbers.format(v)))
  }
  parts.push(svg('text', { x: left, y: 164, class: 'axis' }, `−${Math.round(span / 1000)} s`))
  parts.push(svg('text', { x: right, y: 164, class: 'axis', 'text-anchor': 'end' }, 'now'))
  for (const series of ['rejections', 'issues']) {
    const points = rates.map((r) => `${x(r.t).toFixed(1)},${y(r[series]).toFixed(1)}`).join(' ')
    if (rates.length > 0) parts.push(svg('polyline', { points, class: `line ${series}`, 'data-testid': `chart-${series}` }))
  }
  const last = rates.at(-1)
  const title = svg('title', { id: 'chart-title' },
    `Issues and rejections per second over the last ${Math.round(span / 1000)} seconds; now ${Math.round(last?.issues ?? 0)} issued and ${Math.round(last?.rejections ?? 0)} rejected per second`)
  chart.replaceChildren(title, ...parts)
}

// ---- start

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const value = $('token-input').value.trim()
  if (value) useToken(value)
})
$('campaign').addEventListener('change', (event) => show(Number(event.target.value)))
$('reload-campaigns').addEventListener('click', () => loadCampaigns().catch(failed))
$('forget-token').addEventListener('click', () => askForToken('Token forgotten. Enter it again to continue.'))

const params = fragment()
const fromFragment = params.get('token')
if (params.has('token')) {
  // Out of the address bar and the history entry before anything else happens.
  params.delete('token')
  replaceFragment(params)
}
if (fromFragment) useToken(fromFragment)
else if (storage.get()) useToken(storage.get())
else askForToken('Enter the admin token to see the campaigns.')
