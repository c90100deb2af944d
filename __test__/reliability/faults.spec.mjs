// Servers killed under load and restarted: a private redis-server and a
// private PostgreSQL cluster (initdb + pg_ctl in a temporary directory, as
// the postgres OS user when running as root), each killed while calls are
// in flight. While down every call rejects within its timeout + 500 ms, no
// rejection goes unhandled, the process lives, and calls succeed again
// within a bounded time of the restart.
import { once } from 'node:events'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { postgresAdapter, redisAdapter } from '../../index.mjs'
import { PG_BIN, startCluster } from '../support/postgres-servers.mjs'
import { load } from '../support/load.mjs'
import { sleep } from '../support/processes.mjs'
import { sparePort, startRedisAt } from '../support/redis-servers.mjs'

const unhandled = []
const onUnhandled = (reason) => unhandled.push(reason)
beforeAll(() => process.on('unhandledRejection', onUnhandled))
afterAll(() => {
  process.off('unhandledRejection', onUnhandled)
  expect(unhandled).toEqual([])
})

/** Polls `call` until it succeeds; resolves with the ms it took. */
async function firstSuccess(call, limitMs) {
  const started = Date.now()
  while (Date.now() - started < limitMs) {
    if (
      await call().then(
        () => true,
        () => false,
      )
    )
      return Date.now() - started
    await sleep(10)
  }
  throw new Error(`no success within ${limitMs} ms`)
}

describe('reliability: Redis killed under load and restarted', () => {
  const commandTimeoutMs = 300
  let port, server, adapter
  beforeAll(async () => {
    port = await sparePort()
    server = await startRedisAt(port)
    adapter = redisAdapter({
      url: `redis://127.0.0.1:${port}`,
      commandTimeoutMs,
      connectTimeoutMs: 300,
      prefix: 'kill:',
    })
  })
  afterAll(async () => {
    await adapter?.close()
    server?.kill('SIGKILL')
  })

  it('rejects within commandTimeoutMs + 500 ms while down, succeeds within 1 s of the restart', async () => {
    const { rateLimitStore, circuitBreakerStore, cacheStore } = adapter
    const work = load(
      (n) => {
        if (n % 3 === 0) return rateLimitStore.increment(`k${n % 50}`, 60)
        if (n % 3 === 1) return circuitBreakerStore.recordFailure(`c${n % 10}`)
        return cacheStore.put(`p${n % 20}`, new Response('x'), 60)
      },
      { phase: 'up' },
    )
    await sleep(300)
    work.phase = 'down'
    const killedAt = Date.now()
    server.kill('SIGKILL')
    await once(server, 'exit')
    await sleep(1000)
    server = await startRedisAt(port)
    const restarted = Date.now()
    work.phase = 'restarted'
    const recoveredMs = await firstSuccess(() => rateLimitStore.increment('probe', 60), 5000)
    await sleep(300)
    await work.done()

    // Calls still in flight at the kill may fail; only those finished before count.
    const up = work.outcomes.filter((o) => o.phase === 'up' && o.at < killedAt)
    const down = work.outcomes.filter((o) => o.phase === 'down' && !o.ok)
    const after = work.outcomes.filter((o) => o.phase === 'restarted' && o.ok && o.at - restarted > recoveredMs)
    const slowest = Math.max(...down.map((o) => o.ms))
    console.log(
      `redis kill: ${up.length} calls up, ${down.length} rejected while down (slowest ${slowest.toFixed(0)} ms), ` +
        `first success ${recoveredMs} ms after restart, ${after.length} successes after`,
    )
    expect(up.length).toBeGreaterThan(100)
    expect(up.every((o) => o.ok)).toBe(true)
    expect(down.length).toBeGreaterThan(10)
    expect(slowest).toBeLessThanOrEqual(commandTimeoutMs + 500)
    expect(down.every((o) => /^Redis(RateLimit|CircuitBreaker|Cache)Store: /.test(o.message))).toBe(true)
    expect(recoveredMs).toBeLessThanOrEqual(1000)
    expect(after.length).toBeGreaterThan(10)
  })
}, 30_000)

// ---- PostgreSQL on a private cluster ----

describe.skipIf(!PG_BIN)(
  'reliability: PostgreSQL (private cluster) killed under load and restarted',
  () => {
    const statementTimeoutMs = 500
    const connectTimeoutMs = 500
    let cluster, adapter

    beforeAll(async () => {
      cluster = await startCluster({ settings: { max_connections: 40 } })
      adapter = postgresAdapter({
        url: cluster.url,
        statementTimeoutMs,
        connectTimeoutMs,
        poolSize: 4,
        tablePrefix: 'kill_',
      })
      await adapter.ensureSchema()
    }, 60_000)

    afterAll(async () => {
      await adapter?.close()
      cluster?.stop()
    })

    it('rejects within the timeouts + 500 ms while down, succeeds again shortly after the restart', async () => {
      const { rateLimitStore, circuitBreakerStore, cacheStore } = adapter
      const work = load(
        (n) => {
          if (n % 3 === 0) return rateLimitStore.increment(`k${n % 50}`, 60)
          if (n % 3 === 1) return circuitBreakerStore.recordFailure(`c${n % 10}`)
          return cacheStore.get(`p${n % 20}`)
        },
        { phase: 'up' },
      )
      await sleep(300)
      work.phase = 'down'
      const killedAt = Date.now()
      cluster.stopImmediate() // the postmaster and every backend die at once (SIGQUIT), no shutdown checkpoint
      await sleep(1000)
      const restartBegan = Date.now()
      cluster.start() // crash recovery, then accepting connections (pg_ctl -w waits for that)
      const startMs = Date.now() - restartBegan
      const restarted = Date.now()
      work.phase = 'restarted'
      const recoveredMs = await firstSuccess(() => rateLimitStore.increment('probe', 60), 10_000)
      await sleep(300)
      await work.done()

      // Calls still in flight at the kill may fail; only those finished before count.
      const up = work.outcomes.filter((o) => o.phase === 'up' && o.at < killedAt)
      const down = work.outcomes.filter((o) => o.phase === 'down' && !o.ok)
      const after = work.outcomes.filter((o) => o.phase === 'restarted' && o.ok && o.at - restarted > recoveredMs)
      const slowest = Math.max(...down.map((o) => o.ms))
      console.log(
        `postgres kill: ${up.length} calls up, ${down.length} rejected while down (slowest ${slowest.toFixed(0)} ms), ` +
          `pg_ctl start took ${startMs} ms, first success ${recoveredMs} ms after it returned, ${after.length} successes after`,
      )
      expect(up.length).toBeGreaterThan(100)
      expect(up.every((o) => o.ok)).toBe(true)
      expect(down.length).toBeGreaterThan(10)
      expect(slowest).toBeLessThanOrEqual(Math.max(statementTimeoutMs, connectTimeoutMs) + 500)
      expect(down.every((o) => /^Postgres(RateLimit|CircuitBreaker|Cache)Store: /.test(o.message))).toBe(true)
      expect(recoveredMs).toBeLessThanOrEqual(2000)
      expect(after.length).toBeGreaterThan(10)
    })
  },
  90_000,
)
