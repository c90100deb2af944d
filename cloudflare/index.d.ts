// Types for stoma-native/adapters/cloudflare. The Cloudflare bindings are
// declared structurally (only the members this adapter uses), so the
// package needs no dependency on @cloudflare/workers-types; the real
// KVNamespace, DurableObjectNamespace, Cache and ExecutionContext types are
// assignable to them.

import type {
  AdapterStats,
  CacheStore,
  CacheStoreStats,
  CircuitBreakerSnapshot,
  CircuitBreakerStore,
  CircuitState,
  GatewayAdapter,
  RateLimitStore,
  StoreStats,
} from '../index.js'

export type { CacheStore, CircuitBreakerSnapshot, CircuitBreakerStore, CircuitState, GatewayAdapter, RateLimitStore }

/** The part of a Workers KV namespace binding the KV store uses. */
export interface KVNamespaceLike {
  get(key: string): Promise<string | null>
  put(key: string, value: string, options?: { expirationTtl?: number }): Promise<void>
}

/** The part of a Durable Object stub the stores use. */
export interface DurableObjectStubLike {
  fetch(input: string, init?: RequestInit): Promise<Response>
}

/** The part of a Durable Object namespace binding the stores use. */
export interface DurableObjectNamespaceLike {
  idFromName(name: string): unknown
  get(id: unknown): DurableObjectStubLike
}

/** The part of a Cache API `Cache` (e.g. `caches.default`) the cache store uses. */
export interface CacheLike {
  match(request: string): Promise<Response | undefined>
  put(request: string, response: Response): Promise<void>
  delete(request: string): Promise<boolean>
}

/** The part of a Worker's `ExecutionContext` the adapter uses. */
export interface ExecutionContextLike {
  waitUntil(promise: Promise<unknown>): void
}

/** A service binding (a `Fetcher`). */
export interface ServiceBindingLike {
  fetch(request: Request): Promise<Response>
}

/** The part of a Durable Object's `DurableObjectState` the object classes use. */
export interface DurableObjectStateLike {
  storage: {
    get<T = unknown>(key: string): Promise<T | undefined>
    put<T>(key: string, value: T): Promise<void>
    delete(key: string): Promise<boolean>
    deleteAll(): Promise<void>
    getAlarm(): Promise<number | null>
    setAlarm(scheduledTime: number | Date): Promise<void>
    deleteAlarm(): Promise<void>
  }
  blockConcurrencyWhile<T>(callback: () => Promise<T>): Promise<T>
}

export interface CloudflareAdapterBindings {
  /** KV namespace for rate limits (approximate counts). */
  rateLimitKv?: KVNamespaceLike
  /** Durable Object namespace bound to RateLimiterDO (exact counts); wins over rateLimitKv. */
  rateLimitDo?: DurableObjectNamespaceLike
  /** Durable Object namespace bound to CircuitBreakerDO; without it circuits live in this isolate's memory. */
  circuitBreakerDo?: DurableObjectNamespaceLike
  /** Cache for responses; default `caches.default`. */
  cache?: CacheLike
  /** http(s) origin of the synthetic cache-key URLs; default "https://stoma-native.cache.internal". */
  cacheOrigin?: string
  /** Enables `waitUntil`. */
  executionCtx?: ExecutionContextLike
  /** The Worker's env; enables `dispatchBinding` to its service bindings. */
  env?: object
  /**
   * How rate limits count: 'fixed-window' (default) or 'sliding-window' (docs/sliding-window.md).
   * A sliding window needs rateLimitDo: with rateLimitKv alone it is refused with a RangeError, as
   * KV has no atomic increment and is eventually consistent.
   */
  rateLimit?: { algorithm?: RateLimitAlgorithm }
}

/** How a rate-limit store counts; see {@link CloudflareAdapterBindings.rateLimit}. */
export type RateLimitAlgorithm = 'fixed-window' | 'sliding-window'

export interface CloudflareGatewayAdapter extends GatewayAdapter {
  /** Present when rateLimitDo or rateLimitKv is given. */
  rateLimitStore?: DurableObjectRateLimitStore | KVRateLimitStore
  circuitBreakerStore: DurableObjectCircuitBreakerStore | InMemoryCircuitBreakerStore
  cacheStore: CacheApiCacheStore
  /** Present when executionCtx is given. */
  waitUntil?: (promise: Promise<unknown>) => void
  /** Present when env is given; rejects naming a service binding env lacks. */
  dispatchBinding?: (service: string, request: Request) => Promise<Response>
  /**
   * Resolves at once and changes nothing, for shutdown code written for every backend: the bindings
   * are the platform's, and the isolate's circuit store is shared by every adapter in the isolate.
   */
  close(): Promise<void>
  /** What each store did, and what they share (see {@link AdapterStats}). */
  stats(): AdapterStats
}

/** A GatewayAdapter built from Cloudflare bindings. */
export declare function cloudflareAdapter(bindings?: CloudflareAdapterBindings): CloudflareGatewayAdapter

/**
 * Fixed-window counters in KV as `{ count, resetAt }` JSON; approximate under concurrency.
 * `algorithm: 'sliding-window'` throws a RangeError (KV cannot count one honestly).
 */
export declare class KVRateLimitStore implements RateLimitStore {
  constructor(kv: KVNamespaceLike, options?: { algorithm?: 'fixed-window' })
  increment(key: string, windowSeconds: number): Promise<{ count: number; resetAt: number }>
  /** What this store did (see {@link StoreStats}). */
  stats(): StoreStats
}

/** Fixed- or sliding-window counters, one RateLimiterDO per key; exact. */
export declare class DurableObjectRateLimitStore implements RateLimitStore {
  constructor(namespace: DurableObjectNamespaceLike, options?: { algorithm?: RateLimitAlgorithm })
  increment(key: string, windowSeconds: number): Promise<{ count: number; resetAt: number }>
  /** What this store did (see {@link StoreStats}). */
  stats(): StoreStats
}

/** Circuits, one CircuitBreakerDO per key; consistent across isolates and requests. */
export declare class DurableObjectCircuitBreakerStore implements CircuitBreakerStore {
  constructor(namespace: DurableObjectNamespaceLike)
  getState(key: string): Promise<CircuitBreakerSnapshot>
  recordSuccess(key: string): Promise<CircuitBreakerSnapshot>
  recordFailure(key: string): Promise<CircuitBreakerSnapshot>
  transition(key: string, to: CircuitState): Promise<CircuitBreakerSnapshot>
  reset(key: string): Promise<void>
  /** What this store did (see {@link StoreStats}). */
  stats(): StoreStats
}

/** Circuits in this isolate's memory, plain JavaScript, bounded by maxKeys (LRU). */
export declare class InMemoryCircuitBreakerStore implements CircuitBreakerStore {
  constructor(options?: { maxKeys?: number })
  getState(key: string): Promise<CircuitBreakerSnapshot>
  recordSuccess(key: string): Promise<CircuitBreakerSnapshot>
  recordFailure(key: string): Promise<CircuitBreakerSnapshot>
  transition(key: string, to: CircuitState): Promise<CircuitBreakerSnapshot>
  reset(key: string): Promise<void>
  /** Number of circuits held. */
  readonly size: number
  /** Remove every circuit. */
  clear(): void
  destroy(): void
  /** What this store did (see {@link StoreStats}). */
  stats(): StoreStats
}

/** The InMemoryCircuitBreakerStore shared by every adapter in this isolate. */
export declare function isolateCircuitBreakerStore(): InMemoryCircuitBreakerStore

/** Responses in the Cache API, rebuilt exactly (status, headers, body) on get. */
export declare class CacheApiCacheStore implements CacheStore {
  /** @param cache default `caches.default`; @param origin default "https://stoma-native.cache.internal". */
  constructor(cache?: CacheLike, origin?: string)
  get(key: string): Promise<Response | null>
  put(key: string, response: Response, ttlSeconds: number): Promise<void>
  delete(key: string): Promise<boolean>
  /** What this store did (see {@link CacheStoreStats}). */
  stats(): CacheStoreStats
}

/** Durable Object class for DurableObjectRateLimitStore; export it from your Worker. */
export declare class RateLimiterDO {
  constructor(state: DurableObjectStateLike, env?: unknown)
  fetch(request: Request): Promise<Response>
  alarm(): Promise<void>
}

/** Durable Object class for DurableObjectCircuitBreakerStore; export it from your Worker. */
export declare class CircuitBreakerDO {
  constructor(state: DurableObjectStateLike, env?: unknown)
  fetch(request: Request): Promise<Response>
  alarm(): Promise<void>
}
