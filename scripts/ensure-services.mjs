// Makes sure the Redis and PostgreSQL the tests and benchmarks use answer,
// starting this machine's local servers if they are down. REDIS_URL and
// DATABASE_URL choose other servers (which are then only checked).
import { execSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { connect } from 'node:net'

const redisUrl = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')
const postgresUrl = new URL(process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres')

async function reachable(host, port) {
  return new Promise((resolve) => {
    const socket = connect({ host, port: Number(port) })
    const done = (ok) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(1000, () => done(false))
    socket.once('connect', () => done(true))
    socket.once('error', () => done(false))
  })
}

async function ensure(name, url, defaultPort, start) {
  const host = url.hostname.replace(/^\[|\]$/g, '')
  const port = url.port || defaultPort
  if (await reachable(host, port)) return
  const local = ['127.0.0.1', 'localhost', '::1'].includes(host)
  if (!local) throw new Error(`${name} at ${url.host} does not answer`)
  console.error(`${name} is down; starting it`)
  execSync(start(port), { stdio: 'inherit', shell: '/bin/bash' })
  for (let i = 0; i < 50; i++) {
    if (await reachable(host, port)) return
    await new Promise((r) => setTimeout(r, 200))
  }
  throw new Error(`${name} did not come up on port ${port}`)
}

await ensure(
  'Redis',
  redisUrl,
  6379,
  (port) => `redis-server --daemonize yes --bind 127.0.0.1 --port ${port} --save "" --appendonly no`,
)
await ensure('PostgreSQL', postgresUrl, 5432, () => {
  const version = readdirSync('/etc/postgresql')[0]
  return `pg_ctlcluster --skip-systemctl-redirect ${version} main start`
})
