// Throwaway servers for fault tests: a redis-server, a Postgres cluster and the service itself, each a
// child process on its own free port, all killed (and their directories removed) at teardown even when
// the test fails. Nothing here touches the shared Redis on 6379 or the shared Postgres on 5432.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ADMIN_TOKEN, waitFor, type Teardown } from '../../helpers/env.js'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { ROOT, distEntry } from '../../../scripts/lib/dist.js'
export { freePort } from '../../../scripts/lib/ports.js'
import { freePort } from '../../../scripts/lib/ports.js'

// Last line of defence: a child must not outlive the test process, whatever happened.
const live = new Set<ChildProcess>()
process.once('exit', () => { for (const child of live) { try { child.kill('SIGKILL') } catch {} } })

function track (child: ChildProcess): ChildProcess {
  live.add(child)
  child.once('exit', () => live.delete(child))
  return child
}

/** The interval between two checks of a polling loop. */
export const pollPause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** waitFor with the fault suite's argument order: check() every 50 ms until truthy, else throw after timeoutMs. */
export async function until (check: () => Promise<boolean> | boolean, timeoutMs: number, what: string | (() => string)): Promise<void> {
  await waitFor(async () => await check() || null, { timeoutMs, pollIntervalMs: 50, what })
}

async function exited (child: ChildProcess, timeoutMs: number): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode
  return new Promise((resolve) => {
    const deadline = setTimeout(() => resolve(null), timeoutMs)
    child.once('exit', (code) => { clearTimeout(deadline); resolve(code) })
  })
}

async function killHard (child: ChildProcess | null): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return
  child.kill('SIGKILL')
  await exited(child, 5000)
}

// ---------------------------------------------------------------------------------------------- redis

export interface RedisOptions {
  appendonly?: boolean
  /** extra redis-server arguments, e.g. ['--maxmemory', '2mb'] */
  args?: string[]
}

export interface ThrowawayRedis {
  url: string
  port: number
  dir: string
  /** a plain client for the test itself (reconnects on its own) */
  client: Redis
  start (): Promise<void>
  kill (): Promise<void>
  /** e.g. SIGSTOP / SIGCONT: a server that holds its connections open but answers nothing */
  signal (signal: NodeJS.Signals): void
  /** Kills the server and deletes its AOF directory, so the next start is empty. */
  wipe (): Promise<void>
}

export async function throwawayRedis (t: Teardown, { appendonly = true, args = [] }: RedisOptions = {}): Promise<ThrowawayRedis> {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'couponrush-redis-'))
  let child: ChildProcess | null = null
  const url = `redis://127.0.0.1:${port}`
  const probe = async () => {
    const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false })
    r.on('error', () => {})
    try { await r.connect(); return await r.ping() === 'PONG' } catch { return false } finally { r.disconnect() }
  }
  const self: ThrowawayRedis = {
    url,
    port,
    dir,
    client: new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => 100 }),
    async start () {
      // appendfsync always: with the default everysec a kill -9 may lose the last second of 201s.
      child = track(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '',
        '--appendonly', appendonly ? 'yes' : 'no', '--appendfsync', 'always', '--maxmemory-policy', 'noeviction', ...args],
      { stdio: 'ignore' }))
      await until(probe, 10_000, `redis-server on ${port}`)
      // after a restart the server may still be loading the AOF
      await until(async () => {
        try { await self.client.ping(); return true } catch { return false }
      }, 10_000, 'redis to answer PING')
    },
    async kill () { await killHard(child) },
    signal (signal) { child?.kill(signal) },
    async wipe () {
      await killHard(child)
      rmSync(dir, { recursive: true, force: true })
      mkdirSync(dir)
    }
  }
  self.client.on('error', () => {})
  t.teardown(async () => {
    self.client.disconnect()
    await killHard(child)
    rmSync(dir, { recursive: true, force: true })
  })
  await self.client.connect().catch(() => {})
  await self.start()
  return self
}

// ------------------------------------------------------------------------------------------- sentinel

export interface ThrowawaySentinelSet {
  /** the master name the sentinels monitor */
  name: string
  /** the first primary and its replicas, in start order (which one is master changes with a failover) */
  servers: ThrowawayRedis[]
  /** sentinel ports, for REDIS_SENTINELS */
  sentinelPorts: number[]
  /** REDIS_SENTINELS + REDIS_SENTINEL_NAME for the service */
  env: Record<string, string>
  /** SENTINEL <args> on the given sentinel (the first by default) */
  sentinel (args: string[], index?: number): Promise<unknown>
  /** the master port every sentinel names (throws when they disagree) */
  masterPort (): Promise<number>
  /** the server that is master now, by the sentinels' word */
  master (): Promise<ThrowawayRedis>
}

/**
 * A primary, `replicas` replicas (--replicaof) and `sentinels` sentinels (quorum 2, down after 1 s, failover
 * timeout 5 s), all on free loopback ports; resolves once every replica is synced and every sentinel
 * knows the replicas and the other sentinels. Each redis is a throwawayRedis (AOF, appendfsync always).
 */
export async function throwawaySentinelSet (t: Teardown, { name = 'couponrush', replicas = 2, sentinels = 3 } = {}): Promise<ThrowawaySentinelSet> {
  const primary = await throwawayRedis(t)
  const servers = [primary]
  for (let i = 0; i < replicas; i++) servers.push(await throwawayRedis(t, { args: ['--replicaof', '127.0.0.1', String(primary.port)] }))
  await until(async () => {
    const info = await primary.client.info('replication')
    return (info.match(/^slave\d+:.*state=online/gm) ?? []).length === replicas
  }, 15_000, `${replicas} replicas to sync with the primary`)

  const sentinelPorts: number[] = []
  const dir = mkdtempSync(join(tmpdir(), 'couponrush-sentinel-'))
  const children: ChildProcess[] = []
  t.teardown(async () => {
    for (const child of children) await killHard(child)
    rmSync(dir, { recursive: true, force: true })
  })
  const ask = async (port: number, args: string[]): Promise<unknown> => {
    const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false })
    client.on('error', () => {})
    try { await client.connect(); return await client.call('SENTINEL', ...args) } finally { client.disconnect() }
  }
  for (let i = 0; i < sentinels; i++) {
    const port = await freePort()
    // A sentinel rewrites its config file (what it learned), so each gets its own.
    const conf = join(dir, `sentinel-${port}.conf`)
    writeFileSync(conf, [
      `port ${port}`, 'bind 127.0.0.1', `dir ${dir}`,
      `sentinel monitor ${name} 127.0.0.1 ${primary.port} 2`,
      `sentinel down-after-milliseconds ${name} 1000`,
      `sentinel failover-timeout ${name} 5000`,
      `sentinel parallel-syncs ${name} ${replicas}`
    ].join('\n') + '\n')
    children.push(track(spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' })))
    sentinelPorts.push(port)
  }
  // Sentinels find the replicas through the primary's INFO and each other through its hello channel.
  await until(async () => {
    try {
      const views = await Promise.all(sentinelPorts.map(async (port) => {
        const fields = await ask(port, ['MASTER', name]) as string[]
        const get = (key: string) => Number(fields[fields.indexOf(key) + 1])
        return get('num-slaves') === replicas && get('num-other-sentinels') === sentinels - 1
      }))
      return views.every(Boolean)
    } catch { return false }
  }, 20_000, `${sentinels} sentinels to see ${replicas} replicas and each other`)

  const self: ThrowawaySentinelSet = {
    name,
    servers,
    sentinelPorts,
    env: { REDIS_SENTINELS: sentinelPorts.map((port) => `127.0.0.1:${port}`).join(','), REDIS_SENTINEL_NAME: name },
    sentinel: (args, index = 0) => ask(sentinelPorts[index]!, args),
    async masterPort () {
      const ports = await Promise.all(sentinelPorts.map(async (port) => Number((await ask(port, ['GET-MASTER-ADDR-BY-NAME', name]) as string[])[1])))
      if (new Set(ports).size !== 1) throw new Error(`the sentinels disagree on the master: ${ports.join(', ')}`)
      return ports[0]!
    },
    async master () {
      const port = await self.masterPort()
      return servers.find((s) => s.port === port)!
    }
  }
  return self
}

// -------------------------------------------------------------------------------------------- cluster

export interface ThrowawayCluster {
  /** every node, in start order (which ones are primaries changes with a failover) */
  servers: ThrowawayRedis[]
  /** REDIS_CLUSTER_NODES for the service (every node as a seed) */
  env: Record<string, string>
  /** CLUSTER NODES as seen by the first reachable node: port -> role and, for a replica, its primary's port */
  topology (): Promise<Map<number, { role: 'master' | 'slave', primaryPort: number | null, slots: Array<[number, number]> }>>
  /** the port of the primary serving this hash tag's slot now */
  primaryOf (hashTag: string): Promise<number>
  /** resolves once every node says cluster_state:ok, agrees on who serves every slot, and every replica is synced */
  healthy (timeoutMs?: number): Promise<void>
}

/**
 * `primaries` primaries with one replica each (`--cluster-enabled yes`, `redis-cli --cluster create …
 * --cluster-replicas 1`), every node a throwawayRedis (AOF, appendfsync always) on a free loopback port;
 * resolves once the cluster is ok on every node and every replica finished its first sync
 * (master_link_status:up), so a test's faults never hit a half-built cluster.
 */
export async function throwawayCluster (t: Teardown, { primaries = 3, args = [] as string[] } = {}): Promise<ThrowawayCluster> {
  const servers: ThrowawayRedis[] = []
  for (let i = 0; i < primaries * 2; i++) {
    // a short node timeout: a failover in a test should take seconds, not the default 15 s
    servers.push(await throwawayRedis(t, { args: ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000', ...args] }))
  }
  const create = spawnSync('redis-cli', ['--cluster', 'create', ...servers.map((s) => `127.0.0.1:${s.port}`), '--cluster-replicas', '1', '--cluster-yes'], { encoding: 'utf8' })
  if (create.status !== 0) throw new Error(`redis-cli --cluster create failed: ${create.stdout}${create.stderr}`)

  const nodesOf = async (server: ThrowawayRedis) => {
    const text = await server.client.call('CLUSTER', 'NODES') as string
    const byId = new Map<string, number>()
    const lines = text.trim().split('\n').map((line) => line.split(' '))
    for (const [id, address] of lines) byId.set(id!, Number(/:(\d+)@/.exec(address!)![1]))
    const topology = new Map<number, { role: 'master' | 'slave', primaryPort: number | null, slots: Array<[number, number]> }>()
    for (const [id, , flags, primaryId, , , , link, ...slots] of lines) {
      if (flags!.includes('fail') || link !== 'connected') continue
      const role = flags!.includes('master') ? 'master' : 'slave'
      topology.set(byId.get(id!)!, {
        role,
        primaryPort: role === 'slave' ? byId.get(primaryId!) ?? null : null,
        slots: slots.filter((range) => !range.startsWith('[')).map((range) => {
          const [from, to] = range.split('-').map(Number)
          return [from!, to ?? from!] as [number, number]
        })
      })
    }
    return topology
  }
  const self: ThrowawayCluster = {
    servers,
    env: { REDIS_CLUSTER_NODES: servers.map((s) => `127.0.0.1:${s.port}`).join(',') },
    async topology () {
      for (const server of servers) {
        try { return await nodesOf(server) } catch {}
      }
      throw new Error('no cluster node answers CLUSTER NODES')
    },
    async primaryOf (hashTag) {
      const slot = Number(await self.servers.find((s) => s.client.status === 'ready')!.client.call('CLUSTER', 'KEYSLOT', `{${hashTag}}`))
      // During a failover the node asked may briefly name no primary for the slot: ask again.
      const deadline = Date.now() + 10_000
      for (;;) {
        for (const [port, node] of await self.topology()) {
          if (node.role === 'master' && node.slots.some(([from, to]) => slot >= from && slot <= to)) return port
        }
        if (Date.now() > deadline) throw new Error(`no primary serves slot ${slot}`)
        await pollPause(100)
      }
    },
    async healthy (timeoutMs = 30_000) {
      await until(async () => {
        try {
          for (const server of servers) {
            const info = await server.client.call('CLUSTER', 'INFO') as string
            if (!/cluster_state:ok/.test(info) || !/cluster_slots_ok:16384/.test(info)) return false
            const replication = await server.client.info('replication')
            if (/role:slave/.test(replication) && !/master_link_status:up/.test(replication)) return false
          }
          // every node sees the same primaries, each with one synced replica
          const views = await Promise.all(servers.map(async (s) => [...(await nodesOf(s)).entries()]
            .filter(([, n]) => n.role === 'master').map(([port]) => port).sort().join(',')))
          const topology = await nodesOf(servers[0]!)
          const replicas = [...topology.values()].filter((n) => n.role === 'slave').length
          return new Set(views).size === 1 && views[0]!.split(',').length === primaries && replicas === primaries
        } catch { return false }
      }, timeoutMs, `the cluster of ${primaries} primaries and ${primaries} replicas to be ok and synced`)
    }
  }
  await self.healthy()
  return self
}

/**
 * POST /coupons on an app of the cluster until it answers 201, and which primary serves the new coupon.
 * Right after a failover the first commands may meet the old slot map: 503 REDIS_RECONFIGURING (the row
 * may exist already, its counters are built on first use): another coupon is made instead.
 */
export async function clusterCoupon (cluster: ThrowawayCluster, app: FastifyInstance, body: Record<string, unknown>): Promise<{ id: number, primary: number }> {
  for (;;) {
    const created = await app.inject({ method: 'POST', url: '/coupons', headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, payload: { name: 'cluster coupon', ...body } })
    if (created.statusCode === 503) {
      await pollPause(100)
      continue
    }
    if (created.statusCode !== 201) throw new Error(`coupon not created: ${created.statusCode} ${created.body}`)
    const { id } = created.json() as { id: number }
    return { id, primary: await cluster.primaryOf(String(id)) }
  }
}

// ------------------------------------------------------------------------------------------- postgres

export interface ThrowawayPostgres {
  /** URL of the `postgres` database (admin) */
  adminUrl: string
  port: number
  start (): Promise<void>
  /** pg_ctl stop -m immediate: like a crash, every connection drops */
  stop (): Promise<void>
}

function asPostgres (args: string[], timeoutMs = 60_000) {
  const result = spawnSync('runuser', ['-u', 'postgres', '--', ...args], { encoding: 'utf8', timeout: timeoutMs })
  if (result.status !== 0) throw new Error(`${args.join(' ')} failed: ${result.stderr || result.stdout || result.error}`)
}

export async function throwawayPostgres (t: Teardown): Promise<ThrowawayPostgres> {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'couponrush-pg-'))
  chownSync(dir, Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim()),
    Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout.trim()))
  const data = join(dir, 'data')
  let running = false
  const self: ThrowawayPostgres = {
    adminUrl: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    async start () {
      asPostgres(['pg_ctl', '-D', data, '-l', join(dir, 'log'), '-o', `-p ${port} -k ${dir} -h 127.0.0.1 -c fsync=off`, '-w', '-t', '60', 'start'])
      running = true
    },
    async stop () {
      asPostgres(['pg_ctl', '-D', data, '-m', 'immediate', '-w', 'stop'])
      running = false
    }
  }
  t.teardown(async () => {
    // stop() is async: a try/catch around it without await never saw its failure.
    if (running) await self.stop().catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  })
  asPostgres(['initdb', '-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync'])
  await self.start()
  return self
}

// -------------------------------------------------------------------------------------------- service

export interface Service {
  base: string
  port: number
  child: ChildProcess
  /** everything the process wrote, for assertions on log lines and for failure reports */
  output (): string
  /** resolves with the exit code (null when it did not exit within timeoutMs) */
  exited (timeoutMs: number): Promise<number | null>
  kill9 (): Promise<void>
}

/**
 * Runs the built server, `node dist/server.js`, as its own process: the artifact the image ships (one pid,
 * so kill -9 hits the server itself). npm run test:faults builds first.
 */
export async function spawnService (t: Teardown, env: Record<string, string>, { waitReady = true } = {}): Promise<Service> {
  const port = await freePort()
  let out = ''
  const child = track(spawn(process.execPath, [distEntry('server.js')], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      NODE_ENV: 'test',
      PORT: String(port),
      HOST: '127.0.0.1',
      LOG_LEVEL: 'warn',
      ADMIN_TOKEN,
      CONSUMER_BLOCK_MS: '200',
      ...env
    },
    stdio: ['ignore', 'pipe', 'pipe']
  }))
  child.stdout!.on('data', (d) => { out = (out + d).slice(-200_000) })
  child.stderr!.on('data', (d) => { out = (out + d).slice(-200_000) })
  const base = `http://127.0.0.1:${port}`
  const service: Service = {
    base,
    port,
    child,
    output: () => out,
    exited: (timeoutMs) => exited(child, timeoutMs),
    kill9: () => killHard(child)
  }
  t.teardown(() => killHard(child))
  if (waitReady) {
    await until(async () => {
      if (child.exitCode !== null) throw new Error(`service exited with ${child.exitCode}:\n${out}`)
      try { return (await fetch(`${base}/health`, { signal: AbortSignal.timeout(1000) })).ok } catch { return false }
    }, 30_000, 'the service to listen')
  }
  return service
}

// ------------------------------------------------------------------------------------------ databases

/** A throwaway database on the given server, dropped at teardown (the same helper the main suite uses). */
export { createTestDatabase as createDatabase } from '../../helpers/env.js'
