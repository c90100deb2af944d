import { Worker } from 'node:worker_threads'
import { describe, expect, it } from 'vitest'
import {
  MemoryCacheStore,
  MemoryCircuitBreakerStore,
  MemoryRateLimitStore,
  TestAdapter,
  bunAdapter,
  createTestAdapter,
  denoAdapter,
  memoryAdapter,
  nodeAdapter,
  releaseMemoryState,
} from '../index.mjs'
import { storeContract } from './support/store-contract.mjs'

const MAX_SAFE = Number.MAX_SAFE_INTEGER
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

storeContract('memory', { createStores: () => memoryAdapter() })
storeContract('TestAdapter', { createStores: () => new TestAdapter() })

describe('memory rate limit bounds', () => {
  it('fails closed at maxKeys when nothing has expired, and keeps counting known keys', async () => {
    const store = new MemoryRateLimitStore({ maxKeys: 3 })
    for (const key of ['a', 'b', 'c']) expect((await store.increment(key, 60)).count).toBe(1)
    const refused = await store.increment('d', 60)
    expect(refused.count).toBe(MAX_SAFE)
    expect(refused.resetAt).toBeGreaterThan(Date.now())
    expect((await store.increment('a', 60)).count).toBe(2)
    expect(store.size).toBe(3)
  })

  it('reclaims expired keys for new ones at capacity', async () => {
    const store = new MemoryRateLimitStore({ maxKeys: 2 })
    await store.increment('short-1', 0.2)
    await store.increment('long', 60)
    expect((await store.increment('new-1', 60)).count).toBe(MAX_SAFE)
    await sleep(250)
    expect((await store.increment('new-1', 60)).count).toBe(1)
    expect(store.size).toBe(2)
  })

  it('stays bounded and answers new keys at capacity under a flood of 200,000 keys', async () => {
    const store = new MemoryRateLimitStore({ maxKeys: 1000 })
    let refused = 0
    for (let i = 0; i < 200_000; i++) {
      if ((await store.increment(`flood:${i}`, 60)).count === MAX_SAFE) refused++
    }
    expect(store.size).toBe(1000)
    expect(refused).toBe(199_000)
  })

  it('accepts Stoma’s numeric constructor form and reset()', async () => {
    const store = new MemoryRateLimitStore(1)
    await store.increment('x', 60)
    expect((await store.increment('y', 60)).count).toBe(MAX_SAFE)
    store.reset()
    expect((await store.increment('y', 60)).count).toBe(1)
  })

  it('counts a zero window as a new window every time, and honours fractional windows', async () => {
    const store = new MemoryRateLimitStore()
    expect((await store.increment('zero', 0)).count).toBe(1)
    expect((await store.increment('zero', 0)).count).toBe(1)
    const before = Date.now()
    const { resetAt } = await store.increment('fraction', 0.5)
    expect(resetAt - before).toBeGreaterThanOrEqual(499)
    expect(resetAt - before).toBeLessThanOrEqual(520)
  })
})

describe('memory circuit breaker bounds', () => {
  it('holds at most maxKeys circuits, forgetting the least recently used', async () => {
    const store = new MemoryCircuitBreakerStore({ maxKeys: 2 })
    await store.recordFailure('a')
    await store.recordFailure('b')
    await store.recordFailure('a')
    await store.recordFailure('c')
    expect(store.size).toBe(2)
    expect((await store.getState('b')).failureCount).toBe(0)
    expect((await store.getState('a')).failureCount).toBe(2)
  })

  it('stores nothing for reads of unknown keys, and clear() empties it', async () => {
    const store = new MemoryCircuitBreakerStore()
    for (let i = 0; i < 1000; i++) await store.getState(`read:${i}`)
    expect(store.size).toBe(0)
    await store.transition('x', 'open')
    store.clear()
    expect(store.size).toBe(0)
  })
})

describe('memory cache bounds', () => {
  it('evicts the least recently used entry beyond maxEntries', async () => {
    const cache = new MemoryCacheStore({ maxEntries: 2 })
    await cache.put('a', new Response('a'), 60)
    await cache.put('b', new Response('b'), 60)
    await cache.get('a')
    await cache.put('c', new Response('c'), 60)
    expect(cache.size).toBe(2)
    expect(await cache.get('b')).toBeNull()
    expect(await (await cache.get('a')).text()).toBe('a')
  })

  it('evicts by bytes and never holds more than maxBytes', async () => {
    const cache = new MemoryCacheStore({ maxBytes: 256 * 1024 })
    const body = new Uint8Array(64 * 1024)
    for (let i = 0; i < 10; i++) {
      await cache.put(`k${i}`, new Response(body), 60)
      expect(cache.bytes).toBeLessThanOrEqual(256 * 1024)
    }
    expect(cache.size).toBe(3)
    expect(await cache.get('k0')).toBeNull()
    expect(await cache.get('k9')).not.toBeNull()
  })

  it('does not store a response larger than maxBytes, nor one with ttl 0', async () => {
    const cache = new MemoryCacheStore({ maxBytes: 1024 })
    await cache.put('big', new Response(new Uint8Array(4096)), 60)
    await cache.put('now', new Response('x'), 0)
    expect(cache.size).toBe(0)
    expect(await cache.get('big')).toBeNull()
  })

  it('clear() empties the store', async () => {
    const cache = new MemoryCacheStore()
    await cache.put('a', new Response('a'), 60)
    cache.clear()
    expect(cache.size).toBe(0)
    expect(cache.bytes).toBe(0)
  })
})

describe('store lifecycle and option checks', () => {
  it('rejects calls after destroy() with an error naming the store', async () => {
    const { rateLimitStore, circuitBreakerStore, cacheStore } = memoryAdapter()
    rateLimitStore.destroy()
    circuitBreakerStore.destroy()
    cacheStore.destroy()
    await expect(rateLimitStore.increment('k', 1)).rejects.toThrow(/MemoryRateLimitStore: the store was destroyed/)
    await expect(circuitBreakerStore.recordFailure('k')).rejects.toThrow(
      /MemoryCircuitBreakerStore: the store was destroyed/,
    )
    await expect(cacheStore.get('k')).rejects.toThrow(/MemoryCacheStore: the store was destroyed/)
  })

  it('rejects bad options with TypeError or RangeError naming them', () => {
    expect(() => memoryAdapter({ rateLimit: { maxKeys: 0 } })).toThrow(RangeError)
    expect(() => memoryAdapter({ rateLimit: { maxKeys: 0 } })).toThrow(/maxKeys/)
    expect(() => memoryAdapter({ cache: { maxBytes: 1.5 } })).toThrow(/maxBytes/)
    expect(() => memoryAdapter({ cache: { maxEntries: '10' } })).toThrow(TypeError)
    expect(() => memoryAdapter({ name: 5 })).toThrow(TypeError)
    expect(() => memoryAdapter({ waitUntil: 'later' })).toThrow(/waitUntil/)
    expect(() => memoryAdapter('x')).toThrow(TypeError)
  })

  it('close() destroys the stores of every memory adapter and of the TestAdapter; twice is fine', async () => {
    const adapters = {
      memoryAdapter: memoryAdapter(),
      nodeAdapter: nodeAdapter(),
      bunAdapter: bunAdapter(),
      denoAdapter: denoAdapter(),
      TestAdapter: new TestAdapter(),
      createTestAdapter: createTestAdapter(),
    }
    for (const [factory, adapter] of Object.entries(adapters)) {
      expect((await adapter.rateLimitStore.increment('k', 60)).count, factory).toBe(1)
      await expect(adapter.close()).resolves.toBeUndefined()
      await expect(adapter.close()).resolves.toBeUndefined()
      await expect(adapter.rateLimitStore.increment('k', 60)).rejects.toThrow(
        /MemoryRateLimitStore: the store was destroyed/,
      )
      await expect(adapter.circuitBreakerStore.getState('k')).rejects.toThrow(/MemoryCircuitBreakerStore: the store/)
      await expect(adapter.cacheStore.get('k')).rejects.toThrow(/MemoryCacheStore: the store was destroyed/)
    }
  })

  it('refuses unknown options with a TypeError naming the key and listing the accepted ones', () => {
    const refused = (build, message) => {
      expect(build).toThrow(TypeError)
      expect(build).toThrow(message)
    }
    const adapterOptions = 'the options are name, rateLimit, circuitBreaker, cache'
    for (const [factoryName, factory] of Object.entries({ memoryAdapter, nodeAdapter, bunAdapter, denoAdapter })) {
      refused(
        () => factory({ ratelimit: { maxKeys: 5 } }),
        `${factoryName}: unknown option ratelimit; ${adapterOptions}, waitUntil`,
      )
      refused(
        () => factory({ rateLimit: { maxkeys: 5 } }),
        `${factoryName}: unknown option rateLimit.maxkeys; the options are maxKeys, algorithm`,
      )
      // name belongs at the top level, where it names all three stores
      refused(() => factory({ circuitBreaker: { name: 'x' } }), 'unknown option circuitBreaker.name')
      refused(
        () => factory({ cache: { maxEntries: 5, maxByte: 10 } }),
        'unknown option cache.maxByte; the options are maxEntries, maxBytes',
      )
    }
    for (const build of [(options) => new TestAdapter(options), createTestAdapter]) {
      refused(() => build({ waitUntil: () => {} }), `TestAdapter: unknown option waitUntil; ${adapterOptions}`)
      refused(() => build({ cache: { maxbytes: 1 } }), 'TestAdapter: unknown option cache.maxbytes')
    }
    refused(
      () => new MemoryRateLimitStore({ maxKey: 5 }),
      'MemoryRateLimitStore: unknown option maxKey; the options are maxKeys, algorithm, name',
    )
    refused(
      () => new MemoryCircuitBreakerStore({ maxEntries: 5 }),
      'MemoryCircuitBreakerStore: unknown option maxEntries; the options are maxKeys, name',
    )
    refused(
      () => new MemoryCacheStore({ maxKeys: 5 }),
      'MemoryCacheStore: unknown option maxKeys; the options are maxEntries, maxBytes, name',
    )
    // every accepted option still passes
    const name = `known-${process.pid}`
    memoryAdapter({
      name,
      rateLimit: { maxKeys: 5 },
      circuitBreaker: { maxKeys: 5 },
      cache: { maxEntries: 5, maxBytes: 4096 },
      waitUntil: () => {},
    })
    new TestAdapter({ rateLimit: {}, circuitBreaker: {}, cache: {} })
    new MemoryRateLimitStore({ maxKeys: 5, name: undefined })
    releaseMemoryState(name)
  })

  it('builds new stores per call for the runtime adapters, with waitUntil passed through', async () => {
    const waitUntil = () => {}
    for (const factory of [memoryAdapter, nodeAdapter, bunAdapter, denoAdapter]) {
      const one = factory({ waitUntil })
      const two = factory()
      expect(one.waitUntil).toBe(waitUntil)
      expect(two.waitUntil).toBeUndefined()
      await one.rateLimitStore.increment('k', 60)
      expect((await two.rateLimitStore.increment('k', 60)).count).toBe(1)
    }
  })
})

describe('TestAdapter', () => {
  it('waitAll() awaits work queued while waiting, and reset() forgets pending work', async () => {
    const adapter = createTestAdapter()
    const done = []
    adapter.waitUntil(
      sleep(20).then(() => {
        done.push('first')
        adapter.waitUntil(sleep(20).then(() => done.push('queued while waiting')))
      }),
    )
    await adapter.waitAll()
    expect(done).toEqual(['first', 'queued while waiting'])

    let ran = false
    adapter.waitUntil(new Promise(() => {})) // never settles
    adapter.reset()
    await adapter.waitAll()
    adapter.waitUntil(Promise.resolve().then(() => (ran = true)))
    await adapter.waitAll()
    expect(ran).toBe(true)
  })

  it('waitAll() rejects with the first failure after everything has settled', async () => {
    const adapter = new TestAdapter()
    let slowDone = false
    adapter.waitUntil(Promise.reject(new Error('boom')))
    adapter.waitUntil(sleep(30).then(() => (slowDone = true)))
    await expect(adapter.waitAll()).rejects.toThrow('boom')
    expect(slowDone).toBe(true)
  })
})

describe('named state shared across worker threads', () => {
  it('4 workers × 2,500 increments on one key leave exactly 10,000', async () => {
    const name = `workers-${process.pid}-${Date.now()}`
    const entry = new URL('../index.js', import.meta.url).pathname
    const source = `
      const { parentPort, workerData } = require('node:worker_threads')
      const { memoryAdapter } = require(workerData.entry)
      const { rateLimitStore, circuitBreakerStore } = memoryAdapter({ name: workerData.name })
      ;(async () => {
        for (let i = 0; i < 2500; i++) {
          await rateLimitStore.increment('shared', 60)
          await circuitBreakerStore.recordFailure('shared')
        }
        parentPort.postMessage('done')
      })()
    `
    const main = memoryAdapter({ name })
    await Promise.all(
      Array.from({ length: 4 }, () => {
        const worker = new Worker(source, { eval: true, workerData: { entry, name } })
        return new Promise((resolve, reject) => {
          worker.once('message', resolve)
          worker.once('error', reject)
        }).finally(() => worker.terminate())
      }),
    )
    expect((await main.rateLimitStore.increment('shared', 60)).count).toBe(10_001)
    expect((await main.circuitBreakerStore.getState('shared')).failureCount).toBe(10_000)
    expect((await memoryAdapter().rateLimitStore.increment('shared', 60)).count).toBe(1)
    releaseMemoryState(name)
  })
})

describe('named state for the life of the process', () => {
  const entry = new URL('../index.js', import.meta.url).pathname
  let serial = 0
  const uniqueName = (what) => `${what}-${process.pid}-${Date.now()}-${serial++}`

  // Each worker counts, then ends: nothing keeps its event loop alive, so
  // the thread exits and its stores are finalized with its environment.
  const workerSource = `
    const { threadId, workerData } = require('node:worker_threads')
    const { memoryAdapter } = require(workerData.entry)
    const adapter = memoryAdapter({ name: workerData.name })
    ;(async () => {
      for (let i = 0; i < 2500; i++) {
        await adapter.rateLimitStore.increment('shared', 60)
        await adapter.circuitBreakerStore.recordFailure('shared')
      }
      await adapter.cacheStore.put('from-' + threadId, new Response('hello'), 60)
    })()
  `
  const runWorkers = (name, count) =>
    Promise.all(
      Array.from({ length: count }, () => {
        const worker = new Worker(workerSource, { eval: true, workerData: { entry, name } })
        return new Promise((resolve, reject) => {
          worker.once('error', reject)
          worker.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`worker exited with ${code}`))))
        })
      }),
    )

  it('outlives a pool of workers that each exit when done: 4 × 2,500, then the main thread answers 10,001', async () => {
    const name = uniqueName('pool')
    await runWorkers(name, 4)
    const main = memoryAdapter({ name })
    expect((await main.rateLimitStore.increment('shared', 60)).count).toBe(10_001)
    expect((await main.circuitBreakerStore.getState('shared')).failureCount).toBe(10_000)
    expect(main.cacheStore.size).toBe(4)
    expect(releaseMemoryState(name)).toBe(true)
  })

  it('survives destroy() and close(); releaseMemoryState(name) makes the next store start fresh', async () => {
    const name = uniqueName('release')
    const first = memoryAdapter({ name })
    await first.rateLimitStore.increment('k', 60)
    await first.circuitBreakerStore.recordFailure('k')
    await first.cacheStore.put('k', new Response('kept'), 60)
    await first.close()
    const rateLimits = new MemoryRateLimitStore({ name })
    expect((await rateLimits.increment('k', 60)).count).toBe(2)
    rateLimits.destroy()

    const holder = memoryAdapter({ name })
    expect(releaseMemoryState(name)).toBe(true)
    // A store made before the release keeps the released state until it goes.
    expect((await holder.rateLimitStore.increment('k', 60)).count).toBe(3)
    expect(await (await holder.cacheStore.get('k')).text()).toBe('kept')
    // Stores made after it start fresh, all three kinds.
    const fresh = memoryAdapter({ name })
    expect((await fresh.rateLimitStore.increment('k', 60)).count).toBe(1)
    expect((await fresh.circuitBreakerStore.getState('k')).failureCount).toBe(0)
    expect(await fresh.cacheStore.get('k')).toBeNull()
    expect((await new MemoryRateLimitStore({ name }).increment('k', 60)).count).toBe(2)

    expect(releaseMemoryState(name)).toBe(true)
    expect(releaseMemoryState(name)).toBe(false)
  })

  it('stays bounded by the limits of the store that created it', async () => {
    const name = uniqueName('bounded')
    const creator = new MemoryRateLimitStore({ name, maxKeys: 2 })
    await creator.increment('a', 60)
    await creator.increment('b', 60)
    creator.destroy()
    const later = new MemoryRateLimitStore({ name })
    expect((await later.increment('c', 60)).count).toBe(MAX_SAFE)
    expect(later.size).toBe(2)
    releaseMemoryState(name)
  })

  it('refuses a name that is not a non-empty string with a TypeError', () => {
    for (const name of [undefined, '', 5, { name: 'x' }]) {
      expect(() => releaseMemoryState(name)).toThrow(TypeError)
      expect(() => releaseMemoryState(name)).toThrow(/releaseMemoryState: name must be a non-empty string/)
    }
  })
})
