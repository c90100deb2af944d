// End to end: a Stoma gateway over HTTP with rateLimit / cache on Redis,
// loaded on loopback by autocannon for a fixed time and connection count,
// once with this package's stores and once with Stoma's (ioredis).
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import autocannon from 'autocannon'
import { deleteRedisKeys } from '../../scripts/cleanup.mjs'

const DURATION_S = 6
const CONNECTIONS = 32

async function startServer(which, prefix) {
  const child = spawn(process.execPath, [new URL('../e2e-server.mjs', import.meta.url).pathname, which, prefix], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const [line] = await once(child.stdout, 'data')
  const exited = once(child, 'exit')
  return {
    port: JSON.parse(String(line)).port,
    stop: () => {
      child.kill('SIGTERM')
      return exited // so no late write lands after the keys are deleted
    },
  }
}

async function load(port, path, headers, duration = DURATION_S) {
  const result = await autocannon({
    url: `http://127.0.0.1:${port}${path}`,
    connections: CONNECTIONS,
    duration,
    headers,
  })
  if (result.non2xx > 0 || result.errors > 0)
    throw new Error(`${path}: ${result.non2xx} non-2xx, ${result.errors} errors`)
  return { rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99 }
}

/**
 * One gateway route under load: our stores (`ours`: "ours" or "ours-near"),
 * Stoma's, and stores that do nothing (the ceiling: what a request costs
 * without a store), each in its own server process, one after another.
 */
function e2eCase(name, path, target, ours = 'ours') {
  return {
    name,
    target,
    async run() {
      const prefix = `bench-e2e-${process.pid}-${Date.now()}:`
      const runs = {}
      for (const which of [ours, 'stoma', 'none']) {
        const server = await startServer(which, `${prefix}${which}:`)
        try {
          await load(server.port, path, { 'x-client': 'warm' }, 2) // warm up caches and JIT
          runs[which] = await load(server.port, path, { 'x-client': 'bench' })
        } finally {
          await server.stop()
        }
      }
      await deleteRedisKeys(prefix) // what the gateways cached
      const share = (rps) => `${Math.round((100 * rps) / runs.none.rps)}%`
      return {
        ours: runs[ours].rps,
        theirs: runs.stoma.rps,
        ratio: runs[ours].rps / runs.stoma.rps,
        unit: 'req',
        detail:
          `no-store ceiling ${Math.round(runs.none.rps)} req/s: ours ${share(runs[ours].rps)}, Stoma ${share(runs.stoma.rps)}; ` +
          `p50/p99 ${runs[ours].p50}/${runs[ours].p99} ms vs ${runs.stoma.p50}/${runs.stoma.p99} ms`,
      }
    },
  }
}

export default function e2eCases() {
  return [
    e2eCase(`e2e: gateway rateLimit on Redis, ${CONNECTIONS} connections`, '/limited', 1.5),
    e2eCase(`e2e: gateway cache HIT 64 KiB on Redis, ${CONNECTIONS} connections`, '/cached'),
    e2eCase(
      `e2e: gateway cache HIT 64 KiB on Redis, nearCache, ${CONNECTIONS} connections`,
      '/cached',
      undefined,
      'ours-near',
    ),
  ]
}
