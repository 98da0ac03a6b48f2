// The second half of `npm run build`. tsc compiles src/ into dist/ but copies nothing else, and two
// modules read files next to themselves at run time: src/redis/scripts.ts its Lua scripts (new
// URL('./scripts/…', import.meta.url)) and src/routes/dashboard.ts the live campaign page (src/dashboard/:
// HTML, the browser's JavaScript, CSS). Copy every .lua file and everything under src/dashboard/ to the
// same place under dist/. Also removes what no longer has a source (a deleted .ts leaves its .js behind in
// an incremental build) and stamps the build, so tests that start dist/server.js can refuse a dist/ older
// than src/ (scripts/lib/dist.ts).
// Plain JavaScript on purpose: it runs with nothing but node.
import { cpSync, existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const src = join(root, 'src')
const dist = join(root, 'dist')

function * files (dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) yield * files(path)
    else yield path
  }
}

// Paths relative to src/ (or dist/). The page's app.js is copied as it is: it has no .ts source.
const isAsset = (file) => file.endsWith('.lua') || file.startsWith(`dashboard${sep}`)

const copied = { lua: 0, dashboard: 0 }
for (const file of files(src)) {
  const path = relative(src, file)
  if (!isAsset(path)) continue
  cpSync(file, join(dist, path))
  copied[path.endsWith('.lua') ? 'lua' : 'dashboard']++
}
if (copied.lua === 0) {
  console.error('copy-assets: no .lua file under src/: src/redis/scripts.ts would fail at run time')
  process.exit(1)
}
if (copied.dashboard === 0) {
  console.error('copy-assets: nothing under src/dashboard/: src/routes/dashboard.ts would fail at startup')
  process.exit(1)
}

// A copied asset belongs to the same file under src/, dist/x.js otherwise to src/x.ts; anything else in
// dist/ is left alone.
const sourceOf = (file) => isAsset(file) ? file : file.endsWith('.js') ? file.replace(/\.js$/, '.ts') : null
for (const file of [...files(dist)]) {
  const source = sourceOf(relative(dist, file))
  if (source !== null && !existsSync(join(src, source))) rmSync(file)
}

writeFileSync(join(dist, '.built'), `${new Date().toISOString()}\n`)
