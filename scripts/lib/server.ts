// Starting the measured server: in a child process (the default: the load generator keeps its own
// core) or in this process (the CI smoke test), behind one interface.
import { fork, spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../src/app.js'
import type { Config } from '../../src/config.js'
import type { ConsumerStats } from '../../src/persistence/consumer.js'
import type { ServerMode } from './server-child.js'

/**
 * The environment for a measured child: without a test runner's coverage and loader hooks (tap sets
 * NODE_V8_COVERAGE and NODE_OPTIONS), which would slow the child down and, merged back, hid src/ from
 * the suite's coverage report.
 */
function childEnv (extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const { NODE_V8_COVERAGE: _coverage, NODE_OPTIONS: _options, ...env } = process.env
  return { ...env, ...extra }
}

export interface RunningServer {
  url: string
  pid: number
  rss (): Promise<number>
  /** CPU time (user + system) the server process has used so far, µs */
  cpuMicros (): Promise<number>
  consumerStats (): Promise<ConsumerStats | null>
  close (): Promise<void>
}

export interface ChildOptions {
  /** write a V8 CPU profile of the server into this directory (node --cpu-prof) */
  cpuProfDir?: string
}

export async function startChildServer (mode: ServerMode, config: Config, { cpuProfDir }: ChildOptions = {}): Promise<RunningServer> {
  const entry = fileURLToPath(new URL('./server-child.ts', import.meta.url))
  const execArgv = ['--import', 'tsx', ...(cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : [])]
  // stdout is discarded (the service logs there, as it would in production); stderr shows crashes.
  const child: ChildProcess = fork(entry, [mode, JSON.stringify(config)], { execArgv, env: childEnv(), stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
  let nextId = 0
  const waiting = new Map<number, (value: unknown) => void>()
  const port = await new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`server child (${mode}) exited with ${code} before listening`)))
    child.on('message', (msg: any) => {
      if (typeof msg.port === 'number') resolve(msg.port)
      else waiting.get(msg.id)?.(msg.value)
    })
  })
  const call = (cmd: string) => new Promise<any>((resolve) => {
    const id = nextId++
    waiting.set(id, (value) => { waiting.delete(id); resolve(value) })
    child.send({ id, cmd })
  })
  return {
    url: `http://127.0.0.1:${port}`,
    pid: child.pid!,
    rss: () => call('rss'),
    cpuMicros: () => call('cpu'),
    consumerStats: () => call('stats'),
    async close () {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      await call('close')
      await exited
    }
  }
}

export async function startInProcessServer (config: Config): Promise<RunningServer & { app: FastifyInstance }> {
  const app = await buildApp(config)
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  return {
    app,
    url,
    pid: process.pid,
    rss: async () => process.memoryUsage().rss,
    cpuMicros: async () => { const { user, system } = process.cpuUsage(); return user + system },
    consumerStats: async () => app.consumer?.stats ?? null,
    close: () => app.close()
  }
}

export interface ConsumerProcess {
  pid: number
  /** CPU time used so far, µs (from /proc, 10 ms resolution) */
  cpuMicros (): Promise<number>
  close (): Promise<void>
}

/** `npm run consume` (src/cli/consume.ts) as a child process, configured like the given service. */
export async function startConsumerProcess (config: Config): Promise<ConsumerProcess> {
  const entry = fileURLToPath(new URL('../../src/cli/consume.ts', import.meta.url))
  const env = childEnv({
    DATABASE_URL: config.databaseUrl,
    REDIS_URL: config.redisUrl,
    REDIS_PREFIX: config.redisPrefix,
    // At least info: readiness is its 'consuming issue events' line (its log is discarded after that).
    LOG_LEVEL: ['silent', 'fatal', 'error', 'warn'].includes(config.logLevel) ? 'info' : config.logLevel,
    CONSUMER_BATCH_SIZE: String(config.consumer.batchSize),
    CONSUMER_BLOCK_MS: String(config.consumer.blockMs)
  })
  const child = spawn(process.execPath, ['--import', 'tsx', entry], { env, stdio: ['ignore', 'pipe', 'inherit'] })
  // Ready once it logs that it consumes (its log goes to stdout).
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { child.kill(); reject(new Error('consumer process did not start within 30 s')) }, 30_000)
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`consumer process exited with ${code} before starting`)) })
    child.stdout!.on('data', (chunk: Buffer) => { if (chunk.toString().includes('consuming issue events')) { clearTimeout(timer); resolve() } })
  })
  child.stdout!.resume()
  const ticksToMicros = 1e6 / 100 // USER_HZ is 100 on Linux
  return {
    pid: child.pid!,
    async cpuMicros () {
      const fields = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
      return (Number(fields[11]) + Number(fields[12])) * ticksToMicros
    },
    async close () {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      await exited
    }
  }
}
