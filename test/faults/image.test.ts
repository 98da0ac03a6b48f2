// The image, replayed without Docker (test/faults/helpers/dockerfile.ts): every stage of the Dockerfile
// built in a temporary directory from exactly what its COPY lines name, then the final stage's CMD
// started with the image's ENV on the Node major of its base image, against the shared Redis and a
// throwaway database. It must become ready, issue a coupon, and the image's drain command must persist
// the issue. A Dockerfile that forgets a file (migrations/ here) or a production dependency fails it.
// In the fault suite: it spawns processes and runs npm ci twice (about a minute with a warm npm cache).
import t from 'tap'
import { spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import pg from 'pg'
import { ROOT } from '../../scripts/lib/dist.js'
import { ADMIN_TOKEN, REDIS_URL, createTestDatabase, uniquePrefix } from '../helpers/env.js'
import {
  containerCommand, dockerignore, imageEnv, parseDockerfile, parseEnv, replayDockerfile, replayWorkRoot, runInImage,
  startInImage, substituteVars, type StageResult
} from './helpers/dockerfile.js'
import { freePort, until } from './helpers/procs.js'

const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')

/** A node of the base image's major: this process's when it matches (CI), else scripts/image-node.sh's. */
function nodeFor (major: number): string {
  if (Number(process.versions.node.split('.')[0]) === major) return dirname(process.execPath)
  const found = spawnSync('sh', [join(ROOT, 'scripts/image-node.sh')], { encoding: 'utf8' })
  const bin = found.stdout.trim()
  if (found.status !== 0 || bin === '') throw new Error(`no Node ${major} for the replay: ${found.stderr}`)
  const version = spawnSync(join(bin, 'node'), ['-p', 'process.versions.node'], { encoding: 'utf8' }).stdout.trim()
  if (Number(version.split('.')[0]) !== major) throw new Error(`scripts/image-node.sh gave Node ${version}, the base image runs ${major}`)
  return bin
}

const workRoot = replayWorkRoot()
t.teardown(() => rmSync(workRoot, { recursive: true, force: true }))
const log = (line: string) => { if (process.env.REPLAY_LOG) console.error(`# ${line}`) }

interface Started { child: ChildProcess, output: () => string, base: string, exited: Promise<number | null> }

function startService (image: StageResult, env: Record<string, string>, port: number): Started {
  const child = startInImage(image, containerCommand(image), env)
  let out = ''
  child.stdout!.on('data', (d) => { out = (out + d).slice(-100_000) })
  child.stderr!.on('data', (d) => { out = (out + d).slice(-100_000) })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  return { child, output: () => out, base: `http://127.0.0.1:${port}`, exited }
}

/** The test's settings on top of the image's ENV: its own prefix and database, a free port, loopback only. */
async function settings (t: { teardown (fn: () => unknown): void }, port: number, databaseUrl: string): Promise<Record<string, string>> {
  return {
    PORT: String(port),
    // The image listens on 0.0.0.0; the test keeps it on loopback (a shared machine).
    HOST: '127.0.0.1',
    REDIS_URL,
    REDIS_PREFIX: uniquePrefix(t),
    DATABASE_URL: databaseUrl,
    ADMIN_TOKEN,
    LOG_LEVEL: 'warn',
    npm_config_update_notifier: 'false',
    // The drain command, as run in the image, is what must persist the issue.
    CONSUMER_ENABLED: 'false'
  }
}

t.test('the Dockerfile parser: stages, continuations, flags, ENV forms, .dockerignore', async (t) => {
  const stages = parseDockerfile([
    '# syntax=docker/dockerfile:1',
    'FROM node:24-bookworm-slim AS build',
    'WORKDIR /app',
    'RUN --mount=type=cache,target=/root/.npm npm ci \\',
    '  # a comment inside a continuation',
    '  --no-audit',
    'FROM node:24-bookworm-slim',
    'ENV A=1 B="two words"',
    'ENV C $A-x',
    'COPY --from=build /app/dist ./dist',
    'CMD ["node", "dist/server.js"]'
  ].join('\n'))
  t.equal(stages.length, 2)
  t.equal(stages[0]!.name, 'build')
  t.equal(stages[1]!.name, null)
  t.match(stages[0]!.instructions[1], { keyword: 'RUN', args: 'npm ci --no-audit', flags: { mount: 'type=cache,target=/root/.npm' } })
  t.same(parseEnv('A=1 B="two words"', (s) => s), { A: '1', B: 'two words' })
  t.same(parseEnv('C $A-x', (s) => substituteVars(s, { A: '1' })), { C: '1-x' })
  t.match(stages[1]!.instructions[2], { keyword: 'COPY', flags: { from: 'build' }, args: '/app/dist ./dist' })
  const ignored = dockerignore(ROOT)
  t.ok(ignored('node_modules/fastify/package.json'), '.dockerignore keeps node_modules out of the context')
  t.ok(ignored('dist/server.js'), 'and a local dist/')
  t.notOk(ignored('src/server.ts'))
  t.notOk(ignored('migrations/0000_init.sql'))
})

t.test('the image, replayed: ready, issues, its drain command persists the issue, SIGTERM exits 0', async (t) => {
  const stages = replayDockerfile({ context: ROOT, dockerfileText: dockerfile, workRoot, nodeFor, log })
  const image = stages[stages.length - 1]!
  const major = Number(/^node:(\d+)/.exec(image.stage.base)?.[1])
  t.ok(major >= 22, `the base image is a supported Node LTS (node:${major})`)
  const nodeVersion = spawnSync(join(image.nodeBin, 'node'), ['--version'], { encoding: 'utf8' }).stdout.trim()
  t.equal(Number(nodeVersion.slice(1).split('.')[0]), major, `the replay runs the base image's Node major (${nodeVersion})`)

  // What the image is, before running it.
  t.match(image.env, { NODE_ENV: 'production', HOST: '0.0.0.0' }, 'ENV NODE_ENV=production HOST=0.0.0.0')
  t.ok(image.user !== null && !['root', '0'].includes(image.user.split(':')[0]!), `runs as a non-root user (${image.user})`)
  t.equal(containerCommand(image)[0], 'node', 'node itself is PID 1 (exec form, no shell between it and SIGTERM)')
  t.ok(image.healthcheck, 'has a HEALTHCHECK')
  t.ok(existsSync(join(image.workdir, 'dist/redis/scripts/issue.lua')), 'the Lua scripts are next to the compiled code')
  t.ok(existsSync(join(image.workdir, 'dist/dashboard/app.js')), 'so are the live campaign page\'s files')
  t.notOk(existsSync(join(image.workdir, 'src')), 'no TypeScript sources in the image')
  for (const dev of ['typescript', 'tsx', 'tap']) t.notOk(existsSync(join(image.workdir, 'node_modules', dev)), `no dev dependency ${dev}`)
  const unreadable: string[] = []
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name)
      if (entry.isSymbolicLink()) continue
      const mode = statSync(path).mode
      if (entry.isDirectory()) { if ((mode & 0o005) !== 0o005) unreadable.push(path); walk(path) } else if ((mode & 0o004) === 0) unreadable.push(path)
    }
  }
  walk(image.workdir)
  t.same(unreadable.slice(0, 5), [], `${image.user} (not the owner of what COPY and RUN made) can read every file`)

  const port = await freePort()
  const databaseUrl = await createTestDatabase(t)
  const env = imageEnv(image, await settings(t, port, databaseUrl))
  const service = startService(image, env, port)
  t.teardown(() => { if (service.child.exitCode === null) service.child.kill('SIGKILL') })
  await until(async () => {
    if (service.child.exitCode !== null) throw new Error(`the image's CMD exited with ${service.child.exitCode}:\n${service.output()}`)
    return (await fetch(`${service.base}/ready`, { signal: AbortSignal.timeout(1000) }).catch(() => null))?.status === 200
  }, 60_000, () => `/ready to answer 200; output so far:\n${service.output()}`)
  t.pass('/ready answers 200')

  const health = runInImage(image, image.healthcheck!, env, 10_000)
  t.equal(health.status, 0, `the HEALTHCHECK command passes ${health.output}`)
  for (const path of ['/dashboard', '/dashboard/app.js']) t.equal((await fetch(`${service.base}${path}`)).status, 200, `the image serves ${path}`)

  const admin = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }
  const created = await fetch(`${service.base}/coupons`, { method: 'POST', headers: admin, body: JSON.stringify({ name: 'image replay', totalQuantity: 5 }) })
  t.equal(created.status, 201, 'a coupon is created')
  const coupon = await created.json() as { id: number }
  const issued = await fetch(`${service.base}/coupons/${coupon.id}/issues`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ userId: 'image-user' }) })
  t.equal(issued.status, 201, 'an issue gets 201')
  const issue = await issued.json() as { issuedAt: string }

  const db = new pg.Client({ connectionString: databaseUrl })
  await db.connect()
  t.teardown(() => db.end())
  const rows = async () => (await db.query('SELECT user_id, created_at FROM coupon_issues WHERE coupon_id = $1', [coupon.id])).rows
  t.same(await rows(), [], 'nothing persisted yet (the service runs with CONSUMER_ENABLED=false)')
  const drain = runInImage(image, ['node', 'dist/cli/drain.js'], env, 60_000)
  t.equal(drain.status, 0, `node dist/cli/drain.js exits 0 in the image ${drain.output}`)
  t.match(drain.output, /1 rows inserted/)
  const persisted = await rows()
  t.equal(persisted.length, 1, 'the drain persisted the issue')
  t.equal(persisted[0]?.user_id, 'image-user')
  t.equal(new Date(persisted[0]?.created_at).toISOString(), issue.issuedAt, 'with its issuedAt')

  // The npm scripts work in the image too: no src/, no TypeScript, so their pre-hooks build nothing.
  const migrate = runInImage(image, ['npm', 'run', 'migrate'], env, 60_000)
  t.equal(migrate.status, 0, `npm run migrate works in the image ${migrate.output}`)
  t.match(migrate.output, /up to date/)

  service.child.kill('SIGTERM')
  const code = await Promise.race([service.exited, new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 15_000))])
  t.equal(code, 0, 'SIGTERM: graceful shutdown, exit 0 within the compose stop_grace_period')
})

t.test('a Dockerfile that forgets migrations/ fails the replay: the image cannot start', async (t) => {
  const mutated = dockerfile.replace(/^COPY\s+migrations\b.*\n/m, '')
  t.not(mutated, dockerfile, 'the mutation removed the COPY of migrations/')
  const stages = replayDockerfile({ context: ROOT, dockerfileText: mutated, workRoot, nodeFor, log })
  const image = stages[stages.length - 1]!
  t.ok(stages.slice(0, -1).every((s) => s.reused), 'the unchanged build stage came from the replay cache')
  t.notOk(existsSync(join(image.workdir, 'migrations')), 'no migrations/ in this image')
  const port = await freePort()
  const databaseUrl = await createTestDatabase(t)
  const service = startService(image, imageEnv(image, await settings(t, port, databaseUrl)), port)
  t.teardown(() => { if (service.child.exitCode === null) service.child.kill('SIGKILL') })
  let ready = false
  const deadline = Date.now() + 60_000
  while (service.child.exitCode === null && Date.now() < deadline && !ready) {
    ready = (await fetch(`${service.base}/ready`, { signal: AbortSignal.timeout(1000) }).catch(() => null))?.status === 200
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  t.notOk(ready, 'never ready')
  const code = await Promise.race([service.exited, new Promise<'still running'>((resolve) => setTimeout(() => resolve('still running'), 1000))])
  t.ok(typeof code === 'number' && code !== 0, `the CMD exits with an error (${code})`)
  t.match(service.output(), /migrations|_journal\.json/i, 'and says what is missing')
})
