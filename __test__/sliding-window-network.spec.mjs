// Sliding-window rate limiting (issue #18) on the network backends: the
// shared sliding-window contract (boundary case, model-based equality,
// 1,000 concurrent hits, quiet keys, bad input) on Redis standalone, a
// private Redis Cluster, PostgreSQL and PostgreSQL through PgBouncer in
// transaction mode; then what is particular to each: the data each keeps,
// fixed-window data left alone under the same key names, garbage under a
// key, a lost script cache, calls of one flush made at different instants,
// idle rows cleaned up, the store classes' `algorithm` option.
//
// The stores read our clock (the server is sent our time), frozen here with
// the hidden `__setTestClock` hook, so calls land at exact instants.
import { createRequire } from 'node:module'
import Redis from 'ioredis'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PostgresRateLimitStore, RedisRateLimitStore, postgresAdapter, redisAdapter } from '../index.mjs'
import { deleteRedisKeys, dropTables } from '../scripts/cleanup.mjs'
import { startPgbouncer } from '../scripts/pgbouncer.mjs'
import { sparePort, startCluster } from './support/redis-servers.mjs'
import { SlidingWindowModel, slidingWindowContract, windowAt } from './support/sliding-window.mjs'

const native = createRequire(import.meta.url)('../native.js')
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379'
const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres'
const SLIDING = { algorithm: 'sliding-window' }
const RUN = `swn${process.pid}_${Date.now().toString(36)}`

// vitest runs each file in a process of its own, so the frozen clock is
// this file's alone.
let hooksBefore
beforeAll(() => {
  hooksBefore = process.env.STOMA_NATIVE_TEST_HOOKS
  process.env.STOMA_NATIVE_TEST_HOOKS = '1'
})
afterAll(() => {
  native.__setTestClock(null)
  if (hooksBefore === undefined) delete process.env.STOMA_NATIVE_TEST_HOOKS
  else process.env.STOMA_NATIVE_TEST_HOOKS = hooksBefore
})
const setClock = (ms) => native.__setTestClock(ms)

/** Runs `body` with the clock frozen at `ms` (moved by `at(ms)`), letting it run again afterwards. */
async function frozenAt(ms, body) {
  setClock(ms)
  try {
    return await body(setClock)
  } finally {
    setClock(null)
  }
}

/** An aligned window start an hour or more ahead, for frozen-clock cases. */
const futureStart = (windowSeconds) => windowAt(Date.now() + 3_600_000, windowSeconds).start

const adapters = []
/** Closes every adapter made here, at the end. */
const kept = (adapter) => {
  adapters.push(adapter)
  return adapter
}
afterAll(async () => {
  for (const adapter of adapters) await adapter.close()
})

let prefixes = 0
const redisPrefix = () => `stoma-native-sliding-test:${RUN}:${++prefixes}:`
const tablePrefixes = []
const tablePrefix = (purpose) => {
  const prefix = `${RUN}_${purpose}_`
  tablePrefixes.push(prefix)
  return prefix
}

/** An adapter's sliding store, ready for the contract. */
const slidingStore = async (adapter) => {
  await adapter.ensureSchema?.()
  return kept(adapter).rateLimitStore
}

describe('redis standalone', () => {
  let io
  beforeAll(() => {
    io = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 })
  })
  afterAll(async () => {
    await deleteRedisKeys(`stoma-native-sliding-test:${RUN}:`, io)
    io.disconnect()
  })

  slidingWindowContract('redis', {
    createStore: () => slidingStore(redisAdapter({ url: REDIS_URL, prefix: redisPrefix(), rateLimit: SLIDING })),
    setClock,
    createWithOptions: (rateLimit) => kept(redisAdapter({ url: REDIS_URL, prefix: redisPrefix(), rateLimit })),
  })

  it("keeps one hash per key under <prefix>rls:<key> (start, hits, previous), living until the next window's end", async () => {
    const prefix = redisPrefix()
    const store = kept(redisAdapter({ url: REDIS_URL, prefix, rateLimit: SLIDING })).rateLimitStore
    const start = futureStart(10)
    await frozenAt(start + 2_000, async (at) => {
      await store.increment('k', 10)
      await store.increment('k', 10)
      expect(await io.hgetall(`${prefix}rls:k`)).toEqual({ start: String(start), hits: '2', previous: '0' })
      const ttl = await io.pttl(`${prefix}rls:k`)
      expect(ttl).toBeGreaterThan(0)
      expect(ttl).toBeLessThanOrEqual(start + 20_000 - (start + 2_000))
      at(start + 10_000 + 2_500)
      expect(await store.increment('k', 10)).toEqual({
        count: 1 + Math.floor((2 * 7_500) / 10_000),
        resetAt: start + 20_000,
      })
      expect(await io.hgetall(`${prefix}rls:k`)).toEqual({ start: String(start + 10_000), hits: '1', previous: '2' })
    })
    expect(await io.exists(`${prefix}rl:k`)).toBe(0)
  })

  it('fixed-window data under the same key name is left alone, and neither disturbs the other', async () => {
    const prefix = redisPrefix()
    const fixed = kept(redisAdapter({ url: REDIS_URL, prefix })).rateLimitStore
    const sliding = kept(redisAdapter({ url: REDIS_URL, prefix, rateLimit: SLIDING })).rateLimitStore
    const model = new SlidingWindowModel()
    const start = futureStart(60)
    await frozenAt(start + 1_000, async () => {
      for (let i = 1; i <= 5; i++) {
        expect((await fixed.increment('same', 60)).count).toBe(i)
        expect(await sliding.increment('same', 60)).toEqual(model.increment('same', 60, start + 1_000))
      }
    })
    expect(await io.get(`${prefix}rl:same`)).toBe('5')
    expect(await io.hget(`${prefix}rls:same`, 'hits')).toBe('5')
  })

  it('garbage under a key (another type, fields that are not counts) starts a fresh window', async () => {
    const prefix = redisPrefix()
    const store = kept(redisAdapter({ url: REDIS_URL, prefix, rateLimit: SLIDING })).rateLimitStore
    const start = futureStart(60)
    await io.set(`${prefix}rls:string`, 'not a hash')
    await io.rpush(`${prefix}rls:list`, 'x')
    await io.hset(`${prefix}rls:fields`, { start: String(start), hits: 'many', previous: '3' })
    await io.hset(`${prefix}rls:previous`, { start: String(start - 60_000), hits: '-4', previous: '0' })
    await frozenAt(start + 30_000, async () => {
      for (const key of ['string', 'list', 'fields', 'previous']) {
        expect(await store.increment(key, 60)).toEqual({ count: 1, resetAt: start + 60_000 })
        expect(await store.increment(key, 60)).toEqual({ count: 2, resetAt: start + 60_000 })
      }
    })
  })

  it('counts on after the server loses its script cache (NOSCRIPT, resent with the source)', async () => {
    const prefix = redisPrefix()
    const store = kept(redisAdapter({ url: REDIS_URL, prefix, rateLimit: SLIDING })).rateLimitStore
    await frozenAt(futureStart(60), async () => {
      expect((await store.increment('k', 60)).count).toBe(1)
      await io.script('FLUSH')
      expect((await store.increment('k', 60)).count).toBe(2)
      expect((await store.increment('k', 60)).count).toBe(3)
    })
  })

  it('calls of one flush made at different instants each count at their own (they merge only at one instant)', async () => {
    const prefix = redisPrefix()
    const store = kept(redisAdapter({ url: REDIS_URL, prefix, rateLimit: SLIDING })).rateLimitStore
    const model = new SlidingWindowModel()
    const start = futureStart(1)
    // The same turn of the event loop: one flush, the clock moved between calls.
    const instants = [start + 900, start + 900, start + 999, start + 1_000, start + 1_000, start + 1_400, start + 2_100]
    const calls = []
    try {
      for (const now of instants) {
        setClock(now)
        calls.push(store.increment('k', 1))
      }
    } finally {
      setClock(null)
    }
    const answers = await Promise.all(calls)
    expect(answers).toEqual(instants.map((now) => model.increment('k', 1, now)))
  })

  it('RedisRateLimitStore takes algorithm, refusing a bad one or a misspelt key', async () => {
    const prefix = redisPrefix()
    const store = new RedisRateLimitStore({ url: REDIS_URL, prefix, algorithm: 'sliding-window' })
    try {
      await frozenAt(futureStart(60), async () => {
        await store.increment('k', 60)
      })
      expect(await io.hget(`${prefix}rls:k`, 'hits')).toBe('1')
    } finally {
      store.destroy()
    }
    expect(() => new RedisRateLimitStore({ url: REDIS_URL, algorithm: 'sliding' })).toThrow(RangeError)
    expect(() => new RedisRateLimitStore({ url: REDIS_URL, algorithm: 'sliding' })).toThrow(/algorithm/)
    expect(() => new RedisRateLimitStore({ url: REDIS_URL, algoritm: 'sliding-window' })).toThrow(TypeError)
    expect(() => new RedisRateLimitStore({ url: REDIS_URL, algoritm: 'sliding-window' })).toThrow(/algoritm/)
    expect(() => redisAdapter({ url: REDIS_URL, algorithm: 'sliding-window' })).toThrow(/algorithm/)
  })
})

describe('redis cluster', () => {
  let cluster
  let seed
  beforeAll(async () => {
    cluster = await startCluster()
    seed = cluster.url(cluster.nodes[0].port)
  }, 60_000)
  afterAll(async () => {
    await cluster?.stop()
  })

  slidingWindowContract('redis cluster', {
    createStore: () =>
      slidingStore(redisAdapter({ cluster: { nodes: [seed] }, prefix: redisPrefix(), rateLimit: SLIDING })),
    setClock,
  })

  it('counts exactly on keys spread over every primary, each key one hash on the primary serving it', async () => {
    const prefix = redisPrefix()
    const store = kept(redisAdapter({ cluster: { nodes: [seed] }, prefix, rateLimit: SLIDING })).rateLimitStore
    const keys = Array.from({ length: 30 }, (_, i) => `k${i}`)
    const answers = await frozenAt(futureStart(60) + 5, () =>
      Promise.all(keys.flatMap((key) => Array.from({ length: 4 }, () => store.increment(key, 60)))),
    )
    // Each count once per key, but not always in the order the calls were
    // made: a call the cluster redirects (MOVED, ASK) or asks to send again
    // (TRYAGAIN) goes out again and may run after later ones.
    for (const [i] of keys.entries()) {
      const counts = answers.slice(i * 4, i * 4 + 4).map((a) => a.count)
      expect(counts.sort((a, b) => a - b)).toEqual([1, 2, 3, 4])
    }
    const ports = new Set()
    for (const key of keys) {
      const port = await cluster.portOf(`${prefix}rls:${key}`)
      ports.add(port)
      const node = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 1 })
      try {
        expect(await node.hget(`${prefix}rls:${key}`, 'hits')).toBe('4')
      } finally {
        node.disconnect()
      }
    }
    expect([...ports].sort()).toEqual((await cluster.primaryPorts()).sort())
  })
})

let admin // straight to PostgreSQL, to read what the stores wrote
beforeAll(() => {
  admin = new pg.Pool({ connectionString: DATABASE_URL, max: 4 })
})
afterAll(async () => {
  for (const adapter of adapters.splice(0)) await adapter.close()
  for (const prefix of tablePrefixes) await dropTables(prefix, admin)
  await admin.end()
})

describe('postgres', () => {
  slidingWindowContract('postgres', {
    createStore: () => slidingStore(postgresAdapter({ tablePrefix: tablePrefix('contract'), rateLimit: SLIDING })),
    setClock,
    createWithOptions: (rateLimit) => kept(postgresAdapter({ tablePrefix: tablePrefix('options'), rateLimit })),
  })

  it('keeps a row per key in <tablePrefix>sliding_windows; fixed windows of the same key name stay in rate_limits', async () => {
    const prefix = tablePrefix('data')
    const fixedAdapter = kept(postgresAdapter({ tablePrefix: prefix }))
    await fixedAdapter.ensureSchema()
    const fixed = fixedAdapter.rateLimitStore
    const sliding = kept(postgresAdapter({ tablePrefix: prefix, rateLimit: SLIDING })).rateLimitStore
    const model = new SlidingWindowModel()
    const start = futureStart(60)
    await frozenAt(start + 1_000, async (at) => {
      for (let i = 1; i <= 3; i++) {
        expect((await fixed.increment('same', 60)).count).toBe(i)
        expect(await sliding.increment('same', 60)).toEqual(model.increment('same', 60, start + 1_000))
      }
      at(start + 61_000)
      expect(await sliding.increment('same', 60)).toEqual(model.increment('same', 60, start + 61_000))
    })
    const { rows: fixedRows } = await admin.query(`SELECT key, count FROM ${prefix}rate_limits`)
    expect(fixedRows).toEqual([{ key: 'same', count: 3 }])
    const { rows } = await admin.query(
      `SELECT key, window_start::text, hits::text, previous_hits::text, expires_at::text FROM ${prefix}sliding_windows`,
    )
    expect(rows).toEqual([
      {
        key: 'same',
        window_start: String(start + 60_000),
        hits: '1',
        previous_hits: '3',
        expires_at: String(start + 180_000),
      },
    ])
  })

  it('cleanup() deletes the rows idle for two windows, and only those', async () => {
    const prefix = tablePrefix('cleanup')
    const adapter = kept(postgresAdapter({ tablePrefix: prefix, rateLimit: SLIDING }))
    await adapter.ensureSchema()
    const start = futureStart(10)
    await frozenAt(start, async (at) => {
      await adapter.rateLimitStore.increment('old', 10)
      at(start + 15_000)
      await adapter.rateLimitStore.increment('recent', 10)
      // 'old' is idle from start + 20 s (its window and the next are over); 'recent' until start + 30 s.
      at(start + 20_000)
      expect(await adapter.rateLimitStore.cleanup()).toBe(1)
    })
    const { rows } = await admin.query(`SELECT key FROM ${prefix}sliding_windows`)
    expect(rows).toEqual([{ key: 'recent' }])
  })

  it('PostgresRateLimitStore takes algorithm; without ensureSchema() it says to call it', async () => {
    const prefix = tablePrefix('store')
    const store = new PostgresRateLimitStore({ url: DATABASE_URL, tablePrefix: prefix, algorithm: 'sliding-window' })
    try {
      await expect(store.increment('k', 60)).rejects.toThrow(
        new RegExp(`table ${prefix}sliding_windows does not exist .*: call ensureSchema\\(\\) on the adapter first$`),
      )
      const adapter = kept(postgresAdapter({ url: DATABASE_URL, tablePrefix: prefix }))
      await adapter.ensureSchema()
      await frozenAt(futureStart(60), async () => {
        expect(await store.increment('k', 60)).toMatchObject({ count: 1 })
        expect(await store.increment('k', 60)).toMatchObject({ count: 2 })
      })
      const { rows } = await admin.query(`SELECT hits::int FROM ${prefix}sliding_windows WHERE key = 'k'`)
      expect(rows).toEqual([{ hits: 2 }])
    } finally {
      await store.close()
    }
    expect(() => new PostgresRateLimitStore({ algorithm: 'sliding' })).toThrow(RangeError)
    expect(() => new PostgresRateLimitStore({ algorithm: 'sliding' })).toThrow(/algorithm/)
    expect(() => new PostgresRateLimitStore({ algoritm: 'sliding-window' })).toThrow(TypeError)
    expect(() => new PostgresRateLimitStore({ algoritm: 'sliding-window' })).toThrow(/algoritm/)
  })
})

describe('postgres through pgbouncer (transaction pooling)', () => {
  let bouncer
  beforeAll(async () => {
    bouncer = await startPgbouncer({ poolSize: 5 })
  }, 180_000) // apt-get may have to install pgbouncer first
  afterAll(async () => {
    await bouncer?.stop()
  })

  slidingWindowContract('postgres through pgbouncer', {
    createStore: () =>
      slidingStore(postgresAdapter({ url: bouncer.url, tablePrefix: tablePrefix('bouncer'), rateLimit: SLIDING })),
    setClock,
  })
})

describe("sliding-window: whenUnavailable: 'memory' keeps the algorithm", () => {
  it('a sliding store whose server is away is answered by a sliding memory store', async () => {
    const closed = await sparePort()
    const options = { whenUnavailable: 'memory', rateLimit: SLIDING, connectTimeoutMs: 300 }
    const adapters = [
      redisAdapter({ url: `redis://127.0.0.1:${closed}`, ...options }),
      postgresAdapter({ url: `postgres://postgres@127.0.0.1:${closed}/postgres`, ...options }),
    ]
    const start = windowAt(Date.now(), 1).start + 10_000
    for (const adapter of adapters) {
      try {
        await frozenAt(start, async (at) => {
          expect((await adapter.rateLimitStore.increment('k', 1)).count).toBe(1)
          at(start + 900)
          for (let i = 0; i < 9; i++) await adapter.rateLimitStore.increment('k', 1)
          at(start + 1050)
          // Sliding: 1 + ⌊10 × 0.95⌋; a fixed window would have started again at 1.
          expect((await adapter.rateLimitStore.increment('k', 1)).count).toBe(10)
        })
        expect(adapter.stats().fallback).toMatchObject({ active: true })
      } finally {
        await adapter.close()
      }
    }
  })
})
