// stats() (issue #16): every adapter and store counts the calls made, the
// errors, the cache's hits and misses, exactly; times them; and the
// network adapters say whether their server answers. Call tracing on
// node:diagnostics_channel publishes only while subscribed.
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { promisify } from 'node:util'
import dc from 'node:diagnostics_channel'
import { afterAll, describe, expect, it } from 'vitest'
import { isolateCircuitBreakerStore } from '../cloudflare/index.js'
import { MemoryCacheStore, TestAdapter, memoryAdapter, postgresAdapter, redisAdapter } from '../index.mjs'
import { DATABASE_URL, REDIS_URL } from './support/processes.mjs'
import { deleteRedisKeys, dropTables } from '../scripts/cleanup.mjs'
import { sparePort } from './support/redis-servers.mjs'

const RUN = `stats${randomBytes(4).toString('hex')}`
afterAll(async () => {
  await deleteRedisKeys(`${RUN}:`)
  await dropTables(`${RUN}_`)
})

/** A known mix of calls on `adapter`'s three stores; what its stats must then say. */
async function knownCalls(adapter) {
  for (let i = 0; i < 10; i++) await adapter.rateLimitStore.increment('a', 60)
  await adapter.rateLimitStore.increment(42, 60).catch(() => {})
  for (let i = 0; i < 3; i++) await adapter.circuitBreakerStore.recordFailure('c')
  await adapter.circuitBreakerStore.getState('c')
  await adapter.circuitBreakerStore.transition('c', 'sideways').catch(() => {})
  expect(await adapter.cacheStore.get('p')).toBeNull()
  await adapter.cacheStore.put('p', new Response('body'), 60)
  expect(await (await adapter.cacheStore.get('p')).text()).toBe('body')
  // Concurrent reads of one key (shared in flight by Redis's single flight)
  // each count as a call and a hit.
  await Promise.all(Array.from({ length: 5 }, () => adapter.cacheStore.get('p')))
  await adapter.cacheStore.delete('p')
  expect(await adapter.cacheStore.get('p')).toBeNull()
  return {
    rateLimit: { calls: 11, errors: 1, unavailable: 0, local: 0 },
    circuitBreaker: { calls: 5, errors: 1, unavailable: 0, local: 0 },
    cache: { calls: 10, errors: 0, unavailable: 0, local: 0, hits: 6, misses: 2 },
  }
}

function statsContract(name, createAdapter, { timesEveryCall }) {
  describe(`${name}: stats()`, () => {
    it('counts calls, errors, hits and misses exactly, per store and per adapter', async () => {
      const adapter = await createAdapter()
      try {
        const expected = await knownCalls(adapter)
        const stats = adapter.stats()
        for (const store of ['rateLimit', 'circuitBreaker', 'cache']) {
          expect(stats[store]).toMatchObject(expected[store])
          const { timed, p50, p99 } = stats[store].latencyMicros
          if (timesEveryCall) {
            // Calls refused before they were made (bad arguments) are not timed.
            expect(timed).toBe(expected[store].calls - (store === 'cache' ? 0 : 1))
            expect(p50).toBeGreaterThan(0)
            expect(p99).toBeGreaterThanOrEqual(p50)
          }
        }
        expect(adapter.rateLimitStore.stats()).toEqual(stats.rateLimit)
        expect(adapter.cacheStore.stats()).toEqual(stats.cache)
      } finally {
        await adapter.close()
      }
    })
  })
}

statsContract('memoryAdapter', () => memoryAdapter(), { timesEveryCall: false })
statsContract('TestAdapter', () => new TestAdapter(), { timesEveryCall: false })
statsContract('redisAdapter', () => redisAdapter({ url: REDIS_URL, prefix: `${RUN}:` }), { timesEveryCall: true })
statsContract(
  'postgresAdapter',
  async () => {
    const adapter = postgresAdapter({ url: DATABASE_URL, tablePrefix: `${RUN}_` })
    await adapter.ensureSchema()
    return adapter
  },
  { timesEveryCall: true },
)

describe('stats(): what else each backend reports', () => {
  it('memory stores report their size, and time one call in 64', async () => {
    const cache = new MemoryCacheStore()
    for (let i = 0; i < 640; i++) await cache.put(`k${i % 4}`, new Response('x'), 60)
    const stats = cache.stats()
    expect(stats).toMatchObject({ calls: 640, size: 4 })
    expect(stats.bytes).toBeGreaterThan(0)
    expect(stats.latencyMicros.timed).toBe(0) // put is not timed
    for (let i = 0; i < 640; i++) await cache.get('k0')
    expect(cache.stats().latencyMicros.timed).toBe(10)
    cache.destroy()
  })

  it('memory stores count what they evicted to make room', async () => {
    const cache = new MemoryCacheStore({ maxEntries: 2 })
    for (let i = 0; i < 5; i++) await cache.put(`k${i}`, new Response('x'), 60)
    expect(cache.stats()).toMatchObject({ calls: 5, size: 2, evictions: 3 })
    const circuits = memoryAdapter({ circuitBreaker: { maxKeys: 2 } })
    for (let i = 0; i < 5; i++) await circuits.circuitBreakerStore.recordFailure(`c${i}`)
    expect(circuits.stats().circuitBreaker).toMatchObject({ calls: 5, size: 2, evictions: 3 })
    cache.destroy()
    await circuits.close()
  })

  it("Redis's near cache counts the reads it answered", async () => {
    const adapter = redisAdapter({ url: REDIS_URL, prefix: `${RUN}:`, nearCache: true })
    try {
      await adapter.cacheStore.put('near', new Response('x'), 60)
      await adapter.cacheStore.get('near') // the copy is kept from here on
      const before = adapter.stats().nearCache.hits
      for (let i = 0; i < 3; i++) await adapter.cacheStore.get('near')
      expect(adapter.stats().nearCache).toMatchObject({ entries: 1, hits: before + 3 })
      expect(adapter.stats().cache).toMatchObject({ calls: 5, hits: 4 })
    } finally {
      await adapter.close()
    }
  })

  it('PostgreSQL reports its pool: the connections it may open and those open', async () => {
    const adapter = postgresAdapter({ url: DATABASE_URL, tablePrefix: `${RUN}_`, poolSize: 3 })
    try {
      expect(adapter.stats().pool).toEqual({ size: 3, open: 0, behindPooler: false })
      await adapter.ensureSchema()
      await Promise.all(Array.from({ length: 50 }, (_, i) => adapter.rateLimitStore.increment(`p${i}`, 60)))
      const { open } = adapter.stats().pool
      expect(open).toBeGreaterThanOrEqual(1)
      expect(open).toBeLessThanOrEqual(3)
    } finally {
      await adapter.close()
    }
  })

  it('a network adapter whose server is down counts the calls as unavailable, and says so', async () => {
    const closed = await sparePort()
    const adapters = [
      redisAdapter({ url: `redis://127.0.0.1:${closed}`, connectTimeoutMs: 300 }),
      postgresAdapter({ url: `postgres://postgres@127.0.0.1:${closed}/postgres`, connectTimeoutMs: 300 }),
    ]
    for (const adapter of adapters) {
      try {
        expect(adapter.stats().connection).toEqual({ state: 'unknown', outages: 0, failovers: 0 })
        await expect(adapter.rateLimitStore.increment('k', 60)).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' })
        await expect(adapter.rateLimitStore.increment('k', 60)).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' })
        const stats = adapter.stats()
        // Refused at once: no timeout.
        expect(stats.rateLimit).toMatchObject({ calls: 2, errors: 2, unavailable: 2, timeouts: 0 })
        expect(stats.connection).toEqual({ state: 'down', outages: 1, failovers: 0 })
      } finally {
        await adapter.close()
      }
    }
  })

  it("the Cloudflare entry's stores count their calls too", async () => {
    const circuits = isolateCircuitBreakerStore()
    const before = circuits.stats().calls
    await circuits.recordFailure(`cf-${RUN}`)
    await circuits.transition(`cf-${RUN}`, 'sideways').catch(() => {})
    expect(circuits.stats().calls).toBe(before + 2)
    expect(circuits.stats().errors).toBeGreaterThanOrEqual(1)
  })
})

describe('call tracing on node:diagnostics_channel', () => {
  it('publishes start and end of each network call while subscribed, nothing after', async () => {
    const adapter = redisAdapter({ url: REDIS_URL, prefix: `${RUN}:` })
    const seen = []
    const onStart = (message) => seen.push(['start', message.backend, message.operation, message.key])
    const onEnd = (message) => seen.push(['end', message.operation, message.error === undefined])
    dc.subscribe('stoma-native:call:start', onStart)
    dc.subscribe('stoma-native:call:end', onEnd)
    try {
      await adapter.rateLimitStore.increment('traced', 60)
      await adapter.circuitBreakerStore.getState('traced')
    } finally {
      dc.unsubscribe('stoma-native:call:start', onStart)
      dc.unsubscribe('stoma-native:call:end', onEnd)
    }
    await adapter.rateLimitStore.increment('untraced', 60)
    await adapter.close()
    expect(seen).toEqual([
      ['start', 'redis', 'increment', 'traced'],
      ['end', 'increment', true],
      ['start', 'redis', 'circuitGet', 'traced'],
      ['end', 'circuitGet', true],
    ])
  })
})

describe('examples/operations', () => {
  const run = async (name) =>
    (
      await promisify(execFile)(process.execPath, [`examples/operations/${name}`], {
        env: { ...process.env, REDIS_URL },
      })
    ).stdout

  it('prometheus.mjs exports the counts with prom-client', async () => {
    const out = await run('prometheus.mjs')
    expect(out).toContain('stoma_native_calls{store="rateLimit"} 100')
    expect(out).toContain('stoma_native_cache_misses{store="cache"} 1')
  })

  it('opentelemetry.mjs makes a span per Redis call', async () => {
    const out = await run('opentelemetry.mjs')
    expect(out).toContain("name: 'redis increment'")
    expect(out).toContain("name: 'redis circuitGet'")
  })
})
