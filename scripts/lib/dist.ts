// The compiled service (npm run build), for tests and scripts that start it as its own process: what
// the image ships is what they start, break and recover. A dist/ older than src/ would test yesterday's
// code, so it is refused with the command that fixes it (npm run test:faults, loadtest and bench build
// first through their pre-hooks; running one file with tap does not).
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))

function newestMtime (dir: string): number {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs)
  }
  return newest
}

/**
 * Absolute path of a compiled entry point, e.g. distEntry('server.js'), 'cli/consume.js'; of this checkout,
 * or of another one (`root`, e.g. the "before" tree of `npm run bench -- --base`).
 */
export function distEntry (relative: string, root = ROOT): string {
  const entry = join(root, 'dist', relative)
  const stamp = join(root, 'dist', '.built')
  if (!existsSync(entry) || !existsSync(stamp)) throw new Error(`${entry} is missing: run \`npm run build\` first`)
  const sources = Math.max(newestMtime(join(root, 'src')), ...['tsconfig.json', 'tsconfig.build.json'].map((f) => statSync(join(root, f)).mtimeMs))
  if (sources > statSync(stamp).mtimeMs) throw new Error('dist/ is older than src/: run `npm run build` first')
  return entry
}
