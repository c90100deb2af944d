'use strict'
// GatewayAdapter factories and the TestAdapter, built from the stores.

const { MemoryRateLimitStore, MemoryCircuitBreakerStore, MemoryCacheStore, BOUNDS } = require('./memory.js')
const { optionsObject, checkKnownKeys, optionalName, describe, rateLimitAlgorithm } = require('./validate.js')
const { adapterStats } = require('./stats.js')

// The options of TestAdapter, and of memoryAdapter, which also takes waitUntil.
const TEST_ADAPTER_OPTIONS = ['name', 'rateLimit', 'circuitBreaker', 'cache']
const MEMORY_ADAPTER_OPTIONS = [...TEST_ADAPTER_OPTIONS, 'waitUntil']

function checkWaitUntil(factory, waitUntil) {
  if (waitUntil !== undefined && typeof waitUntil !== 'function') {
    throw new TypeError(`${factory}: waitUntil must be a function, got ${describe(waitUntil)}`)
  }
  return waitUntil
}

/**
 * The three native memory stores, sharing state under `options.name`;
 * options outside `known`, and bounds a store does not take, are refused.
 */
function memoryStores(factory, options, known) {
  const opts = optionsObject(factory, options)
  checkKnownKeys(factory, opts, known)
  const name = optionalName(factory, opts.name)
  const bounds = (kind) => {
    const given = optionsObject(factory, opts[kind], kind)
    checkKnownKeys(factory, given, BOUNDS[kind], kind)
    return { ...given, name }
  }
  // Checked here so that a bad algorithm is named as the factory's option.
  rateLimitAlgorithm(factory, opts.rateLimit, BOUNDS.rateLimit)
  return {
    rateLimitStore: new MemoryRateLimitStore(bounds('rateLimit')),
    circuitBreakerStore: new MemoryCircuitBreakerStore(bounds('circuitBreaker')),
    cacheStore: new MemoryCacheStore(bounds('cache')),
  }
}

/**
 * close() of the memory adapters and the TestAdapter: destroys their stores
 * (idempotent; later calls reject, as after any adapter's close()), so
 * shutdown code closes every backend alike.
 */
function closeStores(stores) {
  stores.rateLimitStore.destroy()
  stores.circuitBreakerStore.destroy()
  stores.cacheStore.destroy()
  return Promise.resolve()
}

/**
 * A GatewayAdapter whose rate-limit, circuit-breaker and cache stores are
 * native and in process. Pass `name` to share one state between every
 * adapter of that name in the process, worker threads included.
 */
function memoryAdapter(options) {
  return runtimeAdapter('memoryAdapter', options)
}

/** Node.js quick start: native memory stores, new ones per call. */
function nodeAdapter(options) {
  return runtimeAdapter('nodeAdapter', options)
}

/** Bun quick start: native memory stores, new ones per call. */
function bunAdapter(options) {
  return runtimeAdapter('bunAdapter', options)
}

/** Deno quick start: native memory stores, new ones per call. */
function denoAdapter(options) {
  return runtimeAdapter('denoAdapter', options)
}

/** memoryAdapter under the name of the factory called, which its errors give. */
function runtimeAdapter(factory, options) {
  const stores = memoryStores(factory, options, MEMORY_ADAPTER_OPTIONS)
  const adapter = { ...stores, stats: () => adapterStats(stores), close: () => closeStores(stores) }
  const waitUntil = checkWaitUntil(factory, options?.waitUntil)
  if (waitUntil) adapter.waitUntil = waitUntil
  return adapter
}

/**
 * A GatewayAdapter for tests: native memory stores plus a `waitUntil` that
 * collects background work, which `waitAll()` awaits.
 */
class TestAdapter {
  #pending = []
  #stores

  constructor(options) {
    this.#stores = memoryStores('TestAdapter', options, TEST_ADAPTER_OPTIONS)
    Object.assign(this, this.#stores)
  }

  /** Collect background work instead of running it detached. */
  waitUntil = (promise) => {
    this.#pending.push(promise)
  }

  /**
   * Await every collected promise, including work queued while waiting,
   * until nothing is pending. Rejects with the first failure, but only
   * after everything else has settled.
   */
  async waitAll() {
    let firstFailure
    while (this.#pending.length > 0) {
      const batch = this.#pending
      this.#pending = []
      for (const outcome of await Promise.allSettled(batch)) {
        if (outcome.status === 'rejected' && firstFailure === undefined) firstFailure = outcome
      }
    }
    if (firstFailure) throw firstFailure.reason
  }

  /** What each store did (see lib/stats.js). */
  stats() {
    return adapterStats(this.#stores)
  }

  /** Forget pending background work. */
  reset() {
    this.#pending = []
  }

  /** Destroy the stores, as memoryAdapter's close() does; pending work is left alone. */
  close() {
    return closeStores(this.#stores)
  }
}

function createTestAdapter(options) {
  return new TestAdapter(options)
}

module.exports = { memoryAdapter, nodeAdapter, bunAdapter, denoAdapter, TestAdapter, createTestAdapter, checkWaitUntil }
