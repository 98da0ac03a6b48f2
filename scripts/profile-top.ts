// `tsx scripts/profile-top.ts FILE.cpuprofile [N]`: where a V8 CPU profile (node --cpu-prof) spent
// its time, by function (self time) and by package, to back a performance claim with evidence.
import { readFileSync } from 'node:fs'

interface Node { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, hitCount?: number, children?: number[] }
const file = process.argv[2]
if (!file) throw new Error('usage: tsx scripts/profile-top.ts FILE.cpuprofile [N]')
const top = Number(process.argv[3] ?? 25)
const profile = JSON.parse(readFileSync(file, 'utf8')) as { nodes: Node[], samples: number[], timeDeltas: number[] }

const selfUs = new Map<number, number>()
for (let i = 0; i < profile.samples.length; i++) selfUs.set(profile.samples[i]!, (selfUs.get(profile.samples[i]!) ?? 0) + (profile.timeDeltas[i] ?? 0))
const total = [...selfUs.values()].reduce((a, b) => a + b, 0)

const where = (url: string) => {
  if (url === '') return '(native/v8)'
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1]
  if (pkg) return pkg
  if (url.startsWith('node:')) return url
  const own = /\/(src|scripts)\/(.*)$/.exec(url)
  return own ? `${own[1]}/${own[2]}` : url
}
const byFn = new Map<string, number>()
const byPkg = new Map<string, number>()
for (const node of profile.nodes) {
  const us = selfUs.get(node.id) ?? 0
  if (us === 0) continue
  const { functionName, url, lineNumber } = node.callFrame
  const key = `${functionName || '(anonymous)'} ${where(url)}:${lineNumber + 1}`
  byFn.set(key, (byFn.get(key) ?? 0) + us)
  const pkg = functionName.startsWith('(') ? functionName : where(url)
  byPkg.set(pkg, (byPkg.get(pkg) ?? 0) + us)
}
const show = (title: string, m: Map<string, number>) => {
  console.log(`\n${title}`)
  for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${(100 * us / total).toFixed(1).padStart(5)}%  ${k}`)
}
console.log(`${file}: ${(total / 1e6).toFixed(1)} s sampled`)
show('self time by package / file', byPkg)
show('self time by function', byFn)
