'use strict'
// The PostgreSQL stores: thin JS shells over `src/postgres/`, which keeps a
// small pool of connections on tokio and runs one statement per call,
// prepared once per connection (or unnamed, once a pooler in transaction
// mode such as PgBouncer shows itself); writes that queue up behind a busy
// connection go together in one transaction, sharing one disk flush. They read and write the same tables
// as Stoma's postgresAdapter and take Stoma's shapes: `postgresAdapter({
// client })` with a pg Pool or Client or a postgres.js sql (whose settings
// lib/postgres-client.js reads; the client itself is never used), and the
// stores' `(client, table)`. Bad arguments, unknown option keys included,
// throw TypeError/RangeError; database failures reject with an Error naming
// the store and the cause.

const native = require('./native.js')
const {
  checkKey,
  checkSeconds,
  checkKnownKeys,
  positiveInteger,
  optionsObject,
  describe,
  tlsOption,
  checkCircuitState,
  storeFlags,
  rateLimitAlgorithm,
  checkAlgorithm,
  MAX_MS,
} = require('./validate.js')
const { putParts, buildResponse } = require('./response.js')
const { checkWaitUntil } = require('./adapters.js')
const { clientOptions, isClient } = require('./postgres-client.js')
const {
  Fallback,
  UNAVAILABLE,
  whenUnavailableOption,
  CACHE_WHILE_UNAVAILABLE,
  LOCAL_CIRCUIT,
} = require('./fallback.js')
const { StoresStats, STORE_OF, microsSince, adapterStats } = require('./stats.js')
const { Health, isTracing, traced } = require('./diagnostics.js')

const DEFAULT_URL = 'postgres://postgres@127.0.0.1:5432/postgres'
const DEFAULT_PREFIX = 'stoma_'
const DEFAULT_POOL_SIZE = 4
// Connections are opened lazily but their slots up front; PostgreSQL's
// default max_connections is 100.
const MAX_POOL_SIZE = 1000
const DEFAULT_CONNECT_TIMEOUT_MS = 2000
const DEFAULT_STATEMENT_TIMEOUT_MS = 1000

// Table names are pasted into SQL, so the prefix must be a plain identifier.
const TABLE_PREFIX = /^[A-Za-z_][A-Za-z0-9_]{0,40}$/

// PostgreSQL text cannot hold NUL, and a key is a primary key whose btree
// entry holds at most ~2.7 kB; refuse such keys before a round trip.
const MAX_KEY_BYTES = 2600

function checkPostgresKey(store, key) {
  checkKey(store, key)
  if (key.includes('\0')) {
    throw new RangeError(`${store}: key must not contain NUL (PostgreSQL text cannot hold it)`)
  }
  if (key.length > MAX_KEY_BYTES / 3) {
    const bytes = Buffer.byteLength(key, 'utf8')
    if (bytes > MAX_KEY_BYTES) {
      throw new RangeError(
        `${store}: key must be at most ${MAX_KEY_BYTES} bytes of UTF-8 (PostgreSQL's index entry limit), got ${bytes}`,
      )
    }
  }
}

// Lets postgresAdapter() hand its stores one shared backend; stores built
// directly open their own.
const SHARED = Symbol('stoma-native: shared PostgreSQL backend')

function checkTablePrefix(who, value) {
  if (typeof value !== 'string') {
    throw new TypeError(`${who}: tablePrefix must be a string, got ${describe(value)}`)
  }
  if (!TABLE_PREFIX.test(value)) {
    throw new RangeError(
      `${who}: tablePrefix must match ${TABLE_PREFIX} (letters, digits and underscores, not starting with a digit, at most 41 characters), got ${describe(value)}`,
    )
  }
  return value
}

/** `POSTGRES_SCHEMA_SQL` for tables named with another prefix. */
function postgresSchemaSql(tablePrefix = DEFAULT_PREFIX) {
  return native.postgresSchemaSql(checkTablePrefix('postgresSchemaSql', tablePrefix))
}

/** The DDL for the default `stoma_` tables: the same text as Stoma's. */
const POSTGRES_SCHEMA_SQL = postgresSchemaSql(DEFAULT_PREFIX)

/** What every store (and so the adapter) takes. */
const STORE_OPTIONS = [
  'url',
  'client',
  'tls',
  'tablePrefix',
  'poolSize',
  'connectTimeoutMs',
  'statementTimeoutMs',
  'synchronousCommit',
  'cleanupIntervalMs',
  'whenUnavailable',
]
const ADAPTER_OPTIONS = [...STORE_OPTIONS, 'stores', 'waitUntil', 'rateLimit']

/**
 * The options with a Stoma user's `client` read into where it points (see
 * lib/postgres-client.js). The client says where PostgreSQL is, so url may
 * not be given beside it; `tls`, if given, replaces the client's own TLS
 * settings.
 */
function withClient(who, opts) {
  if (opts.client === undefined) return opts
  if (opts.url !== undefined) {
    throw new TypeError(`${who}: client already says where PostgreSQL is; pass either client or url`)
  }
  const fromClient = clientOptions(who, opts.client, { readTls: opts.tls === undefined })
  return { ...opts, url: fromClient.url, tls: opts.tls ?? fromClient.tls }
}

/**
 * The native pool, what its stores did (stats), whether PostgreSQL answers,
 * and, with `whenUnavailable: 'memory'`, the memory that answers while it
 * does not (see lib/fallback.js).
 */
class Backend {
  #pool
  #fallback
  counts = new StoresStats()
  #health = new Health('postgres')

  constructor(pool, whenUnavailable) {
    this.#pool = pool
    // The probe holds the pool weakly: an adapter dropped during an outage
    // is collected, and its probing stops.
    const weak = new WeakRef(pool)
    this.#fallback =
      whenUnavailable === 'memory' ? new Fallback('postgres', () => weak.deref()?.ping() ?? Promise.resolve()) : null
  }

  /**
   * Native operation `name` with `args`; while PostgreSQL is unavailable
   * (with whenUnavailable: 'memory'), `local(fallback)` instead.
   */
  call(local, name, ...args) {
    if (isTracing()) return traced('postgres', name, args[0], () => this.#call(local, name, args))
    return this.#call(local, name, args)
  }

  #call(local, name, args) {
    const stats = this.counts[STORE_OF[name]]
    if (this.#fallback === null) return this.#remote(stats, name, args)
    return this.#fallback.run(
      stats,
      () => this.#remote(stats, name, args),
      () => local(this.#fallback),
    )
  }

  /** The native call, counted, its error coded STORE_UNAVAILABLE when PostgreSQL did not answer. */
  #remote(stats, name, args) {
    stats.calls++
    const started = performance.now()
    const health = this.#health
    return this.#pool[name](...args).then(
      (value) => {
        health.answered()
        stats.latency.record(microsSince(started))
        if (name === 'cacheGet') {
          if (value === null) stats.misses++
          else stats.hits++
        }
        return value
      },
      (error) => {
        const unavailable = markUnavailable(error)
        if (unavailable) health.unavailable(error.message)
        stats.failed(unavailable, error.message)
        throw error
      },
    )
  }

  /** What an adapter's stats() adds: whether PostgreSQL answers, the pool, the fallback. */
  sharedStats() {
    const [size, open, pooler] = this.#pool.poolUsage
    return {
      connection: this.#health.snapshot(),
      pool: { size, open, behindPooler: pooler === 1 },
      fallback: this.#fallback?.snapshot(),
    }
  }

  ensureSchema() {
    return this.#pool.ensureSchema().catch((error) => {
      markUnavailable(error)
      throw error
    })
  }

  close() {
    this.#fallback?.close()
    this.#pool.close()
  }
}

/**
 * Gives `error` the code STORE_UNAVAILABLE if PostgreSQL did not answer
 * (the native side marks those with napi's 'Cancelled' status); answers
 * whether it did.
 */
function markUnavailable(error) {
  if (error?.code !== 'Cancelled') return false
  error.code = UNAVAILABLE
  return true
}

/** Opens the backend described by `opts` (connecting lazily). */
function openBackend(who, options, cleans) {
  const opts = withClient(who, options)
  const whenUnavailable = whenUnavailableOption(who, opts.whenUnavailable)
  const url = opts.url ?? (process.env.DATABASE_URL || DEFAULT_URL)
  if (typeof url !== 'string') throw new TypeError(`${who}: url must be a string, got ${describe(url)}`)
  const cleanupIntervalMs = positiveInteger(who, opts.cleanupIntervalMs, 'cleanupIntervalMs', undefined, MAX_MS)
  const synchronousCommit = opts.synchronousCommit ?? true
  if (typeof synchronousCommit !== 'boolean') {
    throw new TypeError(`${who}: synchronousCommit must be a boolean, got ${describe(synchronousCommit)}`)
  }
  const settings = {
    url,
    ...tlsOption(who, opts.tls),
    tablePrefix: checkTablePrefix(who, opts.tablePrefix ?? DEFAULT_PREFIX),
    poolSize: positiveInteger(who, opts.poolSize, 'poolSize', DEFAULT_POOL_SIZE, MAX_POOL_SIZE),
    connectTimeoutMs: positiveInteger(
      who,
      opts.connectTimeoutMs,
      'connectTimeoutMs',
      DEFAULT_CONNECT_TIMEOUT_MS,
      MAX_MS,
    ),
    statementTimeoutMs: positiveInteger(
      who,
      opts.statementTimeoutMs,
      'statementTimeoutMs',
      DEFAULT_STATEMENT_TIMEOUT_MS,
      MAX_MS,
    ),
    synchronousCommit,
    cleanupIntervalMs,
    cleanupRateLimits: cleans.rateLimit === true,
    cleanupSlidingWindows: cleans.slidingWindow === true,
    cleanupCache: cleans.cache === true,
  }
  let pool
  try {
    pool = new native.NativePostgres(settings)
  } catch (error) {
    // A url, or a tls.ca, tls.cert, tls.key or tls.servername, the native
    // side cannot use.
    if (error?.code === 'InvalidArg') throw new TypeError(error.message)
    throw error
  }
  return new Backend(pool, whenUnavailable)
}

/**
 * A store's options from either shape: ours (`{ url | client, tablePrefix,
 * … }`, unknown keys refused) or Stoma's `(client, table)`, whose full table
 * name ends in the store's own (`stoma_rate_limits` → tablePrefix `stoma_`).
 */
function storeOptions(store, table, options, tableName, known = STORE_OPTIONS) {
  if (isClient(options)) {
    if (tableName === undefined) return { client: options }
    const shape = `new ${store}(client, '${DEFAULT_PREFIX}${table}') or new ${store}({ client, tablePrefix: '${DEFAULT_PREFIX}' })`
    if (typeof tableName !== 'string' || !tableName.endsWith(table)) {
      throw new TypeError(
        `${store}: the table must be named <tablePrefix>${table}, got ${describe(tableName)}; pass ${shape}`,
      )
    }
    const tablePrefix = tableName.slice(0, -table.length)
    if (!TABLE_PREFIX.test(tablePrefix)) {
      throw new RangeError(
        `${store}: the table must be named <tablePrefix>${table} with tablePrefix matching ${TABLE_PREFIX}, got ${describe(tableName)}`,
      )
    }
    return { client: options, tablePrefix }
  }
  if (tableName !== undefined) {
    throw new TypeError(
      `${store}: takes an options object ({ url, tablePrefix, … }) or Stoma's (client, table), got ${describe(options)} and a second argument`,
    )
  }
  const opts = optionsObject(store, options)
  if (opts[SHARED] === undefined) checkKnownKeys(store, opts, known)
  return opts
}

/**
 * What each store holds: the backend (shared with the other stores of an
 * adapter, or its own) and whether this store was closed.
 */
class Handle {
  #who
  #backend
  #owned
  #closed = false

  /** `opts` as `storeOptions()` answers them. */
  constructor(who, opts, cleans) {
    this.#who = who
    this.#owned = opts[SHARED] === undefined
    this.#backend = this.#owned ? openBackend(who, opts, cleans) : opts[SHARED]
  }

  /** `Backend.call`, or a throw if the store was closed. */
  call(local, name, ...args) {
    if (this.#closed) throw new Error(`${this.#who}: the store was closed (close() was called)`)
    return this.#backend.call(local, name, ...args)
  }

  /** The call is refused: counts it, answers `error` rejected. */
  refused(name, error) {
    this.#backend.counts.refused(name)
    return Promise.reject(error)
  }

  /** What the store `name` did (see lib/stats.js). */
  stats(name) {
    return this.#backend.counts[name].snapshot()
  }

  /**
   * Later calls reject. A store built directly also closes its connections;
   * one from postgresAdapter() leaves them to the adapter's close().
   */
  close() {
    this.#closed = true
    if (this.#owned) this.#backend.close()
    return Promise.resolve()
  }
}

/** What a cleanup answers while PostgreSQL is unavailable: nothing deleted. */
const NOTHING_CLEANED = () => Promise.resolve(0)

// What each rate-limit algorithm runs natively: a hit, a cleanup, and the
// background cleanup it asks for.
const RATE_LIMIT_OPERATIONS = {
  'fixed-window': { increment: 'increment', cleanup: 'cleanupRateLimits', cleans: { rateLimit: true } },
  'sliding-window': {
    increment: 'slidingIncrement',
    cleanup: 'cleanupSlidingWindows',
    cleans: { slidingWindow: true },
  },
}

/**
 * Rate-limit counters, one atomic upsert per hit: fixed windows (the
 * default) in `<tablePrefix>rate_limits`, Stoma's table; with `algorithm:
 * 'sliding-window'`, sliding windows in `<tablePrefix>sliding_windows`
 * (ours; see docs/internals.md). `cleanup()` deletes expired windows
 * (answering how many); with `cleanupIntervalMs` that also happens in the
 * background.
 */
class PostgresRateLimitStore {
  #handle
  #algorithm
  #operations

  /** `options`, or Stoma's `(client, '<tablePrefix>rate_limits')`. */
  constructor(options, table) {
    const who = 'PostgresRateLimitStore'
    const opts = storeOptions(who, 'rate_limits', options, table, [...STORE_OPTIONS, 'algorithm'])
    this.#algorithm = checkAlgorithm(who, opts.algorithm)
    this.#operations = RATE_LIMIT_OPERATIONS[this.#algorithm]
    this.#handle = new Handle(who, opts, this.#operations.cleans)
  }

  increment(key, windowSeconds) {
    try {
      checkPostgresKey('PostgresRateLimitStore', key)
      checkSeconds('PostgresRateLimitStore', windowSeconds, 'windowSeconds')
      return this.#handle.call(
        (fallback) => fallback.rateLimit(this.#algorithm).increment(key, windowSeconds),
        this.#operations.increment,
        key,
        windowSeconds * 1000,
      )
    } catch (error) {
      return this.#handle.refused('rateLimit', error)
    }
  }

  cleanup() {
    try {
      return this.#handle.call(NOTHING_CLEANED, this.#operations.cleanup)
    } catch (error) {
      return this.#handle.refused('rateLimit', error)
    }
  }

  /** What this store did (see lib/stats.js). */
  stats() {
    return this.#handle.stats('rateLimit')
  }

  /** Later calls reject; a store built directly also closes its connections. */
  close() {
    return this.#handle.close()
  }

  /** Same as close(), for Stoma's optional `destroy()`. */
  destroy() {
    this.#handle.close()
  }
}

/**
 * Circuit-breaker state in `<tablePrefix>circuit_breakers` with Stoma's
 * transitions. Every update is one atomic upsert, so concurrent failures
 * from any number of gateways are all counted, and `transition()` works
 * (Stoma's fails on PostgreSQL, so its circuits never open there).
 */
class PostgresCircuitBreakerStore {
  #handle

  /** `options`, or Stoma's `(client, '<tablePrefix>circuit_breakers')`. */
  constructor(options, table) {
    this.#handle = new Handle(
      'PostgresCircuitBreakerStore',
      storeOptions('PostgresCircuitBreakerStore', 'circuit_breakers', options, table),
      {},
    )
  }

  #run(operation, key, to) {
    try {
      checkPostgresKey('PostgresCircuitBreakerStore', key)
      if (operation === 'circuitTransition') checkCircuitState('PostgresCircuitBreakerStore', to)
      const args = operation === 'circuitTransition' ? [key, to] : [key]
      const local = (fallback) => LOCAL_CIRCUIT[operation](fallback.circuitBreaker, key, to)
      return this.#handle.call(local, operation, ...args)
    } catch (error) {
      return this.#handle.refused('circuitBreaker', error)
    }
  }

  /** What this store did (see lib/stats.js). */
  stats() {
    return this.#handle.stats('circuitBreaker')
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

  /** Later calls reject; a store built directly also closes its connections. */
  close() {
    return this.#handle.close()
  }

  /** Same as close(), for Stoma's optional `destroy()`. */
  destroy() {
    this.#handle.close()
  }
}

/**
 * Cached responses in `<tablePrefix>cache` (status, headers as JSONB, body
 * as base64, as Stoma writes them). `get` answers a fresh `Response`, or
 * null once expired or if the row is not a well-formed response.
 * `cleanup()` deletes expired rows.
 */
class PostgresCacheStore {
  #handle

  /** `options`, or Stoma's `(client, '<tablePrefix>cache')`. */
  constructor(options, table) {
    this.#handle = new Handle('PostgresCacheStore', storeOptions('PostgresCacheStore', 'cache', options, table), {
      cache: true,
    })
  }

  get(key) {
    try {
      checkPostgresKey('PostgresCacheStore', key)
      return this.#handle
        .call(CACHE_WHILE_UNAVAILABLE.get, 'cacheGet', key)
        .then((hit) => hit && buildResponse(hit.status, hit.headers, hit.body))
    } catch (error) {
      return this.#handle.refused('cache', error)
    }
  }

  async put(key, response, ttlSeconds) {
    let parts
    try {
      checkPostgresKey('PostgresCacheStore', key)
      parts = await putParts('PostgresCacheStore', response, ttlSeconds)
    } catch (error) {
      return this.#handle.refused('cache', error)
    }
    const { status, headers, body } = parts
    await this.#handle.call(CACHE_WHILE_UNAVAILABLE.put, 'cachePut', key, status, headers, body, ttlSeconds * 1000)
  }

  delete(key) {
    try {
      checkPostgresKey('PostgresCacheStore', key)
      return this.#handle.call(CACHE_WHILE_UNAVAILABLE.delete, 'cacheDelete', key)
    } catch (error) {
      return this.#handle.refused('cache', error)
    }
  }

  cleanup() {
    try {
      return this.#handle.call(NOTHING_CLEANED, 'cleanupCache')
    } catch (error) {
      return this.#handle.refused('cache', error)
    }
  }

  /** What this store did (see lib/stats.js). */
  stats() {
    return this.#handle.stats('cache')
  }

  /** Later calls reject; a store built directly also closes its connections. */
  close() {
    return this.#handle.close()
  }

  /** Same as close(), for Stoma's optional `destroy()`. */
  destroy() {
    this.#handle.close()
  }
}

/**
 * A GatewayAdapter whose stores live in PostgreSQL, in the same tables as
 * Stoma's postgresAdapter. Returns at once and connects on first use. Adds
 * `ensureSchema()` (create the tables if missing) and `close()` (stop
 * background cleanup and close every connection; idempotent).
 *
 * Writes are as durable as the server's own setting unless you opt into
 * `synchronousCommit: false`: then a write returns before PostgreSQL has
 * flushed it to disk, so a database crash can lose the last fraction of a
 * second of counters, circuit states and cache entries (never corrupting
 * them), while writes no longer wait for the disk. Each write statement
 * sets it for its own transaction (like `SET LOCAL`), never on the session,
 * so behind a pooler it changes nothing for the pooler's other clients.
 */
function postgresAdapter(options) {
  const who = 'postgresAdapter'
  const opts = optionsObject(who, options)
  checkKnownKeys(who, opts, ADAPTER_OPTIONS)
  const enabled = storeFlags(who, opts.stores)
  const algorithm = rateLimitAlgorithm(who, opts.rateLimit)
  checkWaitUntil(who, opts.waitUntil)
  // Background cleanup, if asked for, of the tables the stores use.
  const backend = openBackend(who, opts, {
    cache: enabled.cache,
    ...(enabled.rateLimit && RATE_LIMIT_OPERATIONS[algorithm].cleans),
  })
  const shared = { [SHARED]: backend }
  const adapter = {}
  if (enabled.rateLimit) adapter.rateLimitStore = new PostgresRateLimitStore({ ...shared, algorithm })
  if (enabled.circuitBreaker) adapter.circuitBreakerStore = new PostgresCircuitBreakerStore(shared)
  if (enabled.cache) adapter.cacheStore = new PostgresCacheStore(shared)
  if (opts.waitUntil) adapter.waitUntil = opts.waitUntil
  adapter.ensureSchema = () => backend.ensureSchema()
  adapter.stats = () => adapterStats(adapter, backend.sharedStats())
  adapter.close = () => {
    backend.close()
    return Promise.resolve()
  }
  return adapter
}

module.exports = {
  postgresAdapter,
  postgresSchemaSql,
  POSTGRES_SCHEMA_SQL,
  PostgresRateLimitStore,
  PostgresCircuitBreakerStore,
  PostgresCacheStore,
}
