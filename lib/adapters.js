'use strict'
// GatewayAdapter factories and the TestAdapter, built from the stores.

const { MemoryRateLimitStore, MemoryCircuitBreakerStore, MemoryCacheStore } = require('./memory.js')
const { optionsObject, optionalName, describe } = require('./validate.js')

function checkWaitUntil(factory, waitUntil) {
  if (waitUntil !== undefined && typeof waitUntil !== 'function') {
    throw new TypeError(`${factory}: waitUntil must be a function, got ${describe(waitUntil)}`)
  }
  return waitUntil
}

/** The three native memory stores, sharing state under `options.name`. */
function memoryStores(factory, options) {
  const opts = optionsObject(factory, options)
  const name = optionalName(factory, opts.name)
  return {
    rateLimitStore: new MemoryRateLimitStore({ ...optionsObject(factory, opts.rateLimit, 'rateLimit'), name }),
    circuitBreakerStore: new MemoryCircuitBreakerStore({
      ...optionsObject(factory, opts.circuitBreaker, 'circuitBreaker'),
      name,
    }),
    cacheStore: new MemoryCacheStore({ ...optionsObject(factory, opts.cache, 'cache'), name }),
  }
}

/**
 * A GatewayAdapter whose rate-limit, circuit-breaker and cache stores are
 * native and in process. Pass `name` to share one state between every
 * adapter of that name in the process, worker threads included.
 */
function memoryAdapter(options) {
  const adapter = memoryStores('memoryAdapter', options)
  const waitUntil = checkWaitUntil('memoryAdapter', options?.waitUntil)
  if (waitUntil) adapter.waitUntil = waitUntil
  return adapter
}

/** Node.js quick start: native memory stores, new ones per call. */
function nodeAdapter(options) {
  return memoryAdapter(options)
}

/** Bun quick start: native memory stores, new ones per call. */
function bunAdapter(options) {
  return memoryAdapter(options)
}

/** Deno quick start: native memory stores, new ones per call. */
function denoAdapter(options) {
  return memoryAdapter(options)
}

/**
 * A GatewayAdapter for tests: native memory stores plus a `waitUntil` that
 * collects background work, which `waitAll()` awaits.
 */
class TestAdapter {
  #pending = []

  constructor(options) {
    Object.assign(this, memoryStores('TestAdapter', options))
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

  /** Forget pending background work. */
  reset() {
    this.#pending = []
  }
}

function createTestAdapter(options) {
  return new TestAdapter(options)
}

module.exports = { memoryAdapter, nodeAdapter, bunAdapter, denoAdapter, TestAdapter, createTestAdapter, checkWaitUntil }
