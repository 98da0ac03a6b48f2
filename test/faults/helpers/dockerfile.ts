// Replays a Dockerfile without Docker, for test/faults/image.test.ts: each stage is built in its own
// empty directory (that directory is the stage's `/`), COPY copies exactly what it names (from the build
// context minus .dockerignore, or from an earlier stage's directory with --from), RUN runs with `sh -c`
// in the WORKDIR with the stage's ENV, and the final stage's CMD can then be started like the container
// would start it. A file or a dependency the Dockerfile forgets is missing here as it would be in the
// image, so the service fails the same way.
//
// What is emulated, and what is not:
// - The base image must be node:<major>…; its Node is provided from the host (a node of that major first
//   on PATH; npm is the host's npm running on it). Nothing else of the base image exists: RUN steps that
//   need apt-get or absolute paths outside the stage cannot be replayed.
// - `RUN --mount=type=cache,target=X` links X to a directory kept across replays (like BuildKit's cache).
// - USER is recorded, not switched to (the caller checks what it can: files readable by others).
// - A stage whose instructions and inputs equal an earlier replay's is reused (stage-level build cache).
// - Instructions not understood (ADD, SHELL, ONBUILD, other mount types…) fail the replay loudly, so the
//   Dockerfile cannot drift past what this test checks.
import { spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, symlinkSync } from 'node:fs'
import { homedir, tmpdir } from 'node:os'
import { basename, dirname, join, posix } from 'node:path'

export interface Instruction {
  keyword: string
  /** the arguments after the keyword and its --flags, continuation lines joined */
  args: string
  flags: Record<string, string>
  line: number
  text: string
}

export interface Stage {
  index: number
  name: string | null
  base: string
  instructions: Instruction[]
}

// ------------------------------------------------------------------------------------------- parsing

/** Splits a Dockerfile into stages and instructions (backslash continuations, comments, --flags). */
export function parseDockerfile (text: string): Stage[] {
  const stages: Stage[] = []
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const first = i + 1
    let line = lines[i]!
    if (/^\s*(#.*)?$/.test(line)) continue
    // Continuation lines; comment lines inside a continued instruction are dropped, as Docker does.
    while (/\\\s*$/.test(line) && i + 1 < lines.length) {
      line = line.replace(/(\s*)\\\s*$/, (_, space: string) => (space === '' ? '' : ' '))
      i++
      while (i + 1 < lines.length && /^\s*(#.*)?$/.test(lines[i]!)) i++
      line += lines[i]!.trim()
    }
    const match = /^\s*([A-Za-z]+)\s*(.*)$/.exec(line)
    if (!match) throw new Error(`Dockerfile line ${first}: cannot parse ${JSON.stringify(line)}`)
    const keyword = match[1]!.toUpperCase()
    let rest = match[2]!.trim()
    const flags: Record<string, string> = {}
    // Flags (--from=x, --mount=…, --chown=…) only before the arguments; HEALTHCHECK's come before CMD.
    for (let flag = /^--([a-z-]+)(?:=(\S*))?\s*/.exec(rest); flag; flag = /^--([a-z-]+)(?:=(\S*))?\s*/.exec(rest)) {
      if (flags[flag[1]!] !== undefined) flags[flag[1]!] += `\n${flag[2] ?? ''}`
      else flags[flag[1]!] = flag[2] ?? 'true'
      rest = rest.slice(flag[0].length)
    }
    const instruction: Instruction = { keyword, args: rest, flags, line: first, text: line.trim() }
    if (keyword === 'FROM') {
      const from = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(rest)
      if (!from) throw new Error(`Dockerfile line ${first}: FROM ${rest} not understood`)
      stages.push({ index: stages.length, name: from[2] ?? null, base: from[1]!, instructions: [] })
      continue
    }
    const stage = stages[stages.length - 1]
    if (!stage) throw new Error(`Dockerfile line ${first}: ${keyword} before the first FROM`)
    stage.instructions.push(instruction)
  }
  if (stages.length === 0) throw new Error('Dockerfile has no FROM')
  return stages
}

/** An exec-form (JSON array) argument list, or null for the shell form. */
export function execForm (args: string): string[] | null {
  if (!args.startsWith('[')) return null
  try {
    const parsed = JSON.parse(args) as unknown
    return Array.isArray(parsed) && parsed.every((a) => typeof a === 'string') ? parsed : null
  } catch {
    return null
  }
}

/** Words of a shell-like argument list with "…" and '…' quoting (ENV, COPY in shell form). */
function words (args: string): string[] {
  const out: string[] = []
  const re = /"((?:[^"\\]|\\.)*)"|'([^']*)'|((?:[^\s"'\\]|\\.)+)/g
  let current = ''
  let last = -1
  for (let m = re.exec(args); m; m = re.exec(args)) {
    const piece = m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2] ?? m[3]!.replace(/\\(.)/g, '$1')
    // Adjacent pieces (KEY="a b") belong to one word.
    if (m.index === last) current += piece
    else {
      if (last !== -1) out.push(current)
      current = piece
    }
    last = m.index + m[0].length
  }
  if (last !== -1) out.push(current)
  return out
}

/** ENV a=1 b="two words" or the legacy ENV key value. */
export function parseEnv (args: string, substitute: (s: string) => string): Record<string, string> {
  const env: Record<string, string> = {}
  const legacy = /^([A-Za-z_][A-Za-z0-9_]*)\s+(.*)$/.exec(args)
  if (legacy) {
    env[legacy[1]!] = substitute(legacy[2]!)
    return env
  }
  for (const word of words(args)) {
    const eq = word.indexOf('=')
    if (eq <= 0) throw new Error(`ENV ${args}: expected key=value`)
    env[word.slice(0, eq)] = substitute(word.slice(eq + 1))
  }
  return env
}

/** $VAR, ${VAR} and ${VAR:-default} from the given variables (as Docker does in ENV, WORKDIR, COPY, USER). */
export function substituteVars (text: string, vars: Record<string, string>): string {
  return text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (_, braced: string | undefined, fallback: string | undefined, bare: string | undefined) => {
      const value = vars[(braced ?? bare)!]
      return value !== undefined && value !== '' ? value : fallback ?? ''
    })
}

// ----------------------------------------------------------------------------------------- .dockerignore

function globToRegExp (pattern: string): RegExp {
  let re = ''
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!
    if (c === '*' && pattern[i + 1] === '*') {
      // '**/' matches any number of directories, a trailing '**' anything
      if (pattern[i + 2] === '/') { re += '(?:.*/)?'; i += 2 } else { re += '.*'; i++ }
    } else if (c === '*') re += '[^/]*'
    else if (c === '?') re += '[^/]'
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&')
  }
  return new RegExp(`^${re}$`)
}

/** The build context's .dockerignore as a predicate on context-relative paths (a match excludes what is below too). */
export function dockerignore (context: string): (relative: string) => boolean {
  const file = join(context, '.dockerignore')
  const rules = existsSync(file)
    ? readFileSync(file, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'))
      .map((l) => {
        const negate = l.startsWith('!')
        const pattern = posix.normalize((negate ? l.slice(1) : l).trim()).replace(/^\/+|\/+$/g, '')
        return { negate, re: globToRegExp(pattern) }
      })
    : []
  return (relative) => {
    const parts = relative.split('/')
    let excluded = false
    for (const { negate, re } of rules) {
      for (let n = 1; n <= parts.length; n++) {
        if (re.test(parts.slice(0, n).join('/'))) { excluded = !negate; break }
      }
    }
    return excluded
  }
}

// ------------------------------------------------------------------------------------------- replaying

export interface StageResult {
  stage: Stage
  /** the stage's `/` */
  root: string
  /** absolute path (on this machine) of the stage's WORKDIR */
  workdir: string
  env: Record<string, string>
  user: string | null
  cmd: string[] | null
  entrypoint: string[] | null
  healthcheck: string[] | null
  /** the node that stands in for the base image's */
  nodeBin: string
  reused: boolean
}

export interface ReplayOptions {
  /** the build context (the repository) */
  context: string
  dockerfileText: string
  /** where the stages' directories go (removed by the caller) */
  workRoot: string
  /** log lines (commands run, their failures) */
  log?: (line: string) => void
  /** a directory with a node of the given major, for the base image node:<major> */
  nodeFor: (major: number) => string
}

// Stage-level build cache across replays in this process: key -> result, and each result's key.
const stageCache = new Map<string, StageResult>()
const stageKeys = new WeakMap<StageResult, string>()

// Variables a docker build passes through from the host (proxies), plus the CA bundle this machine's
// network needs; nothing else of the test process's environment reaches a RUN step or the CMD.
const PASS_THROUGH = ['HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY', 'http_proxy', 'https_proxy', 'no_proxy', 'NODE_EXTRA_CA_CERTS', 'SSL_CERT_FILE']

export function hostPassThrough (): Record<string, string> {
  return Object.fromEntries(PASS_THROUGH.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]!]))
}

/** Where `RUN --mount=type=cache` directories live between replays (BuildKit keeps them on the builder). */
export const CACHE_MOUNTS = join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'couponrush-image-replay')

function digestPath (hash: ReturnType<typeof createHash>, path: string, relative: string, ignored: (rel: string) => boolean) {
  const stat = lstatSync(path)
  if (stat.isDirectory()) {
    for (const name of readdirSync(path).sort()) {
      const rel = relative === '' ? name : `${relative}/${name}`
      if (!ignored(rel)) digestPath(hash, join(path, name), rel, ignored)
    }
  } else {
    hash.update(`${relative}\0${stat.mode}\0`)
    hash.update(stat.isSymbolicLink() ? readlinkSync(path) : readFileSync(path))
  }
}

/** Copies a context path file by file, leaving out what .dockerignore excludes. */
function copyFromContext (from: string, to: string, relative: string, ignored: (rel: string) => boolean) {
  const stat = lstatSync(from)
  if (stat.isDirectory()) {
    mkdirSync(to, { recursive: true })
    for (const name of readdirSync(from)) {
      const rel = `${relative}/${name}`
      if (!ignored(rel)) copyFromContext(join(from, name), join(to, name), rel, ignored)
    }
  } else if (stat.isSymbolicLink()) {
    mkdirSync(dirname(to), { recursive: true })
    rmSync(to, { force: true })
    symlinkSync(readlinkSync(from), to)
  } else {
    mkdirSync(dirname(to), { recursive: true })
    cpSync(from, to, { preserveTimestamps: true })
  }
}

/** Expands * ? in the segments of a source path (relative to base), as COPY does. */
function expandSource (base: string, source: string): string[] {
  const segments = posix.normalize(source).replace(/^\/+/, '').split('/').filter((s) => s !== '' && s !== '.')
  let paths = ['']
  for (const segment of segments) {
    if (!/[*?]/.test(segment)) { paths = paths.map((p) => (p === '' ? segment : `${p}/${segment}`)); continue }
    const re = globToRegExp(segment)
    paths = paths.flatMap((p) => {
      const dir = join(base, p)
      return existsSync(dir) && statSync(dir).isDirectory()
        ? readdirSync(dir).filter((name) => re.test(name)).sort().map((name) => (p === '' ? name : `${p}/${name}`))
        : []
    })
  }
  return paths.filter((p) => existsSync(join(base, p)))
}

function run (argv: string[], cwd: string, env: Record<string, string>, log: (line: string) => void, what: string): void {
  log(`${what}: ${argv.join(' ')}`)
  const result = spawnSync(argv[0]!, argv.slice(1), { cwd, env, encoding: 'utf8', timeout: 10 * 60_000, maxBuffer: 64 * 2 ** 20 })
  if (result.status !== 0) {
    const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.slice(-4000)
    throw new Error(`${what} failed (${result.error?.message ?? `exit ${result.status ?? result.signal}`}): ${argv.join(' ')}\n${output}`)
  }
}

/** Replays every stage; returns them in order (the last is the image). */
export function replayDockerfile (options: ReplayOptions): StageResult[] {
  const { context, dockerfileText, workRoot, nodeFor } = options
  const log = options.log ?? (() => {})
  const ignored = dockerignore(context)
  const results: StageResult[] = []
  for (const stage of parseDockerfile(dockerfileText)) {
    const label = `stage ${stage.name ?? stage.index}`
    const earlier = results.find((r) => r.stage.name === stage.base)
    const baseMatch = /^node:(\d+)(?:[.-]\S*)?(?:@sha256:[0-9a-f]+)?$/.exec(stage.base)
    if (!earlier && !baseMatch) throw new Error(`${label}: cannot replay the base image ${stage.base} (only node:<major>… or an earlier stage)`)

    // The stage's cache key: its base, every instruction, and the content of what it copies.
    const key = createHash('sha256').update(earlier ? `stage:${earlier.stage.index}:${stageKeys.get(earlier) ?? ''}` : stage.base)
    for (const instruction of stage.instructions) {
      key.update(`\n${instruction.text}`)
      if (instruction.keyword === 'COPY' && instruction.flags.from === undefined) {
        const sources = (execForm(instruction.args) ?? words(instruction.args)).slice(0, -1)
        for (const source of sources) for (const path of expandSource(context, source)) digestPath(key, join(context, path), path, ignored)
      }
      if (instruction.keyword === 'COPY' && instruction.flags.from !== undefined) {
        const from = results.find((r) => r.stage.name === instruction.flags.from || String(r.stage.index) === instruction.flags.from)
        key.update(from ? stageKeys.get(from) ?? '' : `?${instruction.flags.from}`)
      }
    }
    const digest = key.digest('hex')
    const cached = stageCache.get(digest)
    if (cached && existsSync(cached.root)) {
      log(`${label}: unchanged, reusing ${cached.root}`)
      const reused = { ...cached, stage, reused: true }
      stageKeys.set(reused, digest)
      results.push(reused)
      continue
    }

    const root = mkdtempSync(join(workRoot, `stage-${stage.name ?? stage.index}-`))
    const state: StageResult = earlier
      ? { ...earlier, stage, root, workdir: join(root, within(earlier.root, earlier.workdir)), env: { ...earlier.env }, reused: false }
      : { stage, root, workdir: root, env: {}, user: null, cmd: null, entrypoint: null, healthcheck: null, nodeBin: nodeFor(Number(baseMatch![1])), reused: false }
    if (earlier) cpSync(earlier.root, root, { recursive: true, verbatimSymlinks: true })
    const args: Record<string, string> = {}
    const inStage = (path: string) => path.startsWith('/') ? join(root, path) : join(state.workdir, path)
    const vars = () => ({ ...args, ...state.env })

    for (const instruction of stage.instructions) {
      const where = `${label}, line ${instruction.line} (${instruction.keyword})`
      const known = ['from', 'chown', 'chmod', 'link', 'mount', 'interval', 'timeout', 'start-period', 'start-interval', 'retries']
      const unknownFlag = Object.keys(instruction.flags).find((f) => !known.includes(f))
      if (unknownFlag) throw new Error(`${where}: the replay does not understand --${unknownFlag}`)
      switch (instruction.keyword) {
        case 'WORKDIR': {
          const dir = substituteVars(instruction.args, vars())
          state.workdir = dir.startsWith('/') ? join(root, dir) : join(state.workdir, dir)
          mkdirSync(state.workdir, { recursive: true })
          break
        }
        case 'ENV':
          Object.assign(state.env, parseEnv(instruction.args, (s) => substituteVars(s, vars())))
          break
        case 'ARG': {
          const [name, value] = instruction.args.split('=', 2) as [string, string | undefined]
          args[name.trim()] = value ?? ''
          break
        }
        case 'COPY': {
          const list = (execForm(instruction.args) ?? words(instruction.args)).map((s) => substituteVars(s, vars()))
          if (list.length < 2) throw new Error(`${where}: COPY needs a source and a destination`)
          const dest = list[list.length - 1]!
          const from = instruction.flags.from
          const source = from === undefined ? null : results.find((r) => r.stage.name === from || String(r.stage.index) === from)
          if (from !== undefined && !source) throw new Error(`${where}: --from=${from} names no earlier stage`)
          const base = source ? source.root : context
          const sources = list.slice(0, -1).flatMap((s) => {
            const found = expandSource(base, s).filter((p) => source !== null || !ignored(p))
            if (found.length === 0) throw new Error(`${where}: COPY failed: ${s} not found in ${source ? `stage ${from}` : 'the build context'}`)
            return found
          })
          const wildcard = list.slice(0, -1).some((s) => /[*?]/.test(s))
          const target = inStage(dest)
          const intoDir = dest.endsWith('/') || sources.length > 1 || wildcard || (existsSync(target) && statSync(target).isDirectory())
          for (const path of sources) {
            const from = join(base, path)
            const isDir = statSync(from).isDirectory()
            // A directory's contents are copied, not the directory itself.
            const to = isDir ? target : intoDir ? join(target, basename(path)) : target
            if (source) cpSync(from, to, { recursive: true, verbatimSymlinks: true })
            else copyFromContext(from, to, path, ignored)
          }
          break
        }
        case 'RUN': {
          const env: Record<string, string> = {
            ...hostPassThrough(),
            ...args,
            ...state.env,
            HOME: join(root, 'root'),
            npm_config_update_notifier: 'false',
            PATH: `${state.nodeBin}:${state.env.PATH ?? process.env.PATH ?? '/usr/bin:/bin'}`
          }
          mkdirSync(env.HOME!, { recursive: true })
          const links: string[] = []
          for (const mount of (instruction.flags.mount ?? '').split('\n').filter((m) => m !== '')) {
            const spec = Object.fromEntries(mount.split(',').map((kv) => kv.split('=', 2) as [string, string]))
            const target = spec.target ?? spec.dst ?? spec.destination
            if (spec.type !== 'cache' || !target) throw new Error(`${where}: the replay only understands --mount=type=cache,target=…`)
            const shared = join(CACHE_MOUNTS, (spec.id ?? target).replace(/[^A-Za-z0-9._-]/g, '_'))
            mkdirSync(shared, { recursive: true })
            const link = inStage(target)
            mkdirSync(dirname(link), { recursive: true })
            rmSync(link, { recursive: true, force: true })
            symlinkSync(shared, link)
            links.push(link)
          }
          try {
            const argv = execForm(instruction.args) ?? ['sh', '-c', instruction.args]
            run(argv, state.workdir, env, log, where)
          } finally {
            // A cache mount is not part of the layer.
            for (const link of links) rmSync(link, { force: true })
          }
          break
        }
        case 'USER':
          state.user = substituteVars(instruction.args, vars())
          break
        case 'CMD':
          state.cmd = execForm(instruction.args) ?? ['sh', '-c', instruction.args]
          break
        case 'ENTRYPOINT':
          state.entrypoint = execForm(instruction.args) ?? ['sh', '-c', instruction.args]
          break
        case 'HEALTHCHECK': {
          if (/^NONE$/i.test(instruction.args)) { state.healthcheck = null; break }
          const cmd = /^CMD\s+(.*)$/is.exec(instruction.args)
          if (!cmd) throw new Error(`${where}: HEALTHCHECK needs CMD or NONE`)
          state.healthcheck = execForm(cmd[1]!) ?? ['sh', '-c', cmd[1]!]
          break
        }
        case 'EXPOSE': case 'LABEL': case 'STOPSIGNAL': case 'VOLUME': case 'MAINTAINER':
          break
        default:
          throw new Error(`${where}: the replay does not understand ${instruction.keyword}; teach test/faults/helpers/dockerfile.ts or keep to what it knows`)
      }
    }
    stageKeys.set(state, digest)
    stageCache.set(digest, state)
    results.push(state)
  }
  return results
}

/** `to` relative to `from`, a directory it is in (or the same). */
function within (from: string, to: string): string {
  return to === from ? '' : to.slice(from.length + 1)
}

/** The container's main process: ENTRYPOINT and CMD as Docker combines them. */
export function containerCommand (image: StageResult): string[] {
  if (image.entrypoint) return image.entrypoint[0] === 'sh' && image.entrypoint[1] === '-c' ? image.entrypoint : [...image.entrypoint, ...(image.cmd ?? [])]
  if (!image.cmd) throw new Error('the image has neither CMD nor ENTRYPOINT')
  return image.cmd
}

/** Environment for a process in the replayed image: its ENV, the given settings, its node first on PATH. */
export function imageEnv (image: StageResult, settings: Record<string, string>): Record<string, string> {
  const home = join(image.root, 'home')
  mkdirSync(home, { recursive: true })
  return {
    ...hostPassThrough(),
    ...image.env,
    HOME: home,
    ...settings,
    PATH: `${image.nodeBin}:${image.env.PATH ?? process.env.PATH ?? '/usr/bin:/bin'}`
  }
}

/** Starts a command in the replayed image (cwd = WORKDIR); the caller kills it. */
export function startInImage (image: StageResult, argv: string[], env: Record<string, string>) {
  return spawn(argv[0]!, argv.slice(1), { cwd: image.workdir, env, stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Runs a command in the replayed image to its end: exit code and output. */
export function runInImage (image: StageResult, argv: string[], env: Record<string, string>, timeoutMs = 60_000): { status: number | null, output: string } {
  const result = spawnSync(argv[0]!, argv.slice(1), { cwd: image.workdir, env, encoding: 'utf8', timeout: timeoutMs })
  return { status: result.status, output: `${result.stdout ?? ''}${result.stderr ?? ''}${result.error ? `\n${result.error.message}` : ''}` }
}

/** A scratch directory for replays under the system's temp directory. */
export function replayWorkRoot (): string {
  return mkdtempSync(join(tmpdir(), 'couponrush-image-'))
}
