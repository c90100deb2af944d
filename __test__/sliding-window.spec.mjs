// The sliding window (issue #18) on the memory stores in Node (the N-API
// road; Bun and Deno take the FFI road in __test__/runtimes/sliding.test.mjs):
// the shared contract through the store, every memory adapter and the
// TestAdapter, with the native clock frozen at chosen instants.
import { createRequire } from 'node:module'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  bunAdapter,
  denoAdapter,
  MemoryRateLimitStore,
  memoryAdapter,
  nodeAdapter,
  releaseMemoryState,
  TestAdapter,
} from '../index.mjs'
import { SlidingWindowModel, slidingWindowContract, windowAt } from './support/sliding-window.mjs'

const native = createRequire(import.meta.url)('../native.js')

// __setTestClock refuses to run without it (src/testing.rs); set before any test runs.
let previousHooks
beforeAll(() => {
  previousHooks = process.env.STOMA_NATIVE_TEST_HOOKS
  process.env.STOMA_NATIVE_TEST_HOOKS = '1'
})
afterAll(() => {
  native.__setTestClock(null)
  if (previousHooks === undefined) delete process.env.STOMA_NATIVE_TEST_HOOKS
  else process.env.STOMA_NATIVE_TEST_HOOKS = previousHooks
})

const setClock = (ms) => native.__setTestClock(ms)
const sliding = { algorithm: 'sliding-window' }

slidingWindowContract('MemoryRateLimitStore', {
  createStore: () => new MemoryRateLimitStore(sliding),
  setClock,
  close: (store) => store.destroy(),
})
for (const factory of [memoryAdapter, nodeAdapter, bunAdapter, denoAdapter]) {
  slidingWindowContract(factory.name, {
    createStore: () => factory({ rateLimit: sliding }).rateLimitStore,
    setClock,
    createWithOptions: (rateLimit) => factory({ rateLimit }),
  })
}
slidingWindowContract('TestAdapter', {
  createStore: () => new TestAdapter({ rateLimit: { maxKeys: 1000, ...sliding } }).rateLimitStore,
  setClock,
  createWithOptions: (rateLimit) => new TestAdapter({ rateLimit }),
})

/** Runs `body` with the native clock frozen (moved by `at(ms)`), letting it run again after. */
async function frozen(body) {
  try {
    await body(setClock)
  } finally {
    setClock(null)
  }
}

/** The boundary scenario's counts: a hit at `start`, 9 just before `start + length`, 10 just after. */
async function boundaryCounts(store, key, windowSeconds, start) {
  const length = windowSeconds * 1000
  const counts = []
  await frozen(async (at) => {
    const instants = [start, ...Array.from({ length: 9 }, (_, i) => start + length - 100 + i)]
    instants.push(...Array.from({ length: 10 }, (_, i) => start + length + 1 + i))
    for (const now of instants) {
      at(now)
      counts.push((await store.increment(key, windowSeconds)).count)
    }
  })
  return counts
}

describe('memory: fixed and sliding side by side', () => {
  const start = windowAt(Date.now() + 3_600_000, 60).start

  it('the default stays the fixed window: all 10 hits after the boundary pass there', async () => {
    for (const store of [
      new MemoryRateLimitStore(),
      memoryAdapter().rateLimitStore,
      new TestAdapter().rateLimitStore,
    ]) {
      const counts = await boundaryCounts(store, 'k', 60, start)
      // The window opened by the first hit ends at start + 60 s: the last 10 open a new one.
      expect(counts).toEqual([
        ...Array.from({ length: 10 }, (_, i) => i + 1),
        ...Array.from({ length: 10 }, (_, i) => i + 1),
      ])
    }
    const explicit = new MemoryRateLimitStore({ algorithm: 'fixed-window' })
    expect((await boundaryCounts(explicit, 'k', 60, start)).slice(10).every((count) => count <= 10)).toBe(true)
  })

  it('the sliding window lets 1 of those 10 through', async () => {
    const counts = await boundaryCounts(new MemoryRateLimitStore(sliding), 'k', 60, start)
    expect(counts.slice(10)).toEqual(Array.from({ length: 10 }, (_, i) => 10 + i))
  })

  it('a name shares sliding counters between stores, apart from the fixed counters of that name', async () => {
    const name = `sliding-${process.pid}-${Date.now()}`
    const a = new MemoryRateLimitStore({ name, ...sliding })
    const b = memoryAdapter({ name, rateLimit: sliding }).rateLimitStore
    const fixed = new MemoryRateLimitStore({ name })
    await frozen(async (at) => {
      at(start + 5)
      expect((await a.increment('k', 60)).count).toBe(1)
      expect((await b.increment('k', 60)).count).toBe(2)
      expect((await fixed.increment('k', 60)).count).toBe(1)
      expect([a.size, fixed.size]).toEqual([1, 1])
      expect(releaseMemoryState(name)).toBe(true)
      expect((await new MemoryRateLimitStore({ name, ...sliding }).increment('k', 60)).count).toBe(1)
    })
    releaseMemoryState(name)
  })

  it('maxKeys bounds sliding keys: full, a new key fails closed until an entry can carry nothing', async () => {
    const store = new MemoryRateLimitStore({ maxKeys: 2, ...sliding })
    const model = new SlidingWindowModel()
    await frozen(async (at) => {
      at(start + 500)
      for (const key of ['a', 'b']) expect(await store.increment(key, 1)).toEqual(model.increment(key, 1, start + 500))
      // 'a' and 'b' still carry into [start + 1 s, start + 2 s), so 'c' waits for the window after.
      at(start + 1999)
      expect(await store.increment('c', 1)).toEqual({ count: Number.MAX_SAFE_INTEGER, resetAt: start + 2000 })
      at(start + 2000)
      expect(await store.increment('c', 1)).toEqual({ count: 1, resetAt: start + 3000 })
      // 'b' was reclaimed with 'a' (it had nothing left to carry), so it starts afresh.
      expect(await store.increment('b', 1)).toEqual({ count: 1, resetAt: start + 3000 })
      expect(store.size).toBe(2)
      // 'b' and 'c' carry into [start + 3 s, start + 4 s).
      at(start + 3000)
      expect(await store.increment('d', 1)).toEqual({ count: Number.MAX_SAFE_INTEGER, resetAt: start + 4000 })
    })
  })

  it('a store built with an unknown algorithm is refused before anything native is made', () => {
    expect(() => new MemoryRateLimitStore({ algorithm: 'sliding' })).toThrow(
      /^MemoryRateLimitStore: algorithm must be "fixed-window" or "sliding-window", got "sliding"$/,
    )
    expect(() => memoryAdapter({ rateLimit: { maxKeys: 5, algorithm: null } })).toThrow(TypeError)
    expect(() => new native.NativeMemoryRateLimitStore(10, null, 'other')).toThrow()
  })
})
