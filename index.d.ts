// Types for stoma-native. They restate Stoma's store and adapter shapes
// (from @homegrower-club/stoma 0.1.0-rc.5) so this package needs no runtime
// or type dependency on Stoma; __test__/types.ts checks they stay assignable.

export type CircuitState = 'closed' | 'open' | 'half-open'

export interface CircuitBreakerSnapshot {
  state: CircuitState
  failureCount: number
  successCount: number
  /** Epoch ms of the most recent failure; 0 if none. */
  lastFailureTime: number
  /** Epoch ms of the most recent state transition. */
  lastStateChange: number
}

export interface RateLimitStore {
  increment(key: string, windowSeconds: number): Promise<{ count: number; resetAt: number }>
  destroy?(): void
}

/** An adapter's `rateLimit` option. */
export interface RateLimitOptions {
  algorithm?: RateLimitAlgorithm
}

export interface CircuitBreakerStore {
  getState(key: string): Promise<CircuitBreakerSnapshot>
  recordSuccess(key: string): Promise<CircuitBreakerSnapshot>
  recordFailure(key: string): Promise<CircuitBreakerSnapshot>
  transition(key: string, to: CircuitState): Promise<CircuitBreakerSnapshot>
  reset(key: string): Promise<void>
  destroy?(): void
}

export interface CacheStore {
  get(key: string): Promise<Response | null>
  put(key: string, response: Response, ttlSeconds: number): Promise<void>
  delete(key: string): Promise<boolean>
  destroy?(): void
}

export interface GatewayAdapter {
  rateLimitStore?: RateLimitStore
  circuitBreakerStore?: CircuitBreakerStore
  cacheStore?: CacheStore
  waitUntil?: (promise: Promise<unknown>) => void
  dispatchBinding?: (service: string, request: Request) => Promise<Response>
}

/**
 * How a rate-limit store counts (docs/sliding-window.md): 'fixed-window' (the default, Stoma's: a
 * window opens at a key's first hit) or 'sliding-window' (windows aligned to multiples of their
 * length; the count adds the previous window's hits scaled by its share still inside the rolling
 * window, so `max` at the end of one window and `max` at the start of the next cannot both pass).
 */
export type RateLimitAlgorithm = 'fixed-window' | 'sliding-window'

export interface MemoryRateLimitStoreOptions {
  /** Most keys held at once (default 100,000); beyond it new keys fail closed. */
  maxKeys?: number
  /** 'fixed-window' (default) or 'sliding-window'; a `name` shares counters only between stores of one algorithm. */
  algorithm?: RateLimitAlgorithm
  /**
   * Share one state with every store of this name in the process, worker threads included. A named
   * state lives as long as the process, whatever stores come and go (a worker pool that recycles
   * its workers keeps its counts), bounded by the limits of the first store created under the
   * name, until {@link releaseMemoryState}. Without a name the state is this store's alone.
   */
  name?: string
}

export interface MemoryCircuitBreakerStoreOptions {
  /** Most circuits held at once (default 10,000); the least recently used is forgotten. */
  maxKeys?: number
  /** A shared state for the life of the process, as {@link MemoryRateLimitStoreOptions.name}. */
  name?: string
}

export interface MemoryCacheStoreOptions {
  /** Most entries held (default 10,000); least recently used evicted first. */
  maxEntries?: number
  /** Most bytes held, counting keys, headers, bodies and 224 bytes per entry (default 64 MiB). */
  maxBytes?: number
  /** A shared state for the life of the process, as {@link MemoryRateLimitStoreOptions.name}. */
  name?: string
}

/**
 * Forget the memory state named `name`: the rate-limit counters, circuits and cache of every store
 * (and adapter) created with that name, in any worker thread. Stores created under the name
 * afterwards start fresh. Stores created before keep the released state until they are destroyed
 * or collected, when its memory is freed, so release a name once nothing uses it; `reset()` /
 * `clear()` empty a state in place instead. Returns whether a state was registered under the name.
 * Throws a TypeError unless `name` is a non-empty string.
 */
export declare function releaseMemoryState(name: string): boolean

/**
 * What a store did since it was made, from `stats()` (README: Operations). Counted on the JS
 * thread, exactly; a store built with a shared memory `name` counts its own calls only.
 */
export interface StoreStats {
  /** Every call made, bad arguments included. */
  calls: number
  /** Calls that rejected, or (with `whenUnavailable: 'memory'`) that the server failed before memory answered. */
  errors: number
  /** Of the errors, those the server did not answer (refused, lost, timed out): code `STORE_UNAVAILABLE`. */
  unavailable: number
  /** Of those, the ones that waited out a timeout (`commandTimeoutMs`, `statementTimeoutMs`, `connectTimeoutMs`). */
  timeouts: number
  /** Calls answered from memory while the server was unavailable (`whenUnavailable: 'memory'`). */
  local: number
  /**
   * How long calls took, in µs, from a fixed-bucket histogram (4 buckets per power of two, so a
   * figure is the bucket's upper bound, within 25 %). Network stores time every call; memory stores
   * one in 64 (`timed` says how many); null until one is timed.
   */
  latencyMicros: { timed: number; p50: number | null; p99: number | null }
  /** Memory stores: keys, circuits or entries held. */
  size?: number
  /** Memory cache store: bytes charged against maxBytes. */
  bytes?: number
  /** Memory cache and circuit stores: entries or circuits removed to make room (of the state, shared under a name). */
  evictions?: number
}

/** A cache store's stats: also the hits and misses of `get`. */
export interface CacheStoreStats extends StoreStats {
  hits: number
  misses: number
}

/** An adapter's `stats()`: its stores', and what they share. */
export interface AdapterStats {
  rateLimit?: StoreStats
  circuitBreaker?: StoreStats
  cache?: CacheStoreStats
  /** Network adapters: whether the server answers, as the calls find it, how often it stopped, and (Sentinel) how often the primary moved. */
  connection?: { state: 'unknown' | 'up' | 'down'; outages: number; failovers: number }
  /** PostgreSQL: connections it may open, those open now, whether a pooler in transaction mode was found. */
  pool?: { size: number; open: number; behindPooler: boolean }
  /** Redis with `nearCache`: the copies held, and the reads answered from one. */
  nearCache?: { entries: number; bytes: number; hits: number }
  /** With `whenUnavailable: 'memory'`: whether memory answers now, and how many times it took over. */
  fallback?: { active: boolean; entered: number }
}

/** Fixed- or sliding-window counters kept natively, bounded, O(1) at capacity. */
export declare class MemoryRateLimitStore implements RateLimitStore {
  constructor(options?: MemoryRateLimitStoreOptions | number)
  increment(key: string, windowSeconds: number): Promise<{ count: number; resetAt: number }>
  /** Number of keys held. */
  readonly size: number
  /** What this store did (see {@link StoreStats}). */
  stats(): StoreStats
  /** Forget every counter (of every store sharing the name). */
  reset(): void
  /** Release this store; later calls reject. A named state outlives it, until {@link releaseMemoryState}. */
  destroy(): void
}

/** Circuit state kept natively with Stoma's transitions, bounded by key count. */
export declare class MemoryCircuitBreakerStore implements CircuitBreakerStore {
  constructor(options?: MemoryCircuitBreakerStoreOptions)
  getState(key: string): Promise<CircuitBreakerSnapshot>
  recordSuccess(key: string): Promise<CircuitBreakerSnapshot>
  recordFailure(key: string): Promise<CircuitBreakerSnapshot>
  transition(key: string, to: CircuitState): Promise<CircuitBreakerSnapshot>
  reset(key: string): Promise<void>
  /** What this store did (see {@link StoreStats}). */
  stats(): StoreStats
  /** Number of circuits held. */
  readonly size: number
  /** Remove every circuit. */
  clear(): void
  /** Release this store; later calls reject. A named state outlives it, until {@link releaseMemoryState}. */
  destroy(): void
}

/** Responses kept natively, bounded by entries and bytes, evicted LRU. */
export declare class MemoryCacheStore implements CacheStore {
  constructor(options?: MemoryCacheStoreOptions)
  get(key: string): Promise<Response | null>
  put(key: string, response: Response, ttlSeconds: number): Promise<void>
  delete(key: string): Promise<boolean>
  /** Number of entries held. */
  readonly size: number
  /** What this store did (see {@link CacheStoreStats}). */
  stats(): CacheStoreStats
  /** Bytes charged against maxBytes. */
  readonly bytes: number
  /** Remove every entry. */
  clear(): void
  /** Release this store; later calls reject. A named state outlives it, until {@link releaseMemoryState}. */
  destroy(): void
}

export interface MemoryAdapterOptions {
  /**
   * Share one native state with every adapter (and store) of this name in the process, worker
   * threads included, for the life of the process: it outlives close() and the adapters, until
   * {@link releaseMemoryState}. Its bounds are those of the first adapter or store created under it.
   */
  name?: string
  rateLimit?: { maxKeys?: number; algorithm?: RateLimitAlgorithm }
  circuitBreaker?: { maxKeys?: number }
  cache?: { maxEntries?: number; maxBytes?: number }
  waitUntil?: (promise: Promise<unknown>) => void
}

export interface MemoryGatewayAdapter extends GatewayAdapter {
  rateLimitStore: MemoryRateLimitStore
  circuitBreakerStore: MemoryCircuitBreakerStore
  cacheStore: MemoryCacheStore
  /**
   * Destroy the three stores (idempotent); later calls on them reject, as after closing a Redis or
   * PostgreSQL adapter, so shutdown code can close every adapter alike. Resolves at once. A named
   * state outlives it, until {@link releaseMemoryState}.
   */
  close(): Promise<void>
  /** What each store did, and what they share (see {@link AdapterStats}). */
  stats(): AdapterStats
}

export declare function memoryAdapter(options?: MemoryAdapterOptions): MemoryGatewayAdapter
export declare function nodeAdapter(options?: MemoryAdapterOptions): MemoryGatewayAdapter
export declare function bunAdapter(options?: MemoryAdapterOptions): MemoryGatewayAdapter
export declare function denoAdapter(options?: MemoryAdapterOptions): MemoryGatewayAdapter

/** Native memory stores plus a waitUntil that collects background work for waitAll(). */
export declare class TestAdapter implements MemoryGatewayAdapter {
  constructor(options?: Omit<MemoryAdapterOptions, 'waitUntil'>)
  rateLimitStore: MemoryRateLimitStore
  circuitBreakerStore: MemoryCircuitBreakerStore
  cacheStore: MemoryCacheStore
  waitUntil: (promise: Promise<unknown>) => void
  /** Await until nothing is pending, including work queued while waiting. */
  waitAll(): Promise<void>
  /** Forget pending background work. */
  reset(): void
  /** Destroy the stores, as memoryAdapter's close() does; pending work is left alone. */
  close(): Promise<void>
  /** What each store did, and what they share (see {@link AdapterStats}). */
  stats(): AdapterStats
}

export declare function createTestAdapter(options?: Omit<MemoryAdapterOptions, 'waitUntil'>): TestAdapter

/**
 * A PostgreSQL client from npm — node-postgres (`pg`) `Pool` or `Client`, or a postgres.js `sql`
 * (`postgres(url)` / `postgres({ … })`) — connected or not. Only where it points is read (host and
 * port or socket, user, password, database, startup options such as `search_path`, TLS); it is never
 * used for queries. A password given as a function, a custom stream or socket, or `ssl` with
 * `rejectUnauthorized: false` cannot be honoured: pass `url` (and `tls: { ca }`) instead.
 */
export type PostgresClientLike = object

/** What every PostgreSQL store takes besides where the database is. */
export interface PostgresCommonOptions {
  /**
   * TLS (`sslmode=require` unless the url sets an sslmode): `true`, or settings as Node's
   * `tls.connect()` names them: `ca` (PEM certificates trusted instead of Mozilla's roots), `cert` +
   * `key` (a client certificate, for servers that ask for one), `servername` (the name the server's
   * certificate must carry, when not its host's). A certificate presented is always checked, with the
   * server name. Beside `client`, it replaces the client's own `ssl` settings.
   */
  tls?: boolean | TlsOptions
  /** Table name prefix, matching /^[A-Za-z_][A-Za-z0-9_]{0,40}$/ (default `"stoma_"`). */
  tablePrefix?: string
  /**
   * Most connections opened (default 4). Calls that queue behind a busy
   * connection go together: writes in one transaction, sharing one disk flush.
   */
  poolSize?: number
  /** Longest wait for a connection, in ms (default 2000). */
  connectTimeoutMs?: number
  /** Longest wait for a statement's answer, queueing included, in ms (default 1000). */
  statementTimeoutMs?: number
  /** Delete expired rows this often, in ms, off the JS thread (default: never). */
  cleanupIntervalMs?: number
  /**
   * What a rate-limit or circuit call does when PostgreSQL does not answer (refused, lost, timed out):
   * `'reject'` (default) rejects it with an Error whose `code` is `'STORE_UNAVAILABLE'` (Stoma's
   * policies then fail open); `'memory'` answers it, and every call after it at once, from memory
   * in this process (limits hold per instance; cache calls miss) while PostgreSQL is asked every 250 ms
   * whether it is back. Local counts are then dropped, not merged back (see the README).
   */
  whenUnavailable?: 'reject' | 'memory'
  /**
   * Whether each write waits until PostgreSQL has flushed it to disk
   * (`synchronous_commit`). Default true, like Stoma's: an acknowledged write
   * survives a database crash. `false` trades the last fraction of a second
   * of updates on a crash for several times the write throughput. Each
   * write sets it for its own transaction only, so it is safe behind a pooler.
   */
  synchronousCommit?: boolean
}

/** Where the database is: a connection string (`url`), or Stoma's way, a client (`client`). */
export type PostgresStoreOptions = PostgresCommonOptions &
  (
    | {
        /**
         * Connection string (`postgres://user:pass@host:port/db` or `key=value`
         * form). Default: `process.env.DATABASE_URL`, then
         * `postgres://postgres@127.0.0.1:5432/postgres`. Its `sslmode` says whether TLS is used:
         * `require` (certificate and name checked; `verify-ca` / `verify-full` mean the same), `prefer` (TLS if the server offers it, else
         * plaintext) or `disable`; without one, the `tls` option does (default: no TLS).
         */
        url?: string
        client?: never
      }
    | {
        /** Stoma's way: the client whose settings say where PostgreSQL is (see `PostgresClientLike`). */
        client: PostgresClientLike
        url?: never
      }
  )

/** Which stores an adapter creates (all by default). */
export interface PostgresStoresOption {
  rateLimit?: boolean
  circuitBreaker?: boolean
  cache?: boolean
}

export type PostgresAdapterOptions<S extends PostgresStoresOption = PostgresStoresOption> = PostgresStoreOptions & {
  stores?: S
  waitUntil?: (promise: Promise<unknown>) => void
  /** How its rate-limit store counts (default fixed windows, Stoma's). */
  rateLimit?: RateLimitOptions
}

/**
 * Counters, one atomic upsert per hit: fixed windows in `<tablePrefix>rate_limits` (Stoma's table), or
 * with `algorithm: 'sliding-window'` sliding ones in `<tablePrefix>sliding_windows` (ours, made by
 * `ensureSchema()`).
 */
export declare class PostgresRateLimitStore implements RateLimitStore {
  constructor(options?: PostgresStoreOptions & { algorithm?: RateLimitAlgorithm })
  /**
   * Stoma's shape: its own connections to where `client` points, on `table`, the full table name
   * (default `"stoma_rate_limits"`), which must end in `rate_limits`: what comes before is the table prefix.
   */
  constructor(client: PostgresClientLike, table?: string)
  increment(key: string, windowSeconds: number): Promise<{ count: number; resetAt: number }>
  /** Delete expired windows; resolves to how many were deleted. */
  cleanup(): Promise<number>
  /** Later calls reject; a store built directly also closes its connections. */
  close(): Promise<void>
  destroy(): void
  /** What this store did (see {@link StoreStats}). */
  stats(): StoreStats
}

/** Circuit state in `<tablePrefix>circuit_breakers`; every update one atomic statement. */
export declare class PostgresCircuitBreakerStore implements CircuitBreakerStore {
  constructor(options?: PostgresStoreOptions)
  /**
   * Stoma's shape: its own connections to where `client` points, on `table`, the full table name
   * (default `"stoma_circuit_breakers"`), which must end in `circuit_breakers`: what comes before is the table prefix.
   */
  constructor(client: PostgresClientLike, table?: string)
  getState(key: string): Promise<CircuitBreakerSnapshot>
  recordSuccess(key: string): Promise<CircuitBreakerSnapshot>
  recordFailure(key: string): Promise<CircuitBreakerSnapshot>
  transition(key: string, to: CircuitState): Promise<CircuitBreakerSnapshot>
  reset(key: string): Promise<void>
  close(): Promise<void>
  destroy(): void
  /** What this store did (see {@link StoreStats}). */
  stats(): StoreStats
}

/** Responses in `<tablePrefix>cache` (status, JSONB headers, base64 body), as Stoma stores them. */
export declare class PostgresCacheStore implements CacheStore {
  constructor(options?: PostgresStoreOptions)
  /**
   * Stoma's shape: its own connections to where `client` points, on `table`, the full table name
   * (default `"stoma_cache"`), which must end in `cache`: what comes before is the table prefix.
   */
  constructor(client: PostgresClientLike, table?: string)
  get(key: string): Promise<Response | null>
  put(key: string, response: Response, ttlSeconds: number): Promise<void>
  delete(key: string): Promise<boolean>
  /** Delete expired entries; resolves to how many were deleted. */
  cleanup(): Promise<number>
  close(): Promise<void>
  destroy(): void
  /** What this store did (see {@link CacheStoreStats}). */
  stats(): CacheStoreStats
}

/** A store's type if its flag is on (absent or true), `undefined` if off. */
type PostgresStoreIf<Flag, Store> = [Flag] extends [false]
  ? undefined
  : [Flag] extends [true | undefined]
    ? Store
    : Store | undefined

/** The flag `S` sets for store `K`; `undefined` when `S` does not mention it. */
type PostgresStoreFlag<S, K extends keyof PostgresStoresOption> = K extends keyof S ? S[K] : undefined

export type PostgresGatewayAdapter<S extends PostgresStoresOption = {}> = Omit<
  GatewayAdapter,
  'rateLimitStore' | 'circuitBreakerStore' | 'cacheStore'
> & {
  rateLimitStore: PostgresStoreIf<PostgresStoreFlag<S, 'rateLimit'>, PostgresRateLimitStore>
  circuitBreakerStore: PostgresStoreIf<PostgresStoreFlag<S, 'circuitBreaker'>, PostgresCircuitBreakerStore>
  cacheStore: PostgresStoreIf<PostgresStoreFlag<S, 'cache'>, PostgresCacheStore>
  /** Create the tables (Stoma's three and `<tablePrefix>sliding_windows`) and their indexes if they do not exist. */
  ensureSchema(): Promise<void>
  /** Stop background cleanup and close every connection; idempotent. Later calls reject. */
  close(): Promise<void>
  /** What each store did, and what they share (see {@link AdapterStats}). */
  stats(): AdapterStats
}

/**
 * A GatewayAdapter on PostgreSQL, in the same tables as Stoma's
 * postgresAdapter. Returns at once; connects on first use.
 */
export declare function postgresAdapter<const S extends PostgresStoresOption = {}>(
  options?: PostgresAdapterOptions<S>,
): PostgresGatewayAdapter<S>

/** The DDL for the default `stoma_` tables: the same text as Stoma's. */
export declare const POSTGRES_SCHEMA_SQL: string

/** `POSTGRES_SCHEMA_SQL` for tables named with `tablePrefix`; throws on an unsafe prefix. */
export declare function postgresSchemaSql(tablePrefix?: string): string

/** What every Redis deployment takes: key prefix, time bounds, TLS. */
export interface RedisCommonOptions {
  /** Prefix of every key (default `"stoma:"`), as in Stoma's redisAdapter. */
  prefix?: string
  /** Bound on one connection attempt, in ms (default 2000). */
  connectTimeoutMs?: number
  /** Bound on every call, waiting for a connection included, in ms (default 1000). */
  commandTimeoutMs?: number
  /**
   * How long the JS thread may poll the socket for answers after sending, in µs (default 50,
   * scaled up with the calls in flight and how long recent answers took, at most 10×; never while
   * Node's event loop has other work). 0: never.
   */
  spinMicros?: number
  /**
   * TLS: `true`, or settings as Node's `tls.connect()` takes them: `ca` (PEM certificates trusted
   * instead of Mozilla's roots), `cert` + `key` (a client certificate, for servers that ask for one),
   * `servername` (the name the server's certificate must carry, when not its host's). A `rediss://`
   * url turns TLS on by itself. The certificate and the server name are always checked.
   */
  tls?: boolean | TlsOptions
  /**
   * Keep copies of cache entries and circuits in this process, answered without asking Redis and
   * dropped as soon as Redis says they changed (client-side caching: RESP3 and `CLIENT TRACKING`,
   * Redis 6 or later). `true`: at most 10,000 copies and 32 MiB; or give the bounds.
   */
  nearCache?: boolean | { maxEntries?: number; maxBytes?: number }
  /**
   * What a rate-limit or circuit call does when Redis does not answer (refused, lost, timed out):
   * `'reject'` (default) rejects it with an Error whose `code` is `'STORE_UNAVAILABLE'` (Stoma's
   * policies then fail open); `'memory'` answers it, and every call after it at once, from memory
   * in this process (limits hold per instance; cache calls miss) while Redis is asked every 250 ms
   * whether it is back. Local counts are then dropped, not merged back (see the README).
   */
  whenUnavailable?: 'reject' | 'memory'
}

/** PEM text: a string, bytes, or a list of those. */
export type Pem = string | Uint8Array | Array<string | Uint8Array>

/** TLS settings, as Node's `tls.connect()` names them. */
export interface TlsOptions {
  ca?: Pem
  cert?: Pem
  key?: Pem
  servername?: string
}

/**
 * A Redis client from npm — ioredis `Redis` or `Redis.Cluster`, node-redis `createClient()` or
 * `createCluster()` (v4 to v6; a v4 cluster once connected) — connected or not. Only where it points
 * is read (host, port or socket path, credentials, database, TLS, cluster nodes, sentinels); it is
 * never used for commands.
 */
export type RedisClientLike = object

/** A Redis Cluster: seed nodes, from which every primary is discovered. */
export interface RedisClusterOptions {
  /**
   * `redis://` or `rediss://` urls of some of the cluster's nodes (one is enough). Credentials in
   * the first url that has any are used for every node; a cluster has only database 0.
   */
  nodes: string[]
}

/** A primary watched by Redis Sentinel: found through the sentinels, followed through failovers. */
export interface RedisSentinelOptions {
  /** The name the sentinels monitor the primary under (`sentinel monitor <name> …`). */
  name: string
  /** `redis://` (or `rediss://`) urls of the sentinels, with their own credentials if they need any. */
  nodes: string[]
  /** The sentinels' user name, over the urls'. */
  username?: string
  /** The sentinels' password (`requirepass` on the sentinels), over the urls'. */
  password?: string
  /**
   * The sentinels' own TLS settings. Without it, sentinels whose urls are `rediss://` speak TLS with
   * the adapter's `tls` certificates.
   */
  tls?: boolean | TlsOptions
}

/** One server (`url`), a Redis Cluster (`cluster`), or a primary behind sentinels (`sentinel`). */
export type RedisConnectionOptions = RedisCommonOptions & {
  /** The data servers' user name (ACL), over what the urls say. */
  username?: string
  /** The data servers' password, over what the urls say (with `sentinel`, the primary's). */
  password?: string
  /** The database, over what the url says (a cluster has only 0). */
  db?: number
} & (
    | {
        /** Default: `process.env.REDIS_URL`, then `"redis://127.0.0.1:6379"`. A malformed url throws a TypeError at once. */
        url?: string
        cluster?: never
        sentinel?: never
        client?: never
      }
    | { cluster: RedisClusterOptions; url?: never; sentinel?: never; client?: never }
    | { sentinel: RedisSentinelOptions; url?: never; cluster?: never; client?: never }
    | {
        /** Stoma's way: the client whose settings say where Redis is (see `RedisClientLike`). */
        client: RedisClientLike
        /** Accepted for Stoma's node-redis recipe; nothing to do here (our connection speaks RESP itself). */
        setWithTTL?: (...args: never[]) => unknown
        url?: never
        cluster?: never
        sentinel?: never
        username?: never
        password?: never
        db?: never
      }
  )

/**
 * Fixed-window counters under `<prefix>rl:<key>`, shared with Stoma's RedisRateLimitStore, or with
 * `algorithm: 'sliding-window'` sliding windows, one hash under `<prefix>rls:<key>` each (ours).
 */
export declare class RedisRateLimitStore implements RateLimitStore {
  /** Opens a connection of its own; stores from `redisAdapter()` share the adapter's. */
  constructor(options?: RedisConnectionOptions & { algorithm?: RateLimitAlgorithm })
  /** Stoma's shape: a connection to where `client` points, keys under `prefix` (default `"stoma:"`). */
  constructor(client: RedisClientLike, prefix?: string)
  increment(key: string, windowSeconds: number): Promise<{ count: number; resetAt: number }>
  /** Release the store (closing its own connection, if any); later calls reject. */
  destroy(): void
  /** What this store did (see {@link StoreStats}). */
  stats(): StoreStats
}

/** Circuit state under `<prefix>cb:<key>`, updated atomically on the server. */
export declare class RedisCircuitBreakerStore implements CircuitBreakerStore {
  constructor(options?: RedisConnectionOptions)
  /** Stoma's shape (`setWithTTL` is accepted and unused). */
  constructor(client: RedisClientLike, prefix?: string, setWithTTL?: (...args: never[]) => unknown)
  getState(key: string): Promise<CircuitBreakerSnapshot>
  recordSuccess(key: string): Promise<CircuitBreakerSnapshot>
  recordFailure(key: string): Promise<CircuitBreakerSnapshot>
  transition(key: string, to: CircuitState): Promise<CircuitBreakerSnapshot>
  reset(key: string): Promise<void>
  destroy(): void
  /** What this store did (see {@link StoreStats}). */
  stats(): StoreStats
}

/** Response envelopes under `<prefix>cache:<key>`, shared with Stoma's RedisCacheStore. A ttl of 0 stores nothing. */
export declare class RedisCacheStore implements CacheStore {
  constructor(options?: RedisConnectionOptions)
  /** Stoma's shape (`setWithTTL` is accepted and unused). */
  constructor(client: RedisClientLike, prefix?: string, setWithTTL?: (...args: never[]) => unknown)
  get(key: string): Promise<Response | null>
  put(key: string, response: Response, ttlSeconds: number): Promise<void>
  delete(key: string): Promise<boolean>
  destroy(): void
  /** What this store did (see {@link CacheStoreStats}). */
  stats(): CacheStoreStats
}

/** Which stores `redisAdapter` builds (all by default; `false` leaves one out). */
export interface RedisStoreFlags {
  rateLimit?: boolean
  circuitBreaker?: boolean
  cache?: boolean
}

export type RedisAdapterOptions<Stores extends RedisStoreFlags = RedisStoreFlags> = RedisConnectionOptions & {
  stores?: Stores
  waitUntil?: (promise: Promise<unknown>) => void
  /** How its rate-limit store counts (default fixed windows, Stoma's). */
  rateLimit?: RateLimitOptions
}

/** A store slot: absent when its flag is `false`, present when `true` or unset, optional when only known as `boolean`. */
type RedisStoreSlot<Stores, Flag extends keyof RedisStoreFlags, Slot extends string, Store> = [
  Stores extends { [K in Flag]: infer F } ? F : undefined,
] extends [infer F]
  ? [F] extends [false]
    ? {}
    : [F] extends [true | undefined]
      ? { [K in Slot]: Store }
      : { [K in Slot]?: Store }
  : never

export type RedisGatewayAdapter<Stores extends RedisStoreFlags = {}> = GatewayAdapter &
  RedisStoreSlot<Stores, 'rateLimit', 'rateLimitStore', RedisRateLimitStore> &
  RedisStoreSlot<Stores, 'circuitBreaker', 'circuitBreakerStore', RedisCircuitBreakerStore> &
  RedisStoreSlot<Stores, 'cache', 'cacheStore', RedisCacheStore> & {
    /**
     * Close the shared connection (idempotent): calls made before still go out, and the Promise
     * resolves once they are answered; later calls on the stores reject.
     */
    close(): Promise<void>
    /** The near cache's copies and the bytes charged for them, or undefined without `nearCache`. */
    nearCacheSize(): { entries: number; bytes: number } | undefined
    /** What each store did, and what they share (see {@link AdapterStats}). */
    stats(): AdapterStats
  }

/**
 * Stores in Redis over one pipelined connection, interchangeable with
 * Stoma's redisAdapter on the same server and prefix. Returns at once and
 * connects in the background.
 */
export declare function redisAdapter<const Stores extends RedisStoreFlags = {}>(
  options?: RedisAdapterOptions<Stores>,
): RedisGatewayAdapter<Stores>
