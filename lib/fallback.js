'use strict'
// `whenUnavailable: 'memory'` for the network adapters: while their backend
// does not answer, rate limits and circuits are answered from bounded
// in-process memory stores, so Stoma's policies keep holding per instance
// instead of failing open; cache calls miss. An error marks a call the
// backend did not answer (refused, lost, timed out: it may have run) with
// `code: 'STORE_UNAVAILABLE'`; only those switch to memory.
//
// After the first such failure every call is answered locally at once (no
// waiting on a dead server per request) while a probe asks the backend
// every PROBE_INTERVAL_MS; once it answers, calls go back to the backend.
// Local counts are dropped then, not merged back: calls that failed may
// have run on the backend already (merging would count them twice), and
// the backend's windows went on without them.

const { MemoryRateLimitStore, MemoryCircuitBreakerStore } = require('./memory.js')
const { checkChoice } = require('./validate.js')
const { publishFallback } = require('./diagnostics.js')

/** The `code` of an error for a call the backend did not answer. */
const UNAVAILABLE = 'STORE_UNAVAILABLE'

/** How often an unavailable backend is asked whether it is back. */
const PROBE_INTERVAL_MS = 250

/** The `whenUnavailable` option: 'reject' (the default) or 'memory'. */
function whenUnavailableOption(who, value = 'reject') {
  return checkChoice(who, value, 'whenUnavailable', ['reject', 'memory'])
}

/** A timer that does not keep the process alive, in Node, Bun and Deno. */
function unrefTimer(callback, ms) {
  const timer = setTimeout(callback, ms)
  if (typeof timer === 'object') timer.unref?.()
  else globalThis.Deno?.unrefTimer?.(timer)
  return timer
}

/**
 * The memory an adapter falls back on, and whether it does now. `probe()`
 * answers a Promise that resolves once `backend` ('redis', 'postgres')
 * answers.
 */
class Fallback {
  #backend
  #probe
  #active = false
  #closed = false
  #timer = null
  // By algorithm: a sliding store's calls are answered by a sliding memory store.
  #rateLimits = {}
  // How many times calls went to memory.
  #entered = 0

  constructor(backend, probe) {
    this.#backend = backend
    this.#probe = probe
    this.circuitBreaker = new MemoryCircuitBreakerStore()
  }

  /** The memory rate-limit store counting with `algorithm`, made on first use. */
  rateLimit(algorithm) {
    this.#rateLimits[algorithm] ??= new MemoryRateLimitStore({ algorithm })
    return this.#rateLimits[algorithm]
  }

  /**
   * `remote()`'s answer, or `local()`'s while the backend is unavailable
   * or when `remote()` fails because it is. Errors of the call itself (bad
   * arguments, an error the backend answered) are not caught. `stats` (a
   * StoreStats) counts the local answers, and the calls `remote()` did not
   * count itself.
   */
  run(stats, remote, local) {
    if (this.#active) {
      stats.calls++
      stats.local++
      return local()
    }
    return remote().catch((error) => {
      if (error?.code !== UNAVAILABLE || this.#closed) throw error
      this.#enter()
      stats.local++
      return local()
    })
  }

  /** `{ active, entered }`, for stats(). */
  snapshot() {
    return { active: this.#active, entered: this.#entered }
  }

  #enter() {
    if (this.#active) return
    this.#active = true
    this.#entered++
    publishFallback(this.#backend, true)
    this.#schedule()
  }

  #schedule() {
    this.#timer = unrefTimer(() => {
      this.#probe().then(
        () => {
          this.#active = false
          this.#timer = null
          if (!this.#closed) publishFallback(this.#backend, false)
        },
        () => {
          if (!this.#closed) this.#schedule()
        },
      )
    }, PROBE_INTERVAL_MS)
  }

  /** Stops probing and frees the memory stores. */
  close() {
    this.#closed = true
    this.#active = false
    if (this.#timer !== null) clearTimeout(this.#timer)
    for (const store of Object.values(this.#rateLimits)) store.destroy()
    this.circuitBreaker.destroy()
  }
}

/** What each cache call answers while the backend is unavailable: a miss, nothing stored. */
const CACHE_WHILE_UNAVAILABLE = {
  get: () => Promise.resolve(null),
  put: () => Promise.resolve(undefined),
  delete: () => Promise.resolve(false),
}

/** Each native circuit operation, done on the memory store instead. */
const LOCAL_CIRCUIT = {
  circuitGet: (store, key) => store.getState(key),
  circuitRecordSuccess: (store, key) => store.recordSuccess(key),
  circuitRecordFailure: (store, key) => store.recordFailure(key),
  circuitTransition: (store, key, to) => store.transition(key, to),
  circuitReset: (store, key) => store.reset(key),
}

module.exports = { Fallback, UNAVAILABLE, whenUnavailableOption, CACHE_WHILE_UNAVAILABLE, LOCAL_CIRCUIT }
