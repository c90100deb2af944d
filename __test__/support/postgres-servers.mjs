// Private PostgreSQL clusters for the tests: initdb and pg_ctl in a fresh
// temporary directory (as the postgres OS user when running as root), on a
// spare loopback port, with their own settings and pg_hba.conf. Each is
// stopped by stop(), and when the test process exits even if a test failed.
import { execFileSync, spawnSync } from 'node:child_process'
import { chmodSync, chownSync, copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { sparePort } from './redis-servers.mjs'

/** The directory of pg_ctl and initdb, or undefined when PostgreSQL's binaries are not installed. */
export const PG_BIN = ['/usr/lib/postgresql/15/bin', '/usr/local/bin'].find(
  (dir) => spawnSync(`${dir}/pg_ctl`, ['--version']).status === 0,
)
const asRoot = process.getuid?.() === 0
const owner = () =>
  asRoot
    ? {
        uid: Number(execFileSync('id', ['-u', 'postgres']).toString()),
        gid: Number(execFileSync('id', ['-g', 'postgres']).toString()),
      }
    : undefined

/** Runs a PostgreSQL binary, as the postgres OS user when we are root. */
function pgRun(binary, args) {
  const command = asRoot
    ? ['runuser', ['-u', 'postgres', '--', `${PG_BIN}/${binary}`, ...args]]
    : [`${PG_BIN}/${binary}`, args]
  return execFileSync(command[0], command[1], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 })
}

// Every cluster running, so none outlives the test process.
const running = new Set()
process.on('exit', () => {
  for (const cluster of running) cluster.kill()
})

/**
 * Creates and starts a cluster (trust authentication, fsync off). `settings`
 * are added as `-c name=value`; `hba` replaces pg_hba.conf's lines; `files`
 * (name → path) are copied into the data directory, readable by the server
 * only, for settings such as ssl_cert_file to name. Resolves with
 * `{ port, url, log(), start(), stopImmediate(), stop() }`, `log()` being
 * the server's log so far.
 */
export async function startCluster({ settings = {}, hba, files = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'stoma-pg-'))
  chmodSync(dir, 0o700)
  const ids = owner()
  if (ids) chownSync(dir, ids.uid, ids.gid)
  const data = join(dir, 'data')
  pgRun('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'])
  for (const [name, from] of Object.entries(files)) {
    const to = join(data, name)
    copyFileSync(from, to)
    chmodSync(to, 0o600)
    if (ids) chownSync(to, ids.uid, ids.gid)
  }
  if (hba) {
    const file = join(data, 'pg_hba.conf')
    writeFileSync(file, `${hba.join('\n')}\n`)
    if (ids) chownSync(file, ids.uid, ids.gid)
  }
  const port = await sparePort()
  const options = [
    `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`,
    ...Object.entries(settings).map(([name, value]) => `-c ${name}=${value}`),
  ].join(' ')
  let started = false
  const cluster = {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    log: () => readFileSync(join(dir, 'log'), 'utf8'),
    start() {
      pgRun('pg_ctl', ['-D', data, '-l', join(dir, 'log'), '-w', '-t', '30', '-o', options, 'start'])
      started = true
    },
    /** The postmaster and every backend die at once (SIGQUIT), no shutdown checkpoint. */
    stopImmediate() {
      pgRun('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop'])
      started = false
    },
    kill() {
      if (started) {
        try {
          cluster.stopImmediate()
        } catch {}
      }
    },
    stop() {
      cluster.kill()
      running.delete(cluster)
      rmSync(dir, { recursive: true, force: true })
    },
  }
  running.add(cluster)
  try {
    cluster.start()
  } catch (error) {
    cluster.stop()
    throw error
  }
  return cluster
}
