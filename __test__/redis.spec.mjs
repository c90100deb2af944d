// The Redis stores against a real Redis server (REDIS_URL, or the local
// default): the shared store contract, data compatibility with Stoma's own
// redisAdapter (over ioredis) in both directions, atomicity, garbage
// tolerance, and behaviour when the server is down or comes back.
// Every test works under its own key prefix and deletes it afterwards.
import { execFileSync, spawn } from 'node:child_process'
import { rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import net from 'node:net'
import { fileURLToPath } from 'node:url'
import { redisAdapter as stomaRedisAdapter } from '@homegrower-club/stoma/adapters/redis'
import Redis from 'ioredis'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { RedisCacheStore, RedisCircuitBreakerStore, RedisRateLimitStore, redisAdapter } from '../index.mjs'
import { storeContract } from './support/store-contract.mjs'
import { makeCertificates, sparePort, startRedis, startRedisAt } from './support/redis-servers.mjs'
import { deleteRedisKeys } from '../scripts/cleanup.mjs'

const url = process.env.REDIS_URL || 'redis://127.0.0.1:6379'
const runPrefix = `stoma-native-test:${process.pid}:${Date.now()}:`
const entry = fileURLToPath(new URL('../index.js', import.meta.url))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const require = createRequire(import.meta.url)

let prefixes = 0
/** A fresh key prefix under this run's. */
const newPrefix = () => `${runPrefix}${++prefixes}:`

/** Deletes every key under `prefix`. */
const dropPrefix = (client, prefix) => deleteRedisKeys(prefix, client)

let client // ioredis, for Stoma's adapter and for inspecting raw data
beforeAll(() => {
  client = new Redis(url, { lazyConnect: false, maxRetriesPerRequest: 1 })
})
afterAll(async () => {
  await dropPrefix(client, runPrefix)
  client.disconnect()
})

storeContract('redis', {
  createStores: () => redisAdapter({ url, prefix: newPrefix() }),
  close: (adapter) => adapter.close(),
})

// The same contract with polling off: every answer then comes through the
// I/O thread's watcher, the path a slow or remote server takes.
storeContract('redis (spinMicros 0)', {
  createStores: () => redisAdapter({ url, prefix: newPrefix(), spinMicros: 0 }),
  close: (adapter) => adapter.close(),
})

describe('redis: same data as Stoma’s redisAdapter, both ways', () => {
  let prefix, ours, stoma
  beforeAll(() => {
    prefix = newPrefix()
    ours = redisAdapter({ url, prefix })
    stoma = stomaRedisAdapter({ client, prefix })
  })
  afterAll(() => ours.close())

  it('rate limit: one counter, whichever side counts', async () => {
    const first = await stoma.rateLimitStore.increment('shared', 60)
    expect((await ours.rateLimitStore.increment('shared', 60)).count).toBe(2)
    const third = await stoma.rateLimitStore.increment('shared', 60)
    expect(third.count).toBe(3)
    expect(Math.abs(third.resetAt - first.resetAt)).toBeLessThanOrEqual(1000)

    const mine = await ours.rateLimitStore.increment('ours-first', 60)
    const theirs = await stoma.rateLimitStore.increment('ours-first', 60)
    expect(theirs.count).toBe(2)
    expect(Math.abs(theirs.resetAt - mine.resetAt)).toBeLessThanOrEqual(1000)
    expect(await client.get(`${prefix}rl:ours-first`)).toBe('2')
    expect(await client.ttl(`${prefix}rl:ours-first`)).toBeGreaterThan(55)
  })

  it('circuit breaker: the same JSON snapshot, read and written by both', async () => {
    await stoma.circuitBreakerStore.recordFailure('cb')
    await stoma.circuitBreakerStore.recordSuccess('cb')
    const opened = await stoma.circuitBreakerStore.transition('cb', 'open')
    expect(await ours.circuitBreakerStore.getState('cb')).toEqual(opened)

    await ours.circuitBreakerStore.recordFailure('cb')
    const halfOpen = await ours.circuitBreakerStore.transition('cb', 'half-open')
    expect(halfOpen).toMatchObject({ state: 'half-open', failureCount: 2, successCount: 0 })
    expect(await stoma.circuitBreakerStore.getState('cb')).toEqual(halfOpen)
    // Byte for byte what Stoma would write, with Stoma's 24-hour expiry.
    expect(await client.get(`${prefix}cb:cb`)).toBe(JSON.stringify(halfOpen))
    expect(await client.ttl(`${prefix}cb:cb`)).toBeGreaterThan(86_390)

    await stoma.circuitBreakerStore.reset('cb')
    expect(await ours.circuitBreakerStore.getState('cb')).toMatchObject({ state: 'closed', failureCount: 0 })
    await ours.circuitBreakerStore.recordFailure('cb')
    await ours.circuitBreakerStore.reset('cb')
    expect(await stoma.circuitBreakerStore.getState('cb')).toMatchObject({ state: 'closed', failureCount: 0 })
  })

  it('cache: binary bodies, status and headers survive either way, byte for byte', async () => {
    const headers = [
      ['content-type', 'application/octet-stream'],
      ['set-cookie', 'a=1'],
      ['set-cookie', 'b=2'],
      ['x-latin1', 'caf\u00e9'],
    ]
    for (const size of [0, 1, 2, 3, 64 * 1024 + 1]) {
      const body = randomBytes(size)
      await stoma.cacheStore.put(`s${size}`, new Response(body, { status: 203, headers }), 60)
      const hit = await ours.cacheStore.get(`s${size}`)
      expect(hit.status).toBe(203)
      expect([...hit.headers]).toEqual([...new Headers(headers)])
      expect(Buffer.from(await hit.arrayBuffer()).equals(body)).toBe(true)

      await ours.cacheStore.put(`o${size}`, new Response(body, { status: 203, headers }), 60)
      const theirs = await stoma.cacheStore.get(`o${size}`)
      expect(theirs.status).toBe(203)
      expect([...theirs.headers]).toEqual([...new Headers(headers)])
      expect(Buffer.from(await theirs.arrayBuffer()).equals(body)).toBe(true)
    }
    expect(await client.ttl(`${prefix}cache:o0`)).toBeGreaterThan(55)

    await ours.cacheStore.put('no-body', new Response(null, { status: 304, headers: { etag: '"v1"' } }), 60)
    const notModified = await stoma.cacheStore.get('no-body')
    expect(notModified.status).toBe(304)
    expect(notModified.headers.get('etag')).toBe('"v1"')

    expect(await stoma.cacheStore.delete('o1')).toBe(true)
    expect(await ours.cacheStore.get('o1')).toBeNull()
    expect(await ours.cacheStore.delete('s1')).toBe(true)
    expect(await stoma.cacheStore.get('s1')).toBeNull()
  })
})

describe('redis: calls of one key in one flush run as one script call', () => {
  let server
  let redis
  beforeAll(async () => {
    server = await startRedis()
    redis = new Redis(server.port, '127.0.0.1')
  })
  afterAll(async () => {
    redis.disconnect()
    await server.stop()
  })

  /** EVALSHA and EVAL calls the server ran, from its command statistics. */
  async function scriptCalls() {
    const stats = await redis.info('commandstats')
    return [...stats.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0)
  }

  it('1,000 concurrent increments of one key hand out 1..1,000 exactly once, in few script calls', async () => {
    const adapter = redisAdapter({ url: server.url, prefix: 'hot:' })
    try {
      await adapter.rateLimitStore.increment('warm', 60)
      await redis.config('RESETSTAT')
      const hits = await Promise.all(Array.from({ length: 1000 }, () => adapter.rateLimitStore.increment('hot', 60)))
      const calls = await scriptCalls()
      expect(hits.map((hit) => hit.count).sort((a, b) => a - b)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1))
      expect(new Set(hits.map((hit) => hit.resetAt)).size).toBe(1)
      expect(await redis.get('hot:rl:hot')).toBe('1000')
      console.log(`1,000 increments of one key: ${calls} script calls`)
      expect(calls).toBeLessThan(100)
    } finally {
      await adapter.close()
    }
  })

  it('failures and successes of one circuit add up the same way; other keys and windows stay apart', async () => {
    const adapter = redisAdapter({ url: server.url, prefix: 'hot:' })
    try {
      await redis.config('RESETSTAT')
      const calls = Array.from({ length: 600 }, (_, i) => {
        if (i % 3 === 0) return adapter.circuitBreakerStore.recordFailure('cb')
        if (i % 3 === 1) return adapter.circuitBreakerStore.recordSuccess('cb')
        return adapter.rateLimitStore.increment(`k${i % 2}`, i % 2 === 0 ? 60 : 30)
      })
      const answers = await Promise.all(calls)
      const failures = answers.filter((_, i) => i % 3 === 0).map((a) => a.failureCount)
      const successes = answers.filter((_, i) => i % 3 === 1).map((a) => a.successCount)
      const sorted = (values) => [...values].sort((a, b) => a - b)
      expect(sorted(failures)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1))
      expect(sorted(successes)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1))
      expect(await adapter.circuitBreakerStore.getState('cb')).toMatchObject({ failureCount: 200, successCount: 200 })
      // k0 is only ever counted in 60 s windows, k1 in 30 s ones: two keys.
      const byKey = { k0: [], k1: [] }
      for (const [i, answer] of answers.entries()) if (i % 3 === 2) byKey[`k${i % 2}`].push(answer.count)
      expect(sorted(byKey.k0)).toEqual(Array.from({ length: byKey.k0.length }, (_, i) => i + 1))
      expect(sorted(byKey.k1)).toEqual(Array.from({ length: byKey.k1.length }, (_, i) => i + 1))
      expect(await scriptCalls()).toBeLessThan(200)
    } finally {
      await adapter.close()
    }
  })
})

describe('redis: beyond the anchor', () => {
  let prefix, ours
  beforeAll(() => {
    prefix = newPrefix()
    ours = redisAdapter({ url, prefix })
  })
  afterAll(() => ours.close())

  it('1,000 concurrent recordFailure on one key count 1,000 failures', async () => {
    const snapshots = await Promise.all(
      Array.from({ length: 1000 }, () => ours.circuitBreakerStore.recordFailure('hot')),
    )
    expect((await ours.circuitBreakerStore.getState('hot')).failureCount).toBe(1000)
    expect(snapshots.map((s) => s.failureCount).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 1000 }, (_, i) => i + 1),
    )
  })

  it('reads garbage under a cache key as a miss', async () => {
    const garbage = [
      'not json',
      '[]',
      '{"status":200,"headers":[],"body":"%%%"}',
      '{"status":"200","headers":[],"body":""}',
      '{"status":200,"headers":[["bad name","v"]],"body":""}',
      '{"status":200,"headers":"nope","body":""}',
    ]
    for (const [i, value] of garbage.entries()) {
      await client.set(`${prefix}cache:g${i}`, value)
      expect(await ours.cacheStore.get(`g${i}`)).toBeNull()
    }
    await client.hset(`${prefix}cache:hash`, 'field', 'value')
    expect(await ours.cacheStore.get('hash')).toBeNull()
    // …and a put replaces it.
    await ours.cacheStore.put('hash', new Response('fresh'), 60)
    expect(await (await ours.cacheStore.get('hash')).text()).toBe('fresh')
  })

  it('reads garbage under a circuit key as a fresh closed circuit, and writes over it', async () => {
    const garbage = [
      'not json',
      'null',
      '[1,2]',
      '{"state":"ajar","failureCount":0,"successCount":0,"lastFailureTime":0,"lastStateChange":0}',
      '{"state":"open","failureCount":"3","successCount":0,"lastFailureTime":0,"lastStateChange":0}',
      '{"state":"open","failureCount":-1,"successCount":0,"lastFailureTime":0,"lastStateChange":0}',
      '{"state":"open"}',
    ]
    for (const [i, value] of garbage.entries()) {
      await client.set(`${prefix}cb:g${i}`, value)
      expect(await ours.circuitBreakerStore.getState(`g${i}`)).toMatchObject({
        state: 'closed',
        failureCount: 0,
        successCount: 0,
        lastFailureTime: 0,
      })
      expect((await ours.circuitBreakerStore.recordFailure(`g${i}`)).failureCount).toBe(1)
      expect(JSON.parse(await client.get(`${prefix}cb:g${i}`))).toMatchObject({ state: 'closed', failureCount: 1 })
    }
    await client.rpush(`${prefix}cb:list`, 'x')
    expect(await ours.circuitBreakerStore.getState('list')).toMatchObject({ state: 'closed', failureCount: 0 })
    expect((await ours.circuitBreakerStore.transition('list', 'open')).state).toBe('open')
  })

  it('starts a fresh window over garbage under a rate-limit key', async () => {
    await client.set(`${prefix}rl:text`, 'abc')
    await client.set(`${prefix}rl:no-expiry`, '41')
    await client.hset(`${prefix}rl:hash`, 'field', 'value')
    for (const key of ['text', 'no-expiry', 'hash']) {
      expect((await ours.rateLimitStore.increment(key, 60)).count).toBe(1)
      expect((await ours.rateLimitStore.increment(key, 60)).count).toBe(2)
      expect(await client.pttl(`${prefix}rl:${key}`)).toBeGreaterThan(59_000)
    }
  })

  it('keeps fractional windows in milliseconds and treats a zero window as always new', async () => {
    const before = Date.now()
    const { resetAt } = await ours.rateLimitStore.increment('half', 0.5)
    expect(resetAt - before).toBeGreaterThanOrEqual(400)
    expect(resetAt - before).toBeLessThanOrEqual(600)
    await sleep(600)
    expect((await ours.rateLimitStore.increment('half', 0.5)).count).toBe(1)
    expect((await ours.rateLimitStore.increment('zero', 0)).count).toBe(1)
    expect((await ours.rateLimitStore.increment('zero', 0)).count).toBe(1)
  })

  it('does not store a response with ttl 0, and removes the older one', async () => {
    await ours.cacheStore.put('ttl0', new Response('old'), 60)
    await ours.cacheStore.put('ttl0', new Response('now'), 0)
    expect(await ours.cacheStore.get('ttl0')).toBeNull()
    expect(await client.exists(`${prefix}cache:ttl0`)).toBe(0)
  })
})

// Tests that count connections or flush the script cache use a private
// redis-server, so that nothing else using the shared one can disturb them
// (nor be disturbed).
describe('redis: on a private server', () => {
  let server, admin, adapter, port
  const clientCount = async () => (await admin.client('LIST')).trim().split('\n').length
  beforeAll(async () => {
    port = await sparePort()
    server = await startRedisAt(port)
    admin = new Redis(port, '127.0.0.1')
    adapter = redisAdapter({ url: `redis://127.0.0.1:${port}` })
  })
  afterAll(async () => {
    await adapter.close()
    admin.disconnect()
    server.kill('SIGKILL')
  })

  it('pipelines concurrent calls of all three stores on one connection', async () => {
    await Promise.all(
      Array.from(
        { length: 300 },
        (_, i) =>
          [
            adapter.rateLimitStore.increment(`p${i % 7}`, 60),
            adapter.circuitBreakerStore.recordSuccess(`p${i % 5}`),
            adapter.cacheStore.get(`p${i}`),
          ][i % 3],
      ),
    )
    const clients = (await admin.client('LIST')).trim().split('\n')
    expect(clients).toHaveLength(2) // `admin` and the adapter's one connection
  })

  it('writes the calls of a long turn 16 at a time, before the turn ends', async () => {
    await adapter.rateLimitStore.increment('early', 60)
    // 40 more calls in one turn; redis-cli reads the counter before that turn ends.
    const calls = Array.from({ length: 40 }, () => adapter.rateLimitStore.increment('early', 60))
    const seen = execFileSync('redis-cli', ['-p', String(port), 'GET', 'stoma:rl:early'])
      .toString()
      .trim()
    expect(Number(seen)).toBe(1 + 32)
    expect((await Promise.all(calls)).at(-1).count).toBe(41)
  })

  it('close() closes the connection once its last calls are answered, whoever collects them', async () => {
    const before = await clientCount()
    const closeUnder = async (spinMicros) => {
      const closing = redisAdapter({ url: `redis://127.0.0.1:${port}`, spinMicros })
      await closing.rateLimitStore.increment('closing', 60)
      expect(await clientCount()).toBe(before + 1)
      const calls = Array.from({ length: 100 }, () => closing.rateLimitStore.increment('closing', 60))
      await closing.close()
      await Promise.all(calls)
    }
    // Answers taken by polling, by the I/O thread's watcher, and by the next
    // turn of a busy event loop.
    for (const run of [() => closeUnder(50), () => closeUnder(0), () => whileLoopIsBusy(() => closeUnder(50))]) {
      await run()
      const until = Date.now() + 1000
      while ((await clientCount()) > before && Date.now() < until) await sleep(10)
      expect(await clientCount()).toBe(before)
    }
  })

  it('runs both scripts by EVALSHA, resending with the source (once) after SCRIPT FLUSH', async () => {
    const calls = async (name) =>
      Number((await admin.info('commandstats')).match(new RegExp(`cmdstat_${name}:calls=(\\d+)`))?.[1] ?? 0)
    await admin.config('RESETSTAT')
    await admin.script('FLUSH')
    expect((await adapter.rateLimitStore.increment('after-flush', 60)).count).toBe(1)
    expect((await adapter.circuitBreakerStore.recordFailure('after-flush')).failureCount).toBe(1)
    // Each refused EVALSHA went again as EVAL, which put its script back.
    expect(await calls('eval')).toBe(2)
    expect(await calls('evalsha')).toBe(2)
    expect((await adapter.rateLimitStore.increment('after-flush', 60)).count).toBe(2)
    expect((await adapter.circuitBreakerStore.recordFailure('after-flush')).failureCount).toBe(2)
    expect(await calls('eval')).toBe(2)
    expect(await calls('evalsha')).toBe(4)
  })
})

describe('redis: adapter options and lifecycle', () => {
  it('builds all three stores by default, and only those asked for', async () => {
    const prefix = newPrefix()
    const all = redisAdapter({ url, prefix })
    expect(all.rateLimitStore).toBeInstanceOf(RedisRateLimitStore)
    expect(all.circuitBreakerStore).toBeInstanceOf(RedisCircuitBreakerStore)
    expect(all.cacheStore).toBeInstanceOf(RedisCacheStore)
    expect(all.waitUntil).toBeUndefined()
    const waitUntil = () => {}
    const some = redisAdapter({ url, prefix, stores: { cache: false, rateLimit: true }, waitUntil })
    expect(some.cacheStore).toBeUndefined()
    expect(some.rateLimitStore).toBeInstanceOf(RedisRateLimitStore)
    expect(some.waitUntil).toBe(waitUntil)
    await Promise.all([all.close(), some.close()])
  })

  it('uses the "stoma:" prefix by default, like Stoma', async () => {
    const key = `${runPrefix}default-prefix`
    const adapter = redisAdapter({ url })
    try {
      await adapter.rateLimitStore.increment(key, 5)
      expect(await client.get(`stoma:rl:${key}`)).toBe('1')
    } finally {
      await client.del(`stoma:rl:${key}`)
      await adapter.close()
    }
  })

  it('throws at once on a malformed url, naming it (password hidden)', () => {
    for (const bad of ['not a url', 'http://example.com', 'redis://127.0.0.1:99999']) {
      expect(() => redisAdapter({ url: bad })).toThrow(TypeError)
      expect(() => redisAdapter({ url: bad })).toThrow(`redisAdapter: invalid Redis url ${JSON.stringify(bad)}`)
    }
    expect(() => redisAdapter({ url: 'redis://user:hunter2@127.0.0.1:99999' })).toThrow(/user:\*\*\*@/)
    expect(() => redisAdapter({ url: 'redis://user:hunter2@127.0.0.1:99999' })).not.toThrow(/hunter2/)
    expect(() => new RedisCacheStore({ url: 'nope' })).toThrow(/RedisCacheStore: invalid Redis url "nope"/)
  })

  it('rejects bad options with TypeError or RangeError naming them', () => {
    expect(() => redisAdapter({ url: 42 })).toThrow(/url must be a string/)
    expect(() => redisAdapter({ prefix: 1 })).toThrow(TypeError)
    expect(() => redisAdapter({ commandTimeoutMs: 0 })).toThrow(RangeError)
    expect(() => redisAdapter({ connectTimeoutMs: '5' })).toThrow(/connectTimeoutMs/)
    expect(() => redisAdapter({ stores: { cache: 'no' } })).toThrow(/stores.cache/)
    expect(() => redisAdapter({ waitUntil: 1 })).toThrow(/waitUntil/)
    expect(() => redisAdapter('redis://x')).toThrow(TypeError)
    expect(() => redisAdapter({ spinMicros: -1 })).toThrow(RangeError)
    expect(() => redisAdapter({ spinMicros: '5' })).toThrow(/spinMicros must be a number/)
    // Past what the option can mean, refused rather than truncated.
    expect(() => redisAdapter({ db: 2 ** 32 + 99 })).toThrow(/^redisAdapter: db must be at most 2147483647, got/)
    expect(() => redisAdapter({ spinMicros: 1e7 })).toThrow(/^redisAdapter: spinMicros must be at most 1000000/)
    expect(() => redisAdapter({ commandTimeoutMs: 2 ** 31 })).toThrow(RangeError)
    expect(() => redisAdapter({ connectTimeoutMs: 2 ** 31 })).toThrow(/connectTimeoutMs must be at most 2147483647/)
  })

  it('close() waits for the calls in flight, which all succeed', async () => {
    const adapter = redisAdapter({ url, prefix: newPrefix() })
    const calls = Array.from({ length: 300 }, () => adapter.rateLimitStore.increment('k', 60))
    // Every close() resolves, however many are waiting.
    await Promise.all([adapter.close(), adapter.close()])
    const counts = (await Promise.all(calls)).map((hit) => hit.count).sort((a, b) => a - b)
    expect(counts).toEqual(Array.from({ length: 300 }, (_, i) => i + 1))
  })

  it('counts right while the event loop is busy with other sockets (calls batched per turn)', async () => {
    const adapter = redisAdapter({ url, prefix: newPrefix() })
    await whileLoopIsBusy(async () => {
      for (let i = 1; i <= 200; i++) expect((await adapter.rateLimitStore.increment('seq', 60)).count).toBe(i)
      const counts = await Promise.all(Array.from({ length: 500 }, () => adapter.rateLimitStore.increment('par', 60)))
      expect(new Set(counts.map((hit) => hit.count)).size).toBe(500)
      expect((await adapter.circuitBreakerStore.recordFailure('c')).failureCount).toBe(1)
    })
    await adapter.close()
  })

  it('close() is idempotent and later calls reject with a clear error', async () => {
    const adapter = redisAdapter({ url, prefix: newPrefix() })
    await adapter.rateLimitStore.increment('k', 5)
    await adapter.close()
    await adapter.close()
    await expect(adapter.rateLimitStore.increment('k', 5)).rejects.toThrow(
      'RedisRateLimitStore: the Redis connection was closed',
    )
    await expect(adapter.circuitBreakerStore.getState('k')).rejects.toThrow(
      'RedisCircuitBreakerStore: the Redis connection was closed',
    )
    await expect(adapter.cacheStore.get('k')).rejects.toThrow('RedisCacheStore: the Redis connection was closed')
  })

  it('standalone stores open their own connection; destroy() releases it', async () => {
    const prefix = newPrefix()
    const store = new RedisRateLimitStore({ url, prefix })
    expect((await store.increment('k', 5)).count).toBe(1)
    store.destroy()
    await expect(store.increment('k', 5)).rejects.toThrow('RedisRateLimitStore: the store was destroyed')
    const cache = new RedisCacheStore({ url, prefix })
    await cache.put('k', new Response('x'), 5)
    expect(await (await cache.get('k')).text()).toBe('x')
    cache.destroy()
    await expect(cache.get('k')).rejects.toThrow('RedisCacheStore: the store was destroyed')
  })
})

describe('redis: TLS (rediss://)', () => {
  let certificates, server, tlsUrl
  beforeAll(async () => {
    certificates = makeCertificates()
    const port = await sparePort()
    server = await startRedisAt(port, { tls: certificates })
    tlsUrl = `rediss://localhost:${port}`
  })
  afterAll(() => {
    server?.kill('SIGKILL')
    if (certificates) rmSync(certificates.dir, { recursive: true, force: true })
  })

  it('serves all three stores over TLS with a private CA, polling or not', async () => {
    const body = randomBytes(3 * 1024 * 1024) // more than one write of the socket takes
    for (const spinMicros of [50, 0]) {
      const adapter = redisAdapter({ url: tlsUrl, tls: { ca: certificates.ca }, prefix: newPrefix(), spinMicros })
      try {
        const hits = await Promise.all(Array.from({ length: 2000 }, () => adapter.rateLimitStore.increment('k', 60)))
        expect(hits.map((hit) => hit.count).sort((a, b) => a - b)).toEqual(
          Array.from({ length: 2000 }, (_, i) => i + 1),
        )
        expect((await adapter.circuitBreakerStore.recordFailure('k')).failureCount).toBe(1)
        await adapter.cacheStore.put('big', new Response(body, { headers: { 'x-tls': 'yes' } }), 60)
        const cached = await adapter.cacheStore.get('big')
        expect(cached.headers.get('x-tls')).toBe('yes')
        expect(Buffer.from(await cached.arrayBuffer()).equals(body)).toBe(true)
      } finally {
        await adapter.close()
      }
    }
  })

  it('takes REDISS:// and valkeys:// (any case) as TLS urls too', async () => {
    for (const scheme of ['REDISS', 'valkeys']) {
      const adapter = redisAdapter({
        url: tlsUrl.replace('rediss', scheme),
        tls: { ca: certificates.ca },
        prefix: newPrefix(),
      })
      try {
        expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
      } finally {
        await adapter.close()
      }
    }
  })

  it('trusts only the CA it is given: without it, calls reject naming the certificate problem', async () => {
    const adapter = redisAdapter({ url: tlsUrl, prefix: newPrefix() }) // Mozilla's roots only
    try {
      const started = Date.now()
      await expect(adapter.rateLimitStore.increment('k', 60)).rejects.toThrow(
        /^RedisRateLimitStore: .*TLS handshake failed: invalid peer certificate: UnknownIssuer/,
      )
      expect(Date.now() - started).toBeLessThan(1000)
    } finally {
      await adapter.close()
    }
  })

  it('checks the server name: a certificate for localhost does not do for another name', async () => {
    const adapter = redisAdapter({
      url: tlsUrl.replace('localhost', '127.0.0.1'),
      tls: { ca: certificates.ca },
      prefix: newPrefix(),
    })
    try {
      await expect(adapter.rateLimitStore.increment('k', 60)).rejects.toThrow(
        /^RedisRateLimitStore: .*TLS handshake failed: invalid peer certificate: certificate not valid for name "127.0.0.1"/,
      )
    } finally {
      await adapter.close()
    }
  })

  it('rejects bad tls options at once with a TypeError naming them', () => {
    expect(() => redisAdapter({ url: tlsUrl, tls: 'yes' })).toThrow(
      /redisAdapter: tls must be a boolean or \{ ca, cert, key, servername \}, got "yes"/,
    )
    expect(() => redisAdapter({ url: tlsUrl, tls: { ca: 42 } })).toThrow(/redisAdapter: tls.ca must be PEM text/)
    expect(() => redisAdapter({ url: tlsUrl, tls: { ca: 'not a certificate' } })).toThrow(
      /redisAdapter: tls.ca holds no PEM certificate/,
    )
    expect(() => redisAdapter({ url: `${tlsUrl}/#insecure` })).toThrow(/#insecure .*not supported/)
    expect(() => redisAdapter({ url: 'unix:///tmp/redis.sock', tls: true })).toThrow(/TLS works over TCP only/)
    expect(() => redisAdapter({ url: tlsUrl, tls: { cert: 'x' } })).toThrow(/redisAdapter: tls.cert needs tls.key/)
    expect(() => redisAdapter({ url: tlsUrl, tls: { ca: 'x', rejectUnauthorized: false } })).toThrow(
      /redisAdapter: unknown option tls.rejectUnauthorized; the options are ca, cert, key, servername/,
    )
  })
})

describe('redis: server down', () => {
  const unhandled = []
  const onUnhandled = (reason) => unhandled.push(reason)
  beforeAll(() => process.on('unhandledRejection', onUnhandled))
  afterAll(() => process.off('unhandledRejection', onUnhandled))
  afterEach(() => expect(unhandled).toEqual([]))

  /** Every operation of every store, each expected to reject naming its store. */
  const operations = (adapter) => [
    ['RedisRateLimitStore', () => adapter.rateLimitStore.increment('k', 60)],
    ['RedisCircuitBreakerStore', () => adapter.circuitBreakerStore.getState('k')],
    ['RedisCircuitBreakerStore', () => adapter.circuitBreakerStore.recordFailure('k')],
    ['RedisCircuitBreakerStore', () => adapter.circuitBreakerStore.transition('k', 'open')],
    ['RedisCircuitBreakerStore', () => adapter.circuitBreakerStore.reset('k')],
    ['RedisCacheStore', () => adapter.cacheStore.get('k')],
    ['RedisCacheStore', () => adapter.cacheStore.put('k', new Response('x'), 60)],
    ['RedisCacheStore', () => adapter.cacheStore.delete('k')],
  ]

  async function expectEachRejects(adapter, commandTimeoutMs, cause) {
    for (const [store, call] of operations(adapter)) {
      const started = Date.now()
      const error = await call().then(
        () => null,
        (e) => e,
      )
      expect(error).toBeInstanceOf(Error)
      expect(error.message).toMatch(new RegExp(`^${store}: .*${cause.source}`, 'i'))
      expect(Date.now() - started).toBeLessThanOrEqual(commandTimeoutMs + 500)
    }
  }

  it('rejects every call within commandTimeoutMs when nothing listens, naming store and cause', async () => {
    const adapter = redisAdapter({ url: 'redis://127.0.0.1:1', commandTimeoutMs: 300 })
    await expectEachRejects(adapter, 300, /connection refused/)
    // Concurrent calls too, and again after the reconnect pause.
    await sleep(150)
    const results = await Promise.allSettled(operations(adapter).map(([, call]) => call()))
    expect(results.every((r) => r.status === 'rejected')).toBe(true)
    await adapter.close()
  })

  it('rejects every call within commandTimeoutMs when the server accepts but never answers', async () => {
    const sockets = new Set()
    const silent = net.createServer((socket) => {
      sockets.add(socket)
      socket.on('error', () => {})
    })
    silent.listen(0, '127.0.0.1')
    await once(silent, 'listening')
    const adapter = redisAdapter({
      url: `redis://127.0.0.1:${silent.address().port}`,
      commandTimeoutMs: 300,
      connectTimeoutMs: 500,
    })
    try {
      await expectEachRejects(adapter, 300, /(within 300 ms|no answer within 500 ms)/)
    } finally {
      await adapter.close()
      for (const socket of sockets) socket.destroy()
      silent.close()
    }
  })

  it('a server that breaks the protocol after answering one call: that call resolves, the next rejects', async () => {
    // Answers the handshake (CLUSTER MYID as a server without cluster
    // support does, then the three SCRIPT LOADs), then one valid reply followed
    // by garbage, in one write.
    const sockets = new Set()
    const broken = net.createServer((socket) => {
      sockets.add(socket)
      socket.on('error', () => {})
      let handshaken = false
      socket.on('data', () => {
        socket.write(
          handshaken
            ? '*2\r\n:1\r\n:1000\r\n\x00garbage\r\n'
            : '-ERR This instance has cluster support disabled\r\n+OK\r\n+OK\r\n+OK\r\n',
        )
        handshaken = true
      })
    })
    broken.listen(0, '127.0.0.1')
    await once(broken, 'listening')
    for (const spinMicros of [50, 0]) {
      const adapter = redisAdapter({
        url: `redis://127.0.0.1:${broken.address().port}`,
        spinMicros,
        commandTimeoutMs: 2000,
      })
      try {
        await adapter.rateLimitStore.increment('warm', 60).catch(() => {}) // connected; the garbage drops it
        const settled = await Promise.allSettled([
          adapter.rateLimitStore.increment('a', 60),
          adapter.rateLimitStore.increment('b', 60),
        ])
        expect(settled[0]).toEqual({ status: 'fulfilled', value: { count: 1, resetAt: 1000 } })
        expect(settled[1].status).toBe('rejected')
        expect(settled[1].reason.message).toMatch(/^RedisRateLimitStore: Redis at 127\.0\.0\.1:\d+: protocol error/)
      } finally {
        await adapter.close()
      }
    }
    for (const socket of sockets) socket.destroy()
    broken.close()
  })

  it('recovers within a second once a killed server is back, with no action by the user', async () => {
    const port = await sparePort()
    let server = await startRedisAt(port)
    const adapter = redisAdapter({ url: `redis://127.0.0.1:${port}`, commandTimeoutMs: 500 })
    try {
      expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
      server.kill('SIGKILL')
      await once(server, 'exit')
      await expectEachRejects(adapter, 500, /(refused|reset|closed|broken pipe|terminated|within 500 ms)/)

      server = await startRedisAt(port)
      const ready = Date.now()
      let recovered = null
      while (recovered === null && Date.now() - ready < 5000) {
        recovered = await adapter.circuitBreakerStore.recordFailure('after').then(
          (snapshot) => snapshot,
          () => null,
        )
        if (recovered === null) await sleep(20)
      }
      expect(recovered).toMatchObject({ failureCount: 1 })
      expect(Date.now() - ready).toBeLessThanOrEqual(1000)
      // The new server has an empty script cache: EVALSHA reloads it.
      expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
    } finally {
      await adapter.close()
      server.kill('SIGKILL')
    }
  })
})

describe('redis: process lifetime', () => {
  /** Runs `source` in a fresh node process; resolves with its exit code, or 'hung'. */
  async function runNode(source, limitMs = 10_000, flags = []) {
    const env = { ...process.env, STOMA_NATIVE: entry, IOREDIS: require.resolve('ioredis') }
    const child = spawn(process.execPath, [...flags, '-e', source], { stdio: ['ignore', 'pipe', 'inherit'], env })
    let out = ''
    child.stdout.on('data', (chunk) => (out += chunk))
    const timer = setTimeout(() => child.kill('SIGKILL'), limitMs)
    const [code, signal] = await once(child, 'exit')
    clearTimeout(timer)
    return { code: signal === 'SIGKILL' ? 'hung' : code, out }
  }

  it('a process holding an open adapter exits by itself when its work is done', async () => {
    const prefix = newPrefix()
    const { code, out } = await runNode(`
      const { redisAdapter } = require(process.env.STOMA_NATIVE)
      const adapter = redisAdapter({ url: ${JSON.stringify(url)}, prefix: ${JSON.stringify(prefix)} })
      Promise.all([
        adapter.rateLimitStore.increment('k', 60),
        adapter.circuitBreakerStore.recordFailure('k'),
        adapter.cacheStore.put('k', new Response('x'), 60).then(() => adapter.cacheStore.get('k')).then((r) => r.text()),
      ]).then(([hit, snapshot, text]) => console.log(hit.count, snapshot.failureCount, text))
    `)
    expect({ code, out: out.trim() }).toEqual({ code: 0, out: '1 1 x' })
  })

  it('answers that arrived while the JS thread was blocked past commandTimeoutMs are not failed as late', async () => {
    const prefix = newPrefix()
    const { code, out } = await runNode(`
      const { redisAdapter } = require(process.env.STOMA_NATIVE)
      const adapter = redisAdapter({ url: ${JSON.stringify(url)}, prefix: ${JSON.stringify(prefix)}, commandTimeoutMs: 30 })
      const block = (ms) => { const until = Date.now() + ms; while (Date.now() < until); }
      ;(async () => {
        await adapter.rateLimitStore.increment('warm', 60)
        let rejected = 0
        for (let round = 0; round < 5; round++) {
          await new Promise((resolve) => setTimeout(resolve, 5))
          // 192 = 12 × 16: every call is written during the turn (16 at a
          // time). A remainder could wait for the next turn (when Node's loop
          // has other work) and rightly time out before it is even sent.
          const calls = Array.from({ length: 192 }, () => adapter.rateLimitStore.increment('k', 60))
          // Runs after this turn's flush: the JS thread is then busy for
          // twice the timeout while Redis answers at once.
          queueMicrotask(() => queueMicrotask(() => block(60)))
          for (const result of await Promise.allSettled(calls)) if (result.status === 'rejected') rejected++
        }
        console.log(rejected)
        await adapter.close()
      })()
    `)
    expect({ code, out: out.trim() }).toEqual({ code: 0, out: '0' })
  })

  it('works in worker threads, each with its own adapter, and the process still exits by itself', async () => {
    const prefix = newPrefix()
    const { code, out } = await runNode(`
      const { Worker } = require('node:worker_threads')
      const { once } = require('node:events')
      const { redisAdapter } = require(process.env.STOMA_NATIVE)
      const options = { url: ${JSON.stringify(url)}, prefix: ${JSON.stringify(prefix)} }
      // Each worker counts 250 hits on one key; half of them never close their adapter.
      const worker = (close) => \`
        const { parentPort } = require('node:worker_threads')
        const adapter = require(process.env.STOMA_NATIVE).redisAdapter(\${JSON.stringify(options)})
        Promise.all(Array.from({ length: 250 }, () => adapter.rateLimitStore.increment('shared', 60)))
          .then((hits) => \${close} ? adapter.close().then(() => hits) : hits)
          .then((hits) => parentPort.postMessage(hits.length))
      \`
      ;(async () => {
        const workers = [true, false, true, false].map((close) => new Worker(worker(close), { eval: true }))
        const exited = Promise.all(workers.map((w) => once(w, 'exit')))
        const answered = await Promise.all(workers.map((w) => once(w, 'message').then(([n]) => n)))
        await exited
        const adapter = redisAdapter(options)
        console.log(answered.join(','), (await adapter.rateLimitStore.increment('shared', 60)).count)
      })()
    `)
    expect({ code, out: out.trim() }).toEqual({ code: 0, out: '250,250,250,250 1001' })
  })

  it('an adapter dropped without close() is collected and its connection closed', async () => {
    const port = await sparePort()
    const server = await startRedisAt(port)
    try {
      const { code, out } = await runNode(
        `
        const Redis = require(process.env.IOREDIS)
        const { redisAdapter } = require(process.env.STOMA_NATIVE)
        const admin = new Redis(${port}, '127.0.0.1')
        const clients = async () => (await admin.client('LIST')).trim().split('\\n').length
        ;(async () => {
          for (let i = 0; i < 20; i++) {
            const whenUnavailable = i % 2 === 0 ? 'reject' : 'memory'
            await redisAdapter({ url: 'redis://127.0.0.1:${port}', whenUnavailable }).rateLimitStore.increment('k', 60)
          }
          const open = await clients()
          for (let i = 0; i < 10 && (await clients()) > 1; i++) {
            global.gc()
            await new Promise((resolve) => setTimeout(resolve, 100))
          }
          console.log(open, await clients())
          admin.disconnect()
        })()
      `,
        15_000,
        ['--expose-gc'],
      )
      expect({ code, out: out.trim() }).toEqual({ code: 0, out: '21 1' })
    } finally {
      server.kill('SIGKILL')
    }
  })

  it('…also when the server is down, and when nothing was ever called', async () => {
    const down = await runNode(`
      const { redisAdapter } = require(process.env.STOMA_NATIVE)
      redisAdapter({ url: 'redis://127.0.0.1:1' }).rateLimitStore.increment('k', 60).catch((e) => console.log(e.message))
    `)
    expect(down.code).toBe(0)
    expect(down.out).toMatch(/^RedisRateLimitStore: .*refused/i)
    const idle = await runNode(`require(process.env.STOMA_NATIVE).redisAdapter({ url: ${JSON.stringify(url)} })`)
    expect(idle.code).toBe(0)
  })
})

/**
 * Runs `body` while a socket that always has data keeps Node's event loop
 * busy, which makes the Redis stores defer their writes to the next turn and
 * collect answers there instead of polling or waking the I/O thread.
 */
async function whileLoopIsBusy(body) {
  const firehose = net.createServer((socket) => {
    const chunk = Buffer.alloc(64 * 1024)
    const pump = () => {
      while (socket.write(chunk));
    }
    socket.on('drain', pump)
    socket.on('error', () => {})
    pump()
  })
  firehose.listen(0, '127.0.0.1')
  await once(firehose, 'listening')
  const reader = net.connect(firehose.address().port, '127.0.0.1')
  reader.on('data', () => {})
  await once(reader, 'connect')
  try {
    return await body()
  } finally {
    reader.destroy()
    firehose.close()
  }
}
