'use strict'
// The in-memory stores: thin JS shells over the native state in
// `src/memory/`. Every operation runs synchronously and returns an
// already-settled Promise; bad arguments reject with TypeError/RangeError.
// The per-request calls take N-API's bound calls (src/fastcall.rs) in Node,
// and in Bun and Deno the runtime's FFI into the same state (lib/ffi.js).

const native = require('./native.js')
const ffi = require('./ffi.js')
const {
  checkKey,
  checkSeconds,
  positiveInteger,
  optionsObject,
  checkKnownKeys,
  checkName,
  optionalName,
  checkCircuitState,
  checkAlgorithm,
} = require('./validate.js')
const { CIRCUIT_STATES, CIRCUIT_OPERATIONS } = require('./circuit.js')
const { putParts, buildResponse } = require('./response.js')
const { StoreStats, microsSince } = require('./stats.js')

const DEFAULT_RATE_LIMIT_KEYS = 100_000
const DEFAULT_CIRCUIT_KEYS = 10_000
const DEFAULT_CACHE_ENTRIES = 10_000
const DEFAULT_CACHE_BYTES = 64 * 1024 * 1024

// The options each store takes besides `name`; memoryAdapter's nested
// options accept exactly these.
const BOUNDS = {
  rateLimit: ['maxKeys', 'algorithm'],
  circuitBreaker: ['maxKeys'],
  cache: ['maxEntries', 'maxBytes'],
}

/** The options object of a store's constructor, refusing keys it does not take. */
function storeOptions(store, options, bounds) {
  const opts = optionsObject(store, options)
  checkKnownKeys(store, opts, [...bounds, 'name'])
  return opts
}

/**
 * Forgets the state named `name`, of all three kinds: a named state lives
 * as long as the process otherwise, so that workers coming and going do not
 * reset it. Stores created under the name afterwards start fresh; stores
 * created before keep the released state until they go (index.d.ts says
 * more). Answers whether a state was registered under the name.
 */
function releaseMemoryState(name) {
  return native.releaseMemoryState(checkName('releaseMemoryState', name))
}

function destroyedError(store) {
  return new Error(`${store}: the store was destroyed`)
}

/**
 * Rate-limit counters, bounded by `maxKeys` (100,000), counting with
 * `algorithm`: 'fixed-window' (the default, Stoma's) or 'sliding-window'
 * (docs/sliding-window.md). When full of live windows a new key fails
 * closed (`count` is `Number.MAX_SAFE_INTEGER`); expired keys are reclaimed
 * at O(1) cost. Stores built with the same `name` and algorithm share one
 * state across worker threads, until releaseMemoryState(name).
 */
class MemoryRateLimitStore {
  #native
  #increment
  #resetAt
  #stats = new StoreStats()

  constructor(options) {
    const opts =
      typeof options === 'number'
        ? { maxKeys: options }
        : storeOptions('MemoryRateLimitStore', options, BOUNDS.rateLimit)
    const maxKeys = positiveInteger('MemoryRateLimitStore', opts.maxKeys, 'maxKeys', DEFAULT_RATE_LIMIT_KEYS)
    const algorithm = checkAlgorithm('MemoryRateLimitStore', opts.algorithm)
    this.#native = new native.NativeMemoryRateLimitStore(
      maxKeys,
      optionalName('MemoryRateLimitStore', opts.name),
      algorithm,
    )
    const bound = this.#native.bindIncrement()
    const { call, out } = ffi ? ffi.rateLimitCall(this.#native, bound, algorithm) : bound
    this.#increment = call
    this.#resetAt = out
  }

  increment(key, windowSeconds) {
    const started = this.#stats.sampled() ? performance.now() : -1
    try {
      if (
        typeof key !== 'string' ||
        typeof windowSeconds !== 'number' ||
        !(windowSeconds >= 0) ||
        windowSeconds === Infinity
      ) {
        checkKey('MemoryRateLimitStore', key)
        checkSeconds('MemoryRateLimitStore', windowSeconds, 'windowSeconds')
      }
      const count = this.#increment(key, windowSeconds * 1000)
      if (started >= 0) this.#stats.latency.record(microsSince(started))
      return Promise.resolve({ count, resetAt: this.#resetAt[0] })
    } catch (error) {
      this.#stats.failed(false)
      return Promise.reject(error)
    }
  }

  /** What this store did, and the keys it holds (see lib/stats.js). */
  stats() {
    return this.#stats.snapshot({ size: this.#native.size })
  }

  /** Number of keys held. */
  get size() {
    return this.#native.size
  }

  /** Forget every counter (shared by every store of the same name). */
  reset() {
    this.#native.reset()
  }

  /** Release this store; later calls reject. A named state outlives it (see releaseMemoryState). */
  destroy() {
    this.#native.destroy()
    this.#increment = () => {
      throw destroyedError('MemoryRateLimitStore')
    }
  }
}

// The operation codes the native store takes (see lib/circuit.js).
const operationCode = (operation) => CIRCUIT_OPERATIONS.indexOf(operation)
const GET_STATE = operationCode('getState')
const RECORD_SUCCESS = operationCode('recordSuccess')
const RECORD_FAILURE = operationCode('recordFailure')
const TRANSITION = operationCode('transition')

function circuitStateCode(to) {
  const code = CIRCUIT_STATES.indexOf(to)
  // Only a bad `to` misses; the check throws the error that names it.
  if (code < 0) checkCircuitState('MemoryCircuitBreakerStore', to)
  return code
}

/**
 * Circuit-breaker state per key with Stoma's transitions, bounded by
 * `maxKeys` (10,000; the least recently used circuit is forgotten beyond
 * that). Updates are atomic across worker threads sharing a `name`.
 */
class MemoryCircuitBreakerStore {
  #native
  #operate
  #out
  #stats = new StoreStats()

  constructor(options) {
    const opts = storeOptions('MemoryCircuitBreakerStore', options, BOUNDS.circuitBreaker)
    const maxKeys = positiveInteger('MemoryCircuitBreakerStore', opts.maxKeys, 'maxKeys', DEFAULT_CIRCUIT_KEYS)
    this.#native = new native.NativeMemoryCircuitBreakerStore(
      maxKeys,
      optionalName('MemoryCircuitBreakerStore', opts.name),
    )
    const bound = this.#native.bindOperations()
    const { call, out } = ffi ? ffi.circuitCall(this.#native, bound) : bound
    this.#operate = call
    this.#out = out
  }

  #run(op, key, to) {
    const started = this.#stats.sampled() ? performance.now() : -1
    try {
      if (typeof key !== 'string') checkKey('MemoryCircuitBreakerStore', key)
      this.#operate(op, key, to)
      if (started >= 0) this.#stats.latency.record(microsSince(started))
      const out = this.#out
      return Promise.resolve({
        state: CIRCUIT_STATES[out[0]],
        failureCount: out[1],
        successCount: out[2],
        lastFailureTime: out[3],
        lastStateChange: out[4],
      })
    } catch (error) {
      this.#stats.failed(false)
      return Promise.reject(error)
    }
  }

  getState(key) {
    return this.#run(GET_STATE, key)
  }

  recordSuccess(key) {
    return this.#run(RECORD_SUCCESS, key)
  }

  recordFailure(key) {
    return this.#run(RECORD_FAILURE, key)
  }

  transition(key, to) {
    let code
    try {
      code = circuitStateCode(to)
    } catch (error) {
      this.#stats.calls++
      this.#stats.failed(false)
      return Promise.reject(error)
    }
    return this.#run(TRANSITION, key, code)
  }

  reset(key) {
    this.#stats.calls++
    try {
      checkKey('MemoryCircuitBreakerStore', key)
      this.#native.reset(key)
      return Promise.resolve()
    } catch (error) {
      this.#stats.failed(false)
      return Promise.reject(error)
    }
  }

  /** What this store did, and the circuits it holds (see lib/stats.js). */
  stats() {
    return this.#stats.snapshot({ size: this.#native.size, evictions: this.#native.evictions })
  }

  /** Number of circuits held. */
  get size() {
    return this.#native.size
  }

  /** Remove every circuit. */
  clear() {
    this.#native.clear()
  }

  /** Release this store; later calls reject. A named state outlives it (see releaseMemoryState). */
  destroy() {
    this.#native.destroy()
    this.#operate = () => {
      throw destroyedError('MemoryCircuitBreakerStore')
    }
  }
}

/**
 * The cache store's N-API calls in the shape lib/ffi.js's cacheCalls has:
 * `put(key, status, headers, body, ttlMs)`, and `get(key)` answering
 * `{ status, headers, body }` or null.
 */
function napiCacheCalls(store) {
  const hit = new Float64Array(2)
  return {
    put: (key, status, headers, body, ttlMs) => store.put(key, status, headers, body, ttlMs),
    get(key) {
      const stored = store.get(key, hit)
      if (stored === null) return null
      const headerBytes = hit[1]
      const headers = headerBytes === 0 ? '' : stored.toString('utf8', 0, headerBytes)
      return { status: hit[0], headers, body: stored.subarray(headerBytes) }
    },
  }
}

/**
 * Cached responses kept natively (status, headers in order, body bytes),
 * bounded by `maxEntries` (10,000) and `maxBytes` (64 MiB) with LRU eviction.
 * `get` answers a fresh `Response` or null once the TTL has passed.
 */
class MemoryCacheStore {
  #native
  #calls
  #stats = new StoreStats(true)

  constructor(options) {
    const opts = storeOptions('MemoryCacheStore', options, BOUNDS.cache)
    const maxEntries = positiveInteger('MemoryCacheStore', opts.maxEntries, 'maxEntries', DEFAULT_CACHE_ENTRIES)
    const maxBytes = positiveInteger('MemoryCacheStore', opts.maxBytes, 'maxBytes', DEFAULT_CACHE_BYTES)
    this.#native = new native.NativeMemoryCacheStore(maxEntries, maxBytes, optionalName('MemoryCacheStore', opts.name))
    const napi = napiCacheCalls(this.#native)
    this.#calls = ffi ? ffi.cacheCalls(this.#native, napi) : napi
  }

  get(key) {
    const stats = this.#stats
    const started = stats.sampled() ? performance.now() : -1
    try {
      checkKey('MemoryCacheStore', key)
      const hit = this.#calls.get(key)
      // At once: on the FFI road the body is lent until the next get (lib/ffi.js).
      const response = hit === null ? null : buildResponse(hit.status, hit.headers, hit.body)
      if (response === null) stats.misses++
      else stats.hits++
      if (started >= 0) stats.latency.record(microsSince(started))
      return Promise.resolve(response)
    } catch (error) {
      stats.failed(false)
      return Promise.reject(error)
    }
  }

  async put(key, response, ttlSeconds) {
    this.#stats.calls++
    try {
      checkKey('MemoryCacheStore', key)
      const { status, headers, body } = await putParts('MemoryCacheStore', response, ttlSeconds)
      this.#calls.put(key, status, headers, body, ttlSeconds * 1000)
    } catch (error) {
      this.#stats.failed(false)
      throw error
    }
  }

  delete(key) {
    this.#stats.calls++
    try {
      checkKey('MemoryCacheStore', key)
      return Promise.resolve(this.#native.delete(key))
    } catch (error) {
      this.#stats.failed(false)
      return Promise.reject(error)
    }
  }

  /** What this store did, and the entries and bytes it holds (see lib/stats.js). */
  stats() {
    return this.#stats.snapshot({
      size: this.#native.size,
      bytes: this.#native.bytes,
      evictions: this.#native.evictions,
    })
  }

  /** Number of entries held. */
  get size() {
    return this.#native.size
  }

  /** Bytes charged against maxBytes. */
  get bytes() {
    return this.#native.bytes
  }

  /** Remove every entry. */
  clear() {
    this.#native.clear()
  }

  /** Release this store; later calls reject. A named state outlives it (see releaseMemoryState). */
  destroy() {
    this.#native.destroy()
    // Drop the lane, which holds the state too: the N-API calls now throw.
    this.#calls = napiCacheCalls(this.#native)
  }
}

module.exports = {
  releaseMemoryState,
  MemoryRateLimitStore,
  MemoryCircuitBreakerStore,
  MemoryCacheStore,
  BOUNDS,
}
