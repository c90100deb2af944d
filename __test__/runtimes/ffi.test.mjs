// The memory stores' road in Bun and Deno (lib/ffi.js, src/ffi.rs), run by
// `bun test` and `deno test` on the installed package, like contract.test.mjs
// (which runs the whole store contract on it). STOMA_NATIVE_FFI=0 runs the
// same file on the N-API road, which then serves alone.
//
// The runtimes spec sets STOMA_NATIVE_TEST_HOOKS=1 for the panic hook.
import process from 'node:process'
import { memoryAdapter, MemoryCacheStore, MemoryCircuitBreakerStore, MemoryRateLimitStore } from 'stoma-native'
import { describe, expect, it } from 'vitest'
import { ffi, native, pointer, road } from './ffi-road.mjs'

const runtime = typeof globalThis.Bun !== 'undefined' ? 'bun' : 'deno'
const expected = process.env.STOMA_NATIVE_FFI === '0' ? 'N-API' : { bun: 'bun:ffi', deno: 'Deno.dlopen' }[runtime]
const unique = (what) => `${what}-${runtime}-${process.pid}-${Date.now()}-${Math.random()}`

// Answers of the symbols (src/ffi.rs).
const FAILED = -1
const FAILED_TYPE = -3

describe(`${runtime} ${expected}: the road`, () => {
  it(`is ${expected}`, () => {
    expect(road()).toBe(expected)
  })

  it('shares a named state with the N-API road in the same process', async () => {
    const name = unique('roads')
    const store = new MemoryRateLimitStore({ name })
    await store.increment('k', 60)
    const napi = new native.NativeMemoryRateLimitStore(10, name).bindIncrement()
    expect(napi.call('k', 60_000)).toBe(2)
    expect((await store.increment('k', 60)).count).toBe(3)
  })

  it('counts a key too long for the lane, and a lone surrogate, as the N-API road does', async () => {
    const store = new MemoryRateLimitStore({ name: unique('keys') })
    const long = 'k'.repeat(5000)
    const lone = 'a\ud800b'
    for (const key of [long, lone, 'é😀']) {
      expect((await store.increment(key, 60)).count).toBe(1)
      expect((await store.increment(key, 60)).count).toBe(2)
    }
    // U+FFFD on both roads: the lone surrogate and its replacement are one key.
    expect((await store.increment('a\ufffdb', 60)).count).toBe(3)
    expect(store.size).toBe(3)
  })

  it('keeps a hit intact once the entry is replaced and other hits are read', async () => {
    const cache = new MemoryCacheStore()
    const body = new Uint8Array(100_000).map((_, i) => (i * 7) & 255)
    await cache.put('a', new Response(body, { headers: { 'x-a': '1', 'set-cookie': 'b=2' } }), 60)
    const first = await cache.get('a')
    await cache.put('a', new Response('replaced'), 60)
    await cache.put('b', new Response('other'), 60)
    expect(await (await cache.get('b')).text()).toBe('other')
    expect(await (await cache.get('a')).text()).toBe('replaced')
    expect(first.headers.get('x-a')).toBe('1')
    expect(first.headers.get('set-cookie')).toBe('b=2')
    const bytes = new Uint8Array(await first.arrayBuffer())
    expect(bytes.length).toBe(body.length)
    expect(bytes.every((v, i) => v === body[i])).toBe(true)
    expect((await cache.get('missing')) === null).toBe(true)
    await cache.put('none', new Response(null, { status: 204 }), 60)
    expect((await cache.get('none')).status).toBe(204)
  })

  it('stops serving through the lane once a store is destroyed', async () => {
    const cache = new MemoryCacheStore()
    const limiter = new MemoryRateLimitStore()
    const circuits = new MemoryCircuitBreakerStore()
    await cache.put('a', new Response('x'), 60)
    cache.destroy()
    limiter.destroy()
    circuits.destroy()
    await expect(cache.get('a')).rejects.toThrow(/destroyed/)
    await expect(limiter.increment('a', 60)).rejects.toThrow(/destroyed/)
    await expect(circuits.getState('a')).rejects.toThrow(/destroyed/)
  })

  it('rejects bad input with TypeError or RangeError naming the argument', async () => {
    const { rateLimitStore, circuitBreakerStore, cacheStore } = memoryAdapter()
    await expect(rateLimitStore.increment(42, 60)).rejects.toThrow(/key/)
    await expect(rateLimitStore.increment(42, 60)).rejects.toThrow(TypeError)
    await expect(rateLimitStore.increment('k', -1)).rejects.toThrow(RangeError)
    await expect(rateLimitStore.increment('k', -1)).rejects.toThrow(/windowSeconds/)
    await expect(circuitBreakerStore.transition('k', 'ajar')).rejects.toThrow(/to/)
    await expect(circuitBreakerStore.recordFailure(null)).rejects.toThrow(TypeError)
    await expect(cacheStore.put('k', 'not a response', 60)).rejects.toThrow(/response/)
    await expect(cacheStore.get({})).rejects.toThrow(TypeError)
  })
})

describe(`${runtime} ${expected}: worker threads`, () => {
  it('4 workers × 1,000 calls under one name leave exactly 4,000, seen by the main thread on both roads', async () => {
    const name = unique('workers')
    const count = 1000
    const roads = await Promise.all(
      [1, 2, 3, 4].map(
        (id) =>
          new Promise((resolve, reject) => {
            const worker = new Worker(new URL('./ffi-worker.mjs', import.meta.url), { type: 'module' })
            worker.onmessage = ({ data }) => {
              worker.terminate()
              resolve(data.road)
            }
            worker.onerror = (event) => {
              worker.terminate()
              reject(event.error ?? new Error(event.message))
            }
            worker.postMessage({ name, count, id })
          }),
      ),
    )
    expect(roads).toEqual([expected, expected, expected, expected])
    const adapter = memoryAdapter({ name })
    expect((await adapter.rateLimitStore.increment('shared', 60)).count).toBe(4 * count + 1)
    expect((await adapter.circuitBreakerStore.getState('upstream')).failureCount).toBe(4 * count)
    for (const id of [1, 2, 3, 4]) {
      const hit = await adapter.cacheStore.get(`from:${id}`)
      expect(hit.headers.get('x-worker')).toBe(`${id}`)
      expect(await hit.text()).toBe(`worker ${id}`)
    }
    const napi = new native.NativeMemoryRateLimitStore(10, name).bindIncrement()
    expect(napi.call('shared', 60_000)).toBe(4 * count + 2)
  })
})

if (ffi) {
  describe(`${runtime} ${expected}: the C boundary`, () => {
    const { symbols } = ffi
    const lane = (store, bytes) => {
      const made = store.lane(bytes)
      return { handle: pointer(made.handle), bytes: new Uint8Array(made.memory, 64), made }
    }

    it('a panic in a symbol becomes an Error; the process goes on', async () => {
      for (const message of ['boom', 'second boom']) {
        let thrown
        try {
          ffi.testPanic(message)
        } catch (error) {
          thrown = error
        }
        expect(thrown).toBeInstanceOf(Error)
        expect(thrown.message).toBe(`stoma-native: internal error: ${message}`)
      }
      let refused
      try {
        ffi.testPanic('')
      } catch (error) {
        refused = error
      }
      expect(refused.message).toBe('empty message')
      expect((await new MemoryRateLimitStore().increment('after', 60)).count).toBe(1)
    })

    it('a key longer than the lane, or not UTF-8, is refused with its message', () => {
      const store = new native.NativeMemoryRateLimitStore(10, null)
      const { handle, bytes, made } = lane(store, 64)
      const slots = new Float64Array(made.memory, 0, 8)
      const message = () => new TextDecoder().decode(bytes.subarray(0, slots[7]))
      expect(symbols.stoma_rate_limit_increment(handle, 65, 1000)).toBe(FAILED_TYPE)
      expect(message()).toBe("key (65 bytes at 0) exceeds the lane's 64 bytes")
      bytes.set([0x6b, 0xff])
      expect(symbols.stoma_rate_limit_increment(handle, 2, 1000)).toBe(FAILED_TYPE)
      expect(message()).toBe('key is not UTF-8')
      bytes.set([0x6b])
      expect(symbols.stoma_rate_limit_increment(handle, 1, 1000)).toBe(1)
      expect(store.size).toBe(1)
    })

    it("another store's lane, or none, is refused without touching it", () => {
      const limiter = new native.NativeMemoryRateLimitStore(10, null)
      const { handle } = lane(limiter, 16)
      expect(symbols.stoma_circuit_operate(handle, 0, 0, 0)).toBe(FAILED_TYPE)
      expect(symbols.stoma_cache_get(handle, 0)).toBe(FAILED_TYPE)
      expect(symbols.stoma_rate_limit_increment(null, 0, 1000)).toBe(FAILED)
      expect(limiter.size).toBe(0)
      // A fixed-window lane and a sliding-window one each refuse the other algorithm's symbol.
      expect(symbols.stoma_sliding_rate_limit_increment(handle, 0, 1000)).toBe(FAILED_TYPE)
      const sliding = new native.NativeMemoryRateLimitStore(10, null, 'sliding-window')
      const slidingLane = lane(sliding, 16).handle
      expect(symbols.stoma_rate_limit_increment(slidingLane, 0, 1000)).toBe(FAILED_TYPE)
      expect(symbols.stoma_sliding_rate_limit_increment(slidingLane, 0, 1000)).toBe(1)
      expect([limiter.size, sliding.size]).toEqual([0, 1])
    })

    it('unknown operation and state codes are refused', () => {
      const circuits = new native.NativeMemoryCircuitBreakerStore(10, null)
      const { handle, bytes } = lane(circuits, 16)
      bytes.set([0x6b])
      expect(symbols.stoma_circuit_operate(handle, 9, 1, 0)).toBe(FAILED_TYPE)
      expect(symbols.stoma_circuit_operate(handle, 3, 1, 7)).toBe(FAILED_TYPE)
      expect(circuits.size).toBe(0)
    })

    it('a bad body length or status is refused', () => {
      const cache = new native.NativeMemoryCacheStore(10, 1 << 20, null)
      const { handle, bytes } = lane(cache, 64)
      bytes.set([0x6b])
      const body = new Uint8Array(4)
      expect(symbols.stoma_cache_put(handle, 1, 0, 200, body, 0.5, 1000)).toBe(FAILED_TYPE)
      expect(symbols.stoma_cache_put(handle, 1, 0, 200, null, 4, 1000)).toBe(FAILED_TYPE)
      expect(symbols.stoma_cache_put(handle, 1, 0, 70_000, body, 4, 1000)).toBe(FAILED_TYPE)
      expect(symbols.stoma_cache_put(handle, 1, 0, 200, body, 4, 1000)).toBe(0)
      expect(cache.size).toBe(1)
    })
  })
}
