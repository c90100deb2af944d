'use strict'
// What `stats()` answers: per store, the calls made, how they ended and how
// long they took. Counted on the JS thread, where every call is made and
// answered: that sees exactly the calls a caller made (a Redis read shared
// by single flight, a near-cache copy, an answer from the fallback memory
// each count once), costs a number increment (an atomic would cost more and
// buy nothing: one thread counts), and is one definition for every backend,
// the Cloudflare entry's included. So, like validate.js, it uses no Node
// built-in.
//
// Latency is kept in a fixed-bucket histogram (four buckets per power of
// two of microseconds), from which p50 and p99 are read. The network
// stores time every call; the memory stores one in SAMPLE_EVERY, as timing
// every call would cost as much as the call.

/** Below this many µs, one bucket per µs; above, four per power of two. */
const LINEAR = 4
// 4 + 4 per power of two from 2^2 to 2^30 µs (~18 minutes).
const BUCKETS = LINEAR + 4 * 29

/** One call in this many is timed on the memory stores (a power of two). */
const SAMPLE_EVERY = 64

function bucketOf(micros) {
  const m = Math.min(Math.floor(micros), 2 ** 31 - 1)
  if (m < LINEAR) return Math.max(m, 0)
  const power = 31 - Math.clz32(m)
  return LINEAR + (power - 2) * 4 + ((m >>> (power - 2)) & 3)
}

/** The largest µs a bucket holds (its upper bound, exclusive, less one). */
function upperBound(bucket) {
  if (bucket < LINEAR) return bucket + 1
  const power = Math.floor((bucket - LINEAR) / 4) + 2
  const quarter = (bucket - LINEAR) % 4
  return (5 + quarter) * 2 ** (power - 2)
}

class Latency {
  #buckets = new Float64Array(BUCKETS)
  #count = 0

  record(micros) {
    this.#buckets[bucketOf(micros)]++
    this.#count++
  }

  /** The µs within which a share `q` of the timed calls finished; null if none was. */
  quantile(q) {
    if (this.#count === 0) return null
    const wanted = Math.max(1, Math.ceil(q * this.#count))
    let seen = 0
    for (let bucket = 0; bucket < BUCKETS; bucket++) {
      seen += this.#buckets[bucket]
      if (seen >= wanted) return upperBound(bucket)
    }
    return upperBound(BUCKETS - 1)
  }

  snapshot() {
    return { timed: this.#count, p50: this.quantile(0.5), p99: this.quantile(0.99) }
  }
}

/**
 * An unavailable call's message when it waited out a bound of ours (no
 * answer, or no connection, within commandTimeoutMs, statementTimeoutMs or
 * connectTimeoutMs), as the native side words every such bound.
 */
const TIMED_OUT = /\bwithin \d+ ms\b/

/**
 * One store's counts. `calls`: every call made (bad arguments included);
 * `errors`: calls that rejected, or, with whenUnavailable: 'memory', that
 * the backend failed before memory answered; `unavailable`: those of the
 * errors that were the backend not answering (refused, lost, timed out),
 * `timeouts` the timed-out ones among them;
 * `local`: calls memory answered while the backend was unavailable. A cache
 * store also counts `hits` and `misses` of `get`.
 */
class StoreStats {
  calls = 0
  errors = 0
  unavailable = 0
  timeouts = 0
  local = 0
  // Every store has them, so that every StoreStats has one shape (one
  // inline cache where the stores count); only a cache's are reported.
  hits = 0
  misses = 0
  latency = new Latency()
  #cache

  constructor(cache = false) {
    this.#cache = cache
  }

  /**
   * A call that failed; `unavailable` if the backend did not answer it,
   * `message` saying whether it timed out.
   */
  failed(unavailable, message) {
    this.errors++
    if (!unavailable) return
    this.unavailable++
    if (TIMED_OUT.test(message)) this.timeouts++
  }

  /** Whether to time this memory-store call (one in SAMPLE_EVERY); counts it. */
  sampled() {
    return (++this.calls & (SAMPLE_EVERY - 1)) === 0
  }

  snapshot(extra) {
    const { calls, errors, unavailable, timeouts, local } = this
    const counts = { calls, errors, unavailable, timeouts, local }
    if (this.#cache) Object.assign(counts, { hits: this.hits, misses: this.misses })
    return { ...counts, latencyMicros: this.latency.snapshot(), ...extra }
  }
}

/** Microseconds since `started` (a `performance.now()` reading). */
const microsSince = (started) => (performance.now() - started) * 1000

/**
 * The store whose stats() counts each native operation of the network
 * stores (Redis and PostgreSQL name them alike); a probe (`ping`) counts
 * nowhere.
 */
const STORE_OF = {
  increment: 'rateLimit',
  slidingIncrement: 'rateLimit',
  cleanupRateLimits: 'rateLimit',
  cleanupSlidingWindows: 'rateLimit',
  circuitGet: 'circuitBreaker',
  circuitRecordSuccess: 'circuitBreaker',
  circuitRecordFailure: 'circuitBreaker',
  circuitTransition: 'circuitBreaker',
  circuitReset: 'circuitBreaker',
  cacheGet: 'cache',
  cachePut: 'cache',
  cacheDelete: 'cache',
  cleanupCache: 'cache',
}

/** The counts of a network adapter's three stores, which share its connection. */
class StoresStats {
  rateLimit = new StoreStats()
  circuitBreaker = new StoreStats()
  cache = new StoreStats(true)

  /** Counts a call of store `name` refused before it was made (bad arguments, a closed store). */
  refused(name) {
    this[name].calls++
    this[name].failed(false)
  }
}

/**
 * An adapter's `stats()`: each of its stores' (those it has), and `extra`
 * (the connection or pool the stores share).
 */
function adapterStats(stores, extra) {
  const stats = {}
  if (stores.rateLimitStore) stats.rateLimit = stores.rateLimitStore.stats()
  if (stores.circuitBreakerStore) stats.circuitBreaker = stores.circuitBreakerStore.stats()
  if (stores.cacheStore) stats.cache = stores.cacheStore.stats()
  return { ...stats, ...extra }
}

/**
 * Gives `store` a `stats()` counting the calls of its `methods` (Promise-
 * returning), each timed; `get` is counted as a hit or a miss on a cache
 * store. For the Cloudflare stores, plain JS whose calls go to the
 * platform's bindings: there, timing each call costs nothing that shows.
 */
function countCalls(store, methods, { cache = false } = {}) {
  const stats = new StoreStats(cache)
  for (const name of methods) {
    const method = store[name]
    const counted = cache && name === 'get'
    store[name] = (...args) => {
      stats.calls++
      const started = performance.now()
      let answer
      try {
        answer = Promise.resolve(method.apply(store, args))
      } catch (error) {
        stats.failed(false)
        return Promise.reject(error)
      }
      return answer.then(
        (value) => {
          stats.latency.record(microsSince(started))
          if (counted) {
            if (value === null) stats.misses++
            else stats.hits++
          }
          return value
        },
        (error) => {
          stats.failed(false)
          throw error
        },
      )
    }
  }
  store.stats = () => stats.snapshot()
}

module.exports = { StoreStats, StoresStats, STORE_OF, microsSince, adapterStats, countCalls, bucketOf, upperBound }
