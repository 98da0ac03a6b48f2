// The second half of `npm run build`. tsc compiles src/ into dist/ but copies nothing else, and
// src/redis/scripts.ts reads its Lua scripts next to itself at run time (new URL('./scripts/…',
// import.meta.url)): copy every .lua file under src/ to the same place under dist/. Also removes what
// no longer has a source (a deleted .ts leaves its .js behind in an incremental build) and stamps the
// build, so tests that start dist/server.js can refuse a dist/ older than src/ (scripts/lib/dist.ts).
// Plain JavaScript on purpose: it runs with nothing but node.
import { cpSync, existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join, relative } from 'node:path'
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

let copied = 0
for (const file of files(src)) {
  if (!file.endsWith('.lua')) continue
  cpSync(file, join(dist, relative(src, file)))
  copied++
}
if (copied === 0) {
  console.error('copy-assets: no .lua file under src/: src/redis/scripts.ts would fail at run time')
  process.exit(1)
}

// dist/x.js belongs to src/x.ts, dist/x.lua to src/x.lua; anything else in dist/ is left alone.
const sourceOf = (file) => file.endsWith('.js') ? file.replace(/\.js$/, '.ts') : file.endsWith('.lua') ? file : null
for (const file of [...files(dist)]) {
  const source = sourceOf(relative(dist, file))
  if (source !== null && !existsSync(join(src, source))) rmSync(file)
}

writeFileSync(join(dist, '.built'), `${new Date().toISOString()}\n`)
