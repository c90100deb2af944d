// whenUnavailable: 'memory' (issue #16): a Stoma gateway whose rate limit
// lives in Redis or PostgreSQL keeps limiting while the server is killed,
// hung (SIGSTOP) or stopped, answering from memory at once after the first
// failure, and goes back to the server within 2 s of its return. The
// servers are private: a redis-server and a PostgreSQL cluster these tests
// start, kill and stop by pid.
import dc from 'node:diagnostics_channel'
import { rateLimit, createGateway } from '@homegrower-club/stoma'
import pg from 'pg'
import Redis from 'ioredis'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { postgresAdapter, redisAdapter } from '../../index.mjs'
import { startCluster } from '../support/postgres-servers.mjs'
import { sleep } from '../support/processes.mjs'
import { kill, sparePort, startRedisAt } from '../support/redis-servers.mjs'

const MAX = 3
// A request answered from memory takes well under a millisecond; this bound
// leaves room for a loaded machine, not for waiting on a dead server.
const LOCAL_ANSWER_MS = 50

/** A gateway allowing MAX requests a minute per client, on `adapter`. */
function limitedGateway(adapter) {
  const gateway = createGateway({
    adapter,
    routes: [
      {
        path: '/limited',
        pipeline: {
          policies: [
            rateLimit({ max: MAX, windowSeconds: 60, store: adapter.rateLimitStore, keyBy: () => 'client-1' }),
          ],
          upstream: { type: 'handler', handler: () => new Response('ok') },
        },
      },
    ],
  })
  return async () => {
    const started = performance.now()
    const { status } = await gateway.app.request('/limited')
    return { status, ms: performance.now() - started }
  }
}

/** `count` requests one after another: their statuses and the slowest answer's ms. */
async function requests(request, count) {
  const answers = []
  for (let i = 0; i < count; i++) answers.push(await request())
  return { statuses: answers.map((a) => a.status), slowestMs: Math.max(...answers.map((a) => a.ms)) }
}

/**
 * The outage as the gateway sees it: the first request after the failure
 * may wait for it to show (a hung server: one commandTimeoutMs), then every
 * request is answered locally at once, and the limit holds — counted from
 * the first request of the outage, as the local counts start empty.
 */
async function expectLimitedLocally(request) {
  const first = await request()
  expect(first.status).toBe(200)
  const rest = await requests(request, MAX + 2)
  console.log(`outage: first answer ${first.ms.toFixed(1)} ms, then at most ${rest.slowestMs.toFixed(2)} ms each`)
  expect(rest.statuses).toEqual([200, 200, 429, 429, 429])
  expect(rest.slowestMs).toBeLessThan(LOCAL_ANSWER_MS)
}

/**
 * What the adapter says after expectLimitedLocally on a fresh adapter (2
 * requests before the outage): the first call of the outage failed on the
 * server, it and the 5 after it were answered from memory; and a cache call
 * misses rather than failing the request.
 */
async function expectAnsweredLocally(adapter) {
  expect(await adapter.cacheStore.get('anything')).toBeNull()
  expect(adapter.stats()).toMatchObject({
    rateLimit: { calls: 8, errors: 1, unavailable: 1, local: 6 },
    connection: { state: 'down', outages: 1 },
    fallback: { active: true, entered: 1 },
  })
}

/** Requests every 50 ms until `reached()` says the server saw one; the ms that took. */
async function msUntilBack(request, reached, limitMs = 5000) {
  const started = Date.now()
  while (Date.now() - started < limitMs) {
    await request()
    if (await reached()) return Date.now() - started
    await sleep(50)
  }
  throw new Error(`the server saw no call within ${limitMs} ms of its return`)
}

describe("whenUnavailable: 'memory' on Redis", () => {
  const prefix = 'fallback:'
  const counted = `${prefix}rl:client-1`
  let port, server, adapter, request
  beforeAll(async () => {
    port = await sparePort()
    server = await startRedisAt(port)
  })
  afterEach(async () => {
    await adapter?.close()
    adapter = undefined
  })
  afterAll(async () => {
    if (server.signalCode === null && server.exitCode === null) server.kill('SIGCONT')
    await kill(server)
  })

  /** `command` run on the private server by a short-lived client. */
  async function ask(...command) {
    const client = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0 })
    client.on('error', () => {})
    try {
      await client.connect()
      return await client.call(...command)
    } finally {
      client.disconnect()
    }
  }

  /** What Redis counted for the gateway's client (0 if nothing). */
  const countInRedis = async () => Number(await ask('GET', counted))

  function start() {
    adapter = redisAdapter({
      url: `redis://127.0.0.1:${port}`,
      prefix,
      whenUnavailable: 'memory',
      commandTimeoutMs: 300,
      connectTimeoutMs: 300,
    })
    request = limitedGateway(adapter)
  }

  it('keeps limiting while Redis is killed, and counts in Redis again within 2 s of its restart', async () => {
    const events = []
    const onConnection = ({ backend, state }) => events.push(`${backend} ${state}`)
    const onFallback = ({ backend, active }) => events.push(`${backend} fallback ${active ? 'on' : 'off'}`)
    dc.subscribe('stoma-native:connection', onConnection)
    dc.subscribe('stoma-native:fallback', onFallback)
    try {
      start()
      expect((await requests(request, 2)).statuses).toEqual([200, 200])
      expect(await countInRedis()).toBe(2)

      await kill(server)
      await expectLimitedLocally(request)
      await expectAnsweredLocally(adapter)

      server = await startRedisAt(port)
      const ms = await msUntilBack(request, async () => (await countInRedis()) > 0)
      console.log(`Redis restarted: calls reached it again after ${ms} ms`)
      expect(ms).toBeLessThan(2000)
      expect(adapter.stats().fallback).toEqual({ active: false, entered: 1 })
      // Published in the order they happened, on the kill and the restart.
      expect(events).toEqual(['redis up', 'redis down', 'redis fallback on', 'redis up', 'redis fallback off'])
    } finally {
      dc.unsubscribe('stoma-native:connection', onConnection)
      dc.unsubscribe('stoma-native:fallback', onFallback)
    }
  })

  it('keeps limiting while Redis hangs (SIGSTOP), after one commandTimeoutMs, and recovers after SIGCONT', async () => {
    start()
    await adapter.rateLimitStore.increment('warm', 60)
    await ask('DEL', counted)
    server.kill('SIGSTOP')
    try {
      await expectLimitedLocally(request)
      // The first call of the outage waited out commandTimeoutMs.
      expect(adapter.stats().rateLimit).toMatchObject({ unavailable: 1, timeouts: 1, local: 6 })
    } finally {
      server.kill('SIGCONT')
    }
    // The call that timed out ran once Redis resumed (it was not resent):
    // only counts past it show the gateway's calls reaching Redis again.
    const resumed = await countInRedis()
    expect(resumed).toBe(1)
    const ms = await msUntilBack(request, async () => (await countInRedis()) > resumed)
    console.log(`Redis resumed: calls reached it again after ${ms} ms`)
    expect(ms).toBeLessThan(2000)
  })

  it("rejects with code STORE_UNAVAILABLE by default ('reject'), as before", async () => {
    const closed = await sparePort()
    const rejecting = redisAdapter({ url: `redis://127.0.0.1:${closed}`, connectTimeoutMs: 300 })
    try {
      const error = await rejecting.rateLimitStore.increment('k', 60).catch((e) => e)
      expect(error).toBeInstanceOf(Error)
      expect(error.code).toBe('STORE_UNAVAILABLE')
      expect(error.message).toMatch(/RedisRateLimitStore|cannot connect/)
    } finally {
      await rejecting.close()
    }
  })

  it('refuses a whenUnavailable it does not know, naming it', () => {
    expect(() => redisAdapter({ whenUnavailable: 'memroy' })).toThrow(RangeError)
    expect(() => redisAdapter({ whenUnavailable: 'memroy' })).toThrow(/whenUnavailable/)
    expect(() => redisAdapter({ whenUnavailable: true })).toThrow(TypeError)
  })
})

describe("whenUnavailable: 'memory' on PostgreSQL", () => {
  const tablePrefix = 'fallback_'
  let cluster, adapter, request
  beforeAll(async () => {
    cluster = await startCluster()
  })
  afterAll(async () => {
    await adapter?.close()
    cluster?.stop()
  })

  async function countInPostgres() {
    const client = new pg.Client({ connectionString: cluster.url, connectionTimeoutMillis: 1000 })
    try {
      await client.connect()
      const { rows } = await client.query(`SELECT count FROM ${tablePrefix}rate_limits WHERE key = $1`, ['client-1'])
      return rows[0]?.count ?? null
    } catch {
      return null
    } finally {
      await client.end().catch(() => {})
    }
  }

  it('keeps limiting while PostgreSQL is stopped (immediate), and counts in it again within 2 s of its start', async () => {
    adapter = postgresAdapter({
      url: cluster.url,
      tablePrefix,
      whenUnavailable: 'memory',
      connectTimeoutMs: 300,
      statementTimeoutMs: 300,
    })
    await adapter.ensureSchema()
    request = limitedGateway(adapter)
    expect((await requests(request, 2)).statuses).toEqual([200, 200])
    expect(await countInPostgres()).toBe(2)

    cluster.stopImmediate()
    await expectLimitedLocally(request)
    await expectAnsweredLocally(adapter)

    cluster.start()
    // Stopped immediately, the server forgot nothing committed: the count
    // goes on from 2 once calls reach it again.
    const ms = await msUntilBack(request, async () => (await countInPostgres()) > 2)
    console.log(`PostgreSQL started: calls reached it again after ${ms} ms`)
    expect(ms).toBeLessThan(2000)
  })

  it("rejects with code STORE_UNAVAILABLE by default ('reject')", async () => {
    const closed = await sparePort()
    const rejecting = postgresAdapter({
      url: `postgres://postgres@127.0.0.1:${closed}/postgres`,
      connectTimeoutMs: 300,
    })
    try {
      const error = await rejecting.rateLimitStore.increment('k', 60).catch((e) => e)
      expect(error.code).toBe('STORE_UNAVAILABLE')
      expect(error.message).toMatch(/PostgresRateLimitStore/)
    } finally {
      await rejecting.close()
    }
  })

  it('refuses a whenUnavailable it does not know, naming it', () => {
    expect(() => postgresAdapter({ whenUnavailable: 'memroy' })).toThrow(RangeError)
    expect(() => postgresAdapter({ whenUnavailable: 'memroy' })).toThrow(/whenUnavailable/)
  })
})
