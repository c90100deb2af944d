'use strict'
// The Redis stores: thin JS shells over one native connection
// (`src/redis/`), which keeps the same keys and values as Stoma's JS
// redisAdapter. Every operation returns a Promise; bad arguments reject with
// TypeError/RangeError before anything is sent, and Redis failures reject
// with an Error naming the store and the cause, within commandTimeoutMs.

const native = require('./native.js')
const {
  checkKey,
  checkSeconds,
  checkCircuitState,
  positiveInteger,
  nonNegativeInteger,
  optionsObject,
  checkKnownKeys,
  describe,
  tlsOption,
  storeFlags,
  rateLimitAlgorithm,
  checkAlgorithm,
  MAX_MS,
} = require('./validate.js')
const { putParts, buildResponse } = require('./response.js')
const { checkWaitUntil } = require('./adapters.js')
const { CIRCUIT_STATES } = require('./circuit.js')
const {
  Fallback,
  UNAVAILABLE,
  whenUnavailableOption,
  CACHE_WHILE_UNAVAILABLE,
  LOCAL_CIRCUIT,
} = require('./fallback.js')
const { clientOptions, isClient } = require('./redis-client.js')
const { StoresStats, STORE_OF, adapterStats } = require('./stats.js')
const { Health, isTracing, traced } = require('./diagnostics.js')

const DEFAULT_URL = 'redis://127.0.0.1:6379'
const DEFAULT_PREFIX = 'stoma:'
const DEFAULT_CONNECT_TIMEOUT_MS = 2000
const DEFAULT_COMMAND_TIMEOUT_MS = 1000
// How long a flush may poll for its answers on the JS thread before leaving
// them to the I/O thread: a local Redis answers well within it (see `Spin`
// in src/redis/wire.rs).
const DEFAULT_SPIN_MICROS = 50
// It blocks the JS thread, so a second is past any use.
const MAX_SPIN_MICROS = 1_000_000
// Redis numbers its databases with a C int.
const MAX_DB = 2 ** 31 - 1
// A near cache's bounds unless nearCache says otherwise.
const DEFAULT_NEAR_CACHE = { maxEntries: 10_000, maxBytes: 32 * 1024 * 1024 }
// Polling flushes allowed before the event loop turns again, so a chain of
// awaited calls that keeps getting instant answers still lets timers and
// other I/O run at least every few milliseconds.
const SPINS_PER_TURN = 64
// Calls queued in one turn before they are written without waiting for the
// turn to end: Redis then works on them while the JS thread makes the rest,
// instead of the two taking turns (+15–20% at 64 calls in flight).
const WRITE_EARLY_AFTER = 16
// Node's event loop can tell the native side when it has other work (see
// src/redis/event_loop.rs); Bun's and Deno's cannot.
const IS_NODE = typeof Bun === 'undefined' && typeof Deno === 'undefined' && process.release?.name === 'node'
const nextTurn = typeof setImmediate === 'function' ? setImmediate : (run) => setTimeout(run, 0)

// redisAdapter hands its one connection to its stores under this key, so
// they share it (and its pipelining) instead of each opening their own.
const SHARED_CONNECTION = Symbol('stoma-native shared Redis connection')

/** The url with any password hidden, for error messages. */
function redactUrl(url) {
  return url.replace(/^([^:/]+:\/\/[^/@:]*:)[^/@]*@/, '$1***@')
}

/** A non-empty array of Redis urls, as `name` of `who`'s options. */
function urlList(who, value, name, example) {
  if (!Array.isArray(value) || value.length === 0) {
    throw new TypeError(`${who}: ${name} must be a non-empty array of urls like '${example}', got ${describe(value)}`)
  }
  for (const [index, url] of value.entries()) {
    if (typeof url !== 'string') throw new TypeError(`${who}: ${name}[${index}] must be a string, got ${describe(url)}`)
  }
  return [...value]
}

/** An optional string option. */
function optionalString(who, value, name) {
  if (value !== undefined && typeof value !== 'string') {
    throw new TypeError(`${who}: ${name} must be a string, got ${describe(value)}`)
  }
  return value
}

/** A nested options object, refusing keys it does not know. */
function nestedOptions(who, value, name, known, shape) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new TypeError(`${who}: ${name} must be ${shape}, got ${describe(value)}`)
  }
  checkKnownKeys(who, value, known, name)
  return value
}

/**
 * Where an adapter's data lives, from its options: one server (`url`, by
 * default `REDIS_URL` or the local server), a Redis Cluster
 * (`cluster: { nodes }`, seed urls from which the rest is discovered), or a
 * primary watched by sentinels (`sentinel: { name, nodes, username,
 * password, tls }`, the last three the sentinels' own). `username`,
 * `password` and `db` are the data servers' (over what urls say).
 */
function deployment(who, opts) {
  const given = ['url', 'cluster', 'sentinel'].filter((name) => opts[name] !== undefined)
  if (given.length > 1) {
    throw new TypeError(
      `${who}: pass one of url (one server), cluster (a Redis Cluster) or sentinel (Redis Sentinel), not ${given.join(' and ')}`,
    )
  }
  const login = {
    username: optionalString(who, opts.username, 'username'),
    password: optionalString(who, opts.password, 'password'),
    db: nonNegativeInteger(who, opts.db, 'db', undefined, MAX_DB),
  }
  if (opts.cluster !== undefined) {
    const cluster = nestedOptions(who, opts.cluster, 'cluster', ['nodes'], "{ nodes: ['redis://host:port', …] }")
    return { ...login, clusterNodes: urlList(who, cluster.nodes, 'cluster.nodes', 'redis://host:6379') }
  }
  if (opts.sentinel !== undefined) {
    const shape = "{ name, nodes: ['redis://host:26379', …] }"
    const keys = ['name', 'nodes', 'username', 'password', 'tls']
    const sentinel = nestedOptions(who, opts.sentinel, 'sentinel', keys, shape)
    if (typeof sentinel.name !== 'string' || sentinel.name === '') {
      throw new TypeError(
        `${who}: sentinel.name must be the primary's name (a non-empty string), got ${describe(sentinel.name)}`,
      )
    }
    return {
      ...login,
      sentinelName: sentinel.name,
      sentinelNodes: urlList(who, sentinel.nodes, 'sentinel.nodes', 'redis://host:26379'),
      sentinelUsername: optionalString(who, sentinel.username, 'sentinel.username'),
      sentinelPassword: optionalString(who, sentinel.password, 'sentinel.password'),
      // Without it, sentinels whose urls are rediss:// use the `tls` option's settings.
      sentinelTls: sentinel.tls === undefined ? undefined : tlsOption(who, sentinel.tls, 'sentinel.tls'),
    }
  }
  const url = opts.url ?? (process.env.REDIS_URL || DEFAULT_URL)
  if (typeof url !== 'string') throw new TypeError(`${who}: url must be a string, got ${describe(url)}`)
  return { ...login, url }
}

/**
 * The `nearCache` option: absent or false (none), true (the default
 * bounds), or `{ maxEntries, maxBytes }`.
 */
function nearCacheOption(who, nearCache) {
  if (nearCache === undefined || nearCache === false) return {}
  const bounds =
    nearCache === true
      ? {}
      : nestedOptions(who, nearCache, 'nearCache', ['maxEntries', 'maxBytes'], 'a boolean or { maxEntries, maxBytes }')
  return {
    nearCacheMaxEntries: positiveInteger(who, bounds.maxEntries, 'nearCache.maxEntries', DEFAULT_NEAR_CACHE.maxEntries),
    nearCacheMaxBytes: positiveInteger(who, bounds.maxBytes, 'nearCache.maxBytes', DEFAULT_NEAR_CACHE.maxBytes),
  }
}

/**
 * The TypeError for a native complaint about an option: `url: …`,
 * `cluster.nodes[i]: …` or `sentinel.nodes[i]: …` (quoting that url, its
 * password hidden), or another option's (`tls.ca …`, `db: …`).
 */
function optionError(who, message, where) {
  if (message.startsWith('url: ')) {
    return new TypeError(`${who}: invalid Redis url ${JSON.stringify(redactUrl(where.url))}: ${message.slice(5)}`)
  }
  const node = /^(cluster|sentinel)\.nodes\[(\d+)\]: /.exec(message)
  if (node) {
    const url = where[`${node[1]}Nodes`][Number(node[2])]
    return new TypeError(
      `${who}: ${node[1]}.nodes[${node[2]}] ${JSON.stringify(redactUrl(url))}: ${message.slice(node[0].length)}`,
    )
  }
  return new TypeError(`${who}: ${message}`)
}

// What a call answers, which tells `settle` how to read its values.
const HIT = 0 // { count, resetAt }
const SNAPSHOT = 1 // a circuit snapshot
const CACHED = 2 // a Response or null
const REMOVED = 3 // a boolean
const DONE = 4 // undefined

const OPERATIONS = {
  increment: HIT,
  slidingIncrement: HIT,
  circuitGet: SNAPSHOT,
  circuitRecordSuccess: SNAPSHOT,
  circuitRecordFailure: SNAPSHOT,
  circuitTransition: SNAPSHOT,
  circuitReset: DONE,
  cacheGet: CACHED,
  cachePut: DONE,
  cacheDelete: REMOVED,
  ping: DONE,
}

/**
 * Settles the calls answered in `batch`, as the native side sends them (see
 * `Batch` in src/redis/replies.rs): `batch[0]` is a Float64Array holding each
 * answer's call id and numbers (`-id` for a failed call), and the values
 * that are not numbers (error messages, a cache hit's headers and body)
 * follow in `batch`, in order. A read's followers (calls that asked for the
 * same key while it was in flight) get the same answer, each its own object.
 * Once no call is left, `whenDrained.resolve` (set by close()) is called.
 * Each call is counted in its store's stats (its latency if it was timed),
 * and `health` learns whether Redis answered.
 */
function settle(calls, batch, whenDrained, health) {
  const numbers = batch[0]
  let other = 1
  let i = 0
  let now = -1
  let answered = false
  while (i < numbers.length) {
    const id = numbers[i++]
    if (id === 0) {
      // Not an answer: the primary moved (see Reply::Event).
      health.failover(batch[other++])
      continue
    }
    const call = calls.get(Math.abs(id))
    calls.delete(Math.abs(id))
    const { followers, stats } = call
    // A write may have replaced this read as the one to join (see READ_AFTER_WRITE).
    if (followers !== undefined && call.reading.get(call.shared) === call) call.reading.delete(call.shared)
    if (id < 0) {
      const error = new Error(batch[other++])
      // Redis did not answer the call (see Reply::Unavailable).
      const unavailable = numbers[i++] === 1
      if (unavailable) {
        error.code = UNAVAILABLE
        health.unavailable(error.message)
      }
      stats?.failed(unavailable, error.message)
      call.reject(error)
      if (followers !== undefined) {
        for (const follower of followers) {
          stats.failed(unavailable, error.message)
          follower.reject(error)
        }
      }
      continue
    }
    answered = true
    if (call.started >= 0) {
      if (now < 0) now = performance.now()
      // A follower waited at most as long as the read it joined.
      const micros = (now - call.started) * 1000
      stats.latency.record(micros)
      if (followers !== undefined) for (let f = 0; f < followers.length; f++) stats.latency.record(micros)
    }
    switch (call.kind) {
      case HIT:
        call.resolve({ count: numbers[i], resetAt: numbers[i + 1] })
        i += 2
        break
      case SNAPSHOT: {
        const snapshot = () => ({
          state: CIRCUIT_STATES[numbers[i]],
          failureCount: numbers[i + 1],
          successCount: numbers[i + 2],
          lastFailureTime: numbers[i + 3],
          lastStateChange: numbers[i + 4],
        })
        call.resolve(snapshot())
        if (followers !== undefined) for (const follower of followers) follower.resolve(snapshot())
        i += 5
        break
      }
      case CACHED: {
        const status = numbers[i++]
        const shared = 1 + (followers?.length ?? 0)
        if (status === 0) stats.misses += shared
        else stats.hits += shared
        if (status === 0) {
          call.resolve(null)
          if (followers !== undefined) for (const follower of followers) follower.resolve(null)
        } else {
          // A Response each: a body can be read once. They share the bytes.
          const [headers, body] = [batch[other], batch[other + 1]]
          call.resolve(buildResponse(status, headers, body))
          if (followers !== undefined)
            for (const follower of followers) follower.resolve(buildResponse(status, headers, body))
          other += 2
        }
        break
      }
      case REMOVED:
        call.resolve(numbers[i++] !== 0)
        break
      default:
        i++
        call.resolve(undefined)
    }
  }
  if (answered) health.answered()
  if (whenDrained.resolve !== null && calls.size === 0) whenDrained.resolve()
}

// Reads that concurrent calls of one key share (single flight): a call made
// while the same read is in flight waits for that read's answer instead of
// asking Redis again. The answer may be at most that one round trip old.
const SHARED_READS = new Set(['cacheGet', 'circuitGet'])

// The shared read each write makes out of date: a read asked for after a
// write of its key must not join one sent before it, or this connection's
// own write would be missing from its answer.
const READ_AFTER_WRITE = {
  circuitRecordSuccess: 'circuitGet',
  circuitRecordFailure: 'circuitGet',
  circuitTransition: 'circuitGet',
  circuitReset: 'circuitGet',
  cachePut: 'cacheGet',
  cacheDelete: 'cacheGet',
}

/**
 * The memory answering while `connection`'s Redis does not, probed with
 * PING. Made out here because a closure made in the constructor would share
 * its scope with `onAnswers`, which the native side holds: through it the
 * connection could never be collected. The probe holds the connection
 * weakly, so an adapter dropped during an outage is collected too (its
 * probing then stops).
 */
function fallbackFor(connection) {
  const weak = new WeakRef(connection)
  return new Fallback('redis', () => weak.deref()?.call('ping') ?? Promise.resolve())
}

/**
 * One native connection and its calls in flight. A native operation takes
 * a call id and returns at once; answers come back in batches (see
 * `Replies` in src/redis/replies.rs), each settling the Promise of its call.
 */
class Connection {
  #native
  // With whenUnavailable: 'memory', what answers while Redis does not.
  #fallback = null
  // What stats() answers: each store's counts, and whether Redis answers.
  counts = new StoresStats()
  #health = new Health('redis')
  #calls = new Map()
  // The shared reads in flight, by operation and key (see SHARED_READS).
  #reading = new Map()
  #lastId = 0
  #flushing = false
  // Calls queued this turn since the last write.
  #queued = 0
  #spins = 0
  // close()'s Promise, and what resolves it once nothing is in flight.
  #closed = null
  #whenDrained = { resolve: null }
  #newTurn = () => {
    this.#spins = 0
  }
  #checking = false
  // Next turn of a busy event loop: collects the answers that came
  // meanwhile (see `awaiting` in src/redis/mod.rs).
  #check = () => {
    this.#checking = false
    this.#send(false)
  }
  // Sends what this turn of the event loop queued, as one pipeline, and
  // settles the calls answered while it polled.
  #flush = () => {
    this.#flushing = false
    this.#send(true)
  }

  #send(defer) {
    if (this.#spins++ === 0) nextTurn(this.#newTurn)
    const answers = this.#native.flush(this.#spins <= SPINS_PER_TURN, defer)
    if (answers !== null) settle(this.#calls, answers, this.#whenDrained, this.#health)
    // Not only while calls wait: with a near cache, the read that follows a
    // circuit write answers nobody, and the invalidations behind it must
    // still be read.
    if (!this.#checking && this.#native.awaiting) {
      this.#checking = true
      nextTurn(this.#check)
    }
  }

  /**
   * Opens the connection(s) `opts` describe (see `deployment`) with
   * `{ prefix, connectTimeoutMs, commandTimeoutMs, spinMicros, tls }`. A
   * malformed url throws a TypeError at once; connecting happens in the
   * background.
   */
  constructor(who, opts) {
    const where = deployment(who, opts)
    const prefix = opts.prefix ?? DEFAULT_PREFIX
    if (typeof prefix !== 'string') throw new TypeError(`${who}: prefix must be a string, got ${describe(prefix)}`)
    const connectTimeoutMs = positiveInteger(
      who,
      opts.connectTimeoutMs,
      'connectTimeoutMs',
      DEFAULT_CONNECT_TIMEOUT_MS,
      MAX_MS,
    )
    const commandTimeoutMs = positiveInteger(
      who,
      opts.commandTimeoutMs,
      'commandTimeoutMs',
      DEFAULT_COMMAND_TIMEOUT_MS,
      MAX_MS,
    )
    const spinMicros = nonNegativeInteger(who, opts.spinMicros, 'spinMicros', DEFAULT_SPIN_MICROS, MAX_SPIN_MICROS)
    const tls = tlsOption(who, opts.tls)
    const near = nearCacheOption(who, opts.nearCache)
    const whenUnavailable = whenUnavailableOption(who, opts.whenUnavailable)
    // The native side keeps this function (and through it the calls map)
    // alive; it must not reach back to this object, or neither could ever
    // be collected.
    const calls = this.#calls
    const whenDrained = this.#whenDrained
    const health = this.#health
    const onAnswers = (batch) => settle(calls, batch, whenDrained, health)
    try {
      this.#native = new native.NativeRedisConnection(
        {
          ...where,
          prefix,
          connectTimeoutMs,
          commandTimeoutMs,
          spinMicros,
          watchEventLoop: IS_NODE,
          ...tls,
          ...near,
        },
        onAnswers,
      )
    } catch (error) {
      if (error?.code !== 'InvalidArg') throw error
      throw optionError(who, error.message, where)
    }
    if (whenUnavailable === 'memory') this.#fallback = fallbackFor(this)
  }

  /**
   * Like `call`, but while Redis is unavailable (with whenUnavailable:
   * 'memory') answered by `local(fallback)` instead (see lib/fallback.js).
   */
  callOr(local, name, ...args) {
    if (isTracing()) return traced('redis', name, args[0], () => this.#callOr(local, name, args))
    return this.#callOr(local, name, args)
  }

  #callOr(local, name, args) {
    const fallback = this.#fallback
    if (fallback === null) return this.call(name, ...args)
    return fallback.run(
      this.counts[STORE_OF[name]],
      () => this.call(name, ...args),
      () => local(fallback),
    )
  }

  /** Starts native operation `name` with `args`; answers its Promise. */
  call(name, ...args) {
    const stats = this.counts[STORE_OF[name]]
    const shared = SHARED_READS.has(name) ? `${name}\0${args[0]}` : undefined
    if (shared !== undefined) {
      const reading = this.#reading.get(shared)
      if (reading !== undefined) {
        stats.calls++
        return new Promise((resolve, reject) => reading.followers.push({ resolve, reject }))
      }
    } else if (this.#reading.size > 0 && name in READ_AFTER_WRITE) {
      this.#reading.delete(`${READ_AFTER_WRITE[name]}\0${args[0]}`)
    }
    const id = ++this.#lastId
    const kind = OPERATIONS[name]
    // Every call is timed: a clock read is little beside a round trip (ping
    // is neither timed nor counted).
    let started = -1
    if (stats !== undefined) {
      stats.calls++
      started = performance.now()
    }
    const call = { resolve: null, reject: null, kind, followers: undefined, reading: undefined, shared, stats, started }
    const answer = new Promise((resolve, reject) => {
      call.resolve = resolve
      call.reject = reject
    })
    this.#calls.set(id, call)
    try {
      this.#native[name](id, ...args)
    } catch (error) {
      this.#calls.delete(id)
      throw error
    }
    if (shared !== undefined) {
      call.followers = []
      call.reading = this.#reading
      this.#reading.set(shared, call)
    }
    if (!this.#flushing) {
      this.#flushing = true
      this.#queued = 1
      queueMicrotask(this.#flush)
    } else if (++this.#queued === WRITE_EARLY_AFTER) {
      this.#queued = 0
      const answers = this.#native.writeEarly()
      if (answers !== null) settle(this.#calls, answers, this.#whenDrained, this.#health)
    }
    return answer
  }

  /** What an adapter's stats() adds: whether Redis answers, the near cache, the fallback. */
  sharedStats() {
    return {
      connection: this.#health.snapshot(),
      nearCache: this.#nearCacheStats(),
      fallback: this.#fallback?.snapshot(),
    }
  }

  /** The near cache's `{ entries, bytes, hits }`, or undefined without one. */
  #nearCacheStats() {
    const size = this.#native.nearCacheSize
    return size === null ? undefined : { entries: size[0], bytes: size[1], hits: size[2] }
  }

  /** `{ entries, bytes }` the near cache holds, or undefined without one. */
  nearCacheSize() {
    const stats = this.#nearCacheStats()
    return stats && { entries: stats.entries, bytes: stats.bytes }
  }

  /** Refuses later calls; resolves once the calls in flight are answered. */
  close() {
    if (this.#closed === null) {
      this.#fallback?.close()
      // Calls made before close() are still sent.
      if (this.#flushing) this.#flush()
      this.#native.close()
      this.#closed =
        this.#calls.size === 0
          ? Promise.resolve()
          : new Promise((resolve) => {
              this.#whenDrained.resolve = resolve
            })
    }
    return this.#closed
  }
}

/** What every Redis connection takes (see `deployment` and `Connection`). */
const CONNECTION_OPTIONS = [
  'url',
  'cluster',
  'sentinel',
  'client',
  'setWithTTL',
  'username',
  'password',
  'db',
  'prefix',
  'connectTimeoutMs',
  'commandTimeoutMs',
  'spinMicros',
  'tls',
  'nearCache',
  'whenUnavailable',
]

/**
 * The options with a Stoma user's `client` read into where it points (see
 * lib/redis-client.js). The client says where Redis is, so url, cluster,
 * sentinel and credentials may not be given beside it; `setWithTTL`, which
 * Stoma needs for node-redis, has nothing to do here.
 */
function withClient(who, opts) {
  if (opts.setWithTTL !== undefined && typeof opts.setWithTTL !== 'function') {
    throw new TypeError(`${who}: setWithTTL must be a function, got ${describe(opts.setWithTTL)}`)
  }
  if (opts.client === undefined) return opts
  const clashing = ['url', 'cluster', 'sentinel', 'username', 'password', 'db'].filter(
    (name) => opts[name] !== undefined,
  )
  if (clashing.length > 0) {
    throw new TypeError(`${who}: client already says where Redis is; pass either client or ${clashing.join(', ')}`)
  }
  const { keyPrefix, ...fromClient } = clientOptions(who, opts.client, { readTls: opts.tls === undefined })
  if (keyPrefix !== undefined && opts.prefix !== undefined && typeof opts.prefix !== 'string') {
    throw new TypeError(`${who}: prefix must be a string, got ${describe(opts.prefix)}`)
  }
  // An ioredis keyPrefix goes before ours, where the client would put it.
  const prefix = keyPrefix === undefined ? opts.prefix : keyPrefix + (opts.prefix ?? DEFAULT_PREFIX)
  return { ...fromClient, ...opts, prefix, tls: opts.tls ?? fromClient.tls }
}

/**
 * A store's connection: its adapter's, one of its own from `options`, or,
 * in Stoma's shape `(client, prefix, setWithTTL)`, one to where `client`
 * points.
 */
function storeConnection(store, options, prefix, setWithTTL, known = CONNECTION_OPTIONS) {
  if (isClient(options)) {
    return { redis: new Connection(store, withClient(store, { client: options, prefix, setWithTTL })), owned: true }
  }
  if (prefix !== undefined || setWithTTL !== undefined) {
    throw new TypeError(
      `${store}: takes an options object ({ url, prefix, … }) or Stoma's (client, prefix), got ${describe(options)} and more arguments`,
    )
  }
  const opts = optionsObject(store, options)
  const shared = opts[SHARED_CONNECTION]
  if (shared !== undefined) return { redis: shared, owned: false }
  checkKnownKeys(store, opts, known)
  return { redis: new Connection(store, withClient(store, opts)), owned: true }
}

/**
 * What a store holds after destroy(): every operation throws (and so
 * rejects). A store that opened its own connection closes it.
 */
function destroyConnection(store, { redis, owned }) {
  if (owned) redis.close()
  const destroyed = {
    // What the store did stays readable, and goes on counting.
    counts: redis.counts,
    call() {
      throw new Error(`${store}: the store was destroyed`)
    },
    callOr() {
      throw new Error(`${store}: the store was destroyed`)
    },
  }
  return { redis: destroyed, owned: false }
}

// The native operation counting a hit, by rate-limit algorithm.
const INCREMENTS = { 'fixed-window': 'increment', 'sliding-window': 'slidingIncrement' }

/**
 * Rate-limit counters in Redis. Fixed windows (the default) are the same
 * integer counters Stoma's RedisRateLimitStore keeps, under
 * `<prefix>rl:<key>`; with `algorithm: 'sliding-window'` each key is a hash
 * under `<prefix>rls:<key>` (see docs/internals.md). Each increment is one
 * atomic script run by EVALSHA; windows are kept in milliseconds, so
 * fractional windows work, and anything else found under a key starts a
 * fresh window instead of failing.
 */
class RedisRateLimitStore {
  #connection
  #algorithm
  #increment

  constructor(options, prefix, setWithTTL) {
    const who = 'RedisRateLimitStore'
    const algorithm = isClient(options) ? undefined : options?.algorithm
    this.#algorithm = checkAlgorithm(who, algorithm)
    this.#increment = INCREMENTS[this.#algorithm]
    this.#connection = storeConnection(who, options, prefix, setWithTTL, [...CONNECTION_OPTIONS, 'algorithm'])
  }

  increment(key, windowSeconds) {
    try {
      checkKey('RedisRateLimitStore', key)
      checkSeconds('RedisRateLimitStore', windowSeconds, 'windowSeconds')
      return this.#connection.redis.callOr(
        (fallback) => fallback.rateLimit(this.#algorithm).increment(key, windowSeconds),
        this.#increment,
        key,
        windowSeconds * 1000,
      )
    } catch (error) {
      this.#connection.redis.counts.refused('rateLimit')
      return Promise.reject(error)
    }
  }

  /** What this store did (see lib/stats.js). */
  stats() {
    return this.#connection.redis.counts.rateLimit.snapshot()
  }

  /** Release this store (closing its connection if it opened one); later calls reject. */
  destroy() {
    this.#connection = destroyConnection('RedisRateLimitStore', this.#connection)
  }
}

/**
 * Circuit-breaker state in Redis under `<prefix>cb:<key>`: Stoma's JSON
 * snapshot with a 24-hour expiry. Every operation is one script run on the
 * server (read, change and write back atomically), so concurrent updates are
 * never lost; a missing or unreadable value is a fresh closed circuit.
 */
class RedisCircuitBreakerStore {
  #connection

  constructor(options, prefix, setWithTTL) {
    this.#connection = storeConnection('RedisCircuitBreakerStore', options, prefix, setWithTTL)
  }

  #run(operation, key, to) {
    try {
      checkKey('RedisCircuitBreakerStore', key)
      if (operation === 'circuitTransition') {
        checkCircuitState('RedisCircuitBreakerStore', to)
      }
      const args = operation === 'circuitTransition' ? [key, to] : [key]
      const local = (fallback) => LOCAL_CIRCUIT[operation](fallback.circuitBreaker, key, to)
      return this.#connection.redis.callOr(local, operation, ...args)
    } catch (error) {
      this.#connection.redis.counts.refused('circuitBreaker')
      return Promise.reject(error)
    }
  }

  getState(key) {
    return this.#run('circuitGet', key)
  }

  recordSuccess(key) {
    return this.#run('circuitRecordSuccess', key)
  }

  recordFailure(key) {
    return this.#run('circuitRecordFailure', key)
  }

  transition(key, to) {
    return this.#run('circuitTransition', key, to)
  }

  reset(key) {
    return this.#run('circuitReset', key)
  }

  /** What this store did (see lib/stats.js). */
  stats() {
    return this.#connection.redis.counts.circuitBreaker.snapshot()
  }

  /** Release this store (closing its connection if it opened one); later calls reject. */
  destroy() {
    this.#connection = destroyConnection('RedisCircuitBreakerStore', this.#connection)
  }
}

/**
 * Cached responses in Redis under `<prefix>cache:<key>`: the JSON envelope
 * (status, headers in order, base64 body) Stoma's RedisCacheStore writes,
 * expiring after the ttl. The envelope is encoded and decoded natively and
 * the body crosses as one buffer; an unreadable entry is a miss. A ttl of 0
 * stores nothing (and removes any older entry).
 */
class RedisCacheStore {
  #connection

  constructor(options, prefix, setWithTTL) {
    this.#connection = storeConnection('RedisCacheStore', options, prefix, setWithTTL)
  }

  get(key) {
    try {
      checkKey('RedisCacheStore', key)
      return this.#connection.redis.callOr(CACHE_WHILE_UNAVAILABLE.get, 'cacheGet', key)
    } catch (error) {
      this.#connection.redis.counts.refused('cache')
      return Promise.reject(error)
    }
  }

  async put(key, response, ttlSeconds) {
    let parts
    try {
      checkKey('RedisCacheStore', key)
      parts = await putParts('RedisCacheStore', response, ttlSeconds)
    } catch (error) {
      this.#connection.redis.counts.refused('cache')
      throw error
    }
    const { status, headers, body } = parts
    await this.#connection.redis.callOr(
      CACHE_WHILE_UNAVAILABLE.put,
      'cachePut',
      key,
      status,
      headers,
      body,
      ttlSeconds * 1000,
    )
  }

  delete(key) {
    try {
      checkKey('RedisCacheStore', key)
      return this.#connection.redis.callOr(CACHE_WHILE_UNAVAILABLE.delete, 'cacheDelete', key)
    } catch (error) {
      this.#connection.redis.counts.refused('cache')
      return Promise.reject(error)
    }
  }

  /** What this store did (see lib/stats.js). */
  stats() {
    return this.#connection.redis.counts.cache.snapshot()
  }

  /** Release this store (closing its connection if it opened one); later calls reject. */
  destroy() {
    this.#connection = destroyConnection('RedisCacheStore', this.#connection)
  }
}

/**
 * A GatewayAdapter whose stores live in Redis and share one connection,
 * interchangeable with Stoma's `redisAdapter` on the same server and prefix.
 * Returns at once and connects in the background; `close()` (idempotent)
 * lets the calls already made finish, resolving once they are answered, and
 * every later call rejects.
 */
function redisAdapter(options) {
  const opts = optionsObject('redisAdapter', options)
  checkKnownKeys('redisAdapter', opts, [...CONNECTION_OPTIONS, 'stores', 'waitUntil', 'rateLimit'])
  const stores = storeFlags('redisAdapter', opts.stores)
  const algorithm = rateLimitAlgorithm('redisAdapter', opts.rateLimit)
  const waitUntil = checkWaitUntil('redisAdapter', opts.waitUntil)
  const redis = new Connection('redisAdapter', withClient('redisAdapter', opts))
  const shared = { [SHARED_CONNECTION]: redis }
  const adapter = {}
  if (stores.rateLimit) adapter.rateLimitStore = new RedisRateLimitStore({ ...shared, algorithm })
  if (stores.circuitBreaker) adapter.circuitBreakerStore = new RedisCircuitBreakerStore(shared)
  if (stores.cache) adapter.cacheStore = new RedisCacheStore(shared)
  if (waitUntil) adapter.waitUntil = waitUntil
  adapter.close = () => redis.close()
  adapter.nearCacheSize = () => redis.nearCacheSize()
  adapter.stats = () => adapterStats(adapter, redis.sharedStats())
  return adapter
}

module.exports = {
  RedisRateLimitStore,
  RedisCircuitBreakerStore,
  RedisCacheStore,
  redisAdapter,
}
