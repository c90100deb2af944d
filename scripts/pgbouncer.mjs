// A private PgBouncer in transaction pooling mode in front of the local
// PostgreSQL, for the tests and the benchmarks: Debian's pgbouncer (installed
// with apt-get if missing), on a spare loopback port, with its config in a
// fresh temporary directory, run in the foreground so its pid is ours to stop.
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { chown } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { waitForPort } from '../__test__/support/processes.mjs'
import { sparePort } from '../__test__/support/redis-servers.mjs'

const BINARY = '/usr/sbin/pgbouncer'
const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres'

/** Installs Debian's pgbouncer unless it is there (root only, as CI runs). */
export function ensurePgbouncer() {
  if (existsSync(BINARY)) return
  const apt = (...args) =>
    execFileSync('apt-get', args, {
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
  try {
    apt('install', '-y', '-q', '--no-install-recommends', 'pgbouncer')
  } catch {
    apt('update', '-q') // a fresh machine may have no package lists yet
    apt('install', '-y', '-q', '--no-install-recommends', 'pgbouncer')
  }
  if (!existsSync(BINARY)) throw new Error(`apt-get installed pgbouncer but ${BINARY} is missing`)
}

/**
 * Starts PgBouncer (`pool_mode = transaction`, `poolSize` server connections
 * at most) in front of `databaseUrl`'s server (DATABASE_URL's by default);
 * resolves once it accepts connections with `{ url, pid, stop() }`, `url`
 * reaching the same user and database through it. `settings` adds lines to
 * its [pgbouncer] section.
 */
export async function startPgbouncer({ poolSize = 5, settings = {}, databaseUrl = DATABASE_URL } = {}) {
  ensurePgbouncer()
  const target = new URL(databaseUrl)
  const user = decodeURIComponent(target.username || 'postgres')
  const port = await sparePort()
  const dir = mkdtempSync(join(tmpdir(), 'stoma-pgbouncer-'))
  const config = {
    listen_addr: '127.0.0.1',
    listen_port: port,
    unix_socket_dir: '',
    auth_type: 'trust',
    auth_file: join(dir, 'userlist.txt'),
    pool_mode: 'transaction',
    default_pool_size: poolSize,
    max_client_conn: 1000,
    // pg's and tokio-postgres's startup packets set nothing else it refuses.
    ignore_startup_parameters: 'extra_float_digits',
    ...settings,
  }
  writeFileSync(
    join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `* = host=${target.hostname} port=${target.port || 5432}`,
      '[pgbouncer]',
      ...Object.entries(config).map(([key, value]) => `${key} = ${value}`),
      '',
    ].join('\n'),
  )
  writeFileSync(join(dir, 'userlist.txt'), `"${user}" ""\n`)
  // As root pgbouncer refuses to run: it runs as postgres, which must read
  // its directory.
  const asRoot = process.getuid?.() === 0
  let command = [BINARY, join(dir, 'pgbouncer.ini')]
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }))
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }))
    await Promise.all(['', 'pgbouncer.ini', 'userlist.txt'].map((f) => chown(join(dir, f), uid, gid)))
    // setpriv execs pgbouncer in place, so the child's pid is pgbouncer's.
    command = ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--init-groups', '--', ...command]
  }
  const child = spawn(command[0], command.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] })
  let log = ''
  child.stderr.on('data', (chunk) => {
    log = (log + chunk).slice(-4000)
  })
  const exited = once(child, 'exit')
  // Never outlive the process that started it, even if its teardown is skipped.
  const onExit = () => child.kill('SIGKILL')
  process.once('exit', onExit)
  const stop = async () => {
    process.off('exit', onExit)
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM') // immediate shutdown
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    }
    rmSync(dir, { recursive: true, force: true })
  }
  try {
    await Promise.race([
      waitForPort(port),
      exited.then(([code]) => {
        throw new Error(`pgbouncer exited (${code}) before listening: ${log}`)
      }),
    ])
  } catch (error) {
    await stop()
    throw error
  }
  const url = new URL(target)
  url.hostname = '127.0.0.1'
  url.port = String(port)
  return { url: url.href, pid: child.pid, stop, log: () => log }
}
