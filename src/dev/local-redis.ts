// For `npm start` on a laptop: with no REDIS_URL and nothing on 127.0.0.1:6379, run a redis-server
// from PATH with its data under DATA_DIR, so the service needs nothing set up by hand.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { connect } from 'node:net'
import { resolve } from 'node:path'
import { DEFAULT_REDIS_URL } from '../config.js'

const DEFAULT_PORT = Number(new URL(DEFAULT_REDIS_URL).port)

function listening (port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host })
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

export interface LocalRedis {
  url: string
  process: ChildProcess | null
}

export async function ensureLocalRedis (dataDir: string, port = DEFAULT_PORT): Promise<LocalRedis> {
  const url = `redis://127.0.0.1:${port}`
  if (await listening(port)) return { url, process: null }
  const dir = resolve(dataDir, 'redis')
  mkdirSync(dir, { recursive: true })
  const child = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--dir', dir,
    '--appendonly', 'yes', '--maxmemory-policy', 'noeviction', '--save', ''], { stdio: 'ignore' })
  const failed = new Promise<never>((_resolve, reject) => child.once('error', (err) => reject(err)))
  failed.catch(() => {})
  for (let i = 0; i < 50; i++) {
    if (child.exitCode !== null) break
    if (await Promise.race([listening(port), failed])) return { url, process: child }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  child.kill()
  throw new Error(`No REDIS_URL is set, nothing listens on 127.0.0.1:${port}, and redis-server could not be started. ` +
    'Install Redis (apt-get install redis-server, or brew install redis), run `docker compose up -d redis`, or set REDIS_URL.')
}
