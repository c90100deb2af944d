// Compile-time proof (tsc --noEmit, part of `npm test`) that our adapters
// and stores are assignable to Stoma's own types.
import type { CacheStore, CircuitBreakerStore, GatewayAdapter, RateLimitStore } from '@homegrower-club/stoma'
import type { TestAdapter as StomaTestAdapter } from '@homegrower-club/stoma/adapters/testing'
import {
  MemoryCacheStore,
  MemoryCircuitBreakerStore,
  MemoryRateLimitStore,
  RedisCacheStore,
  RedisCircuitBreakerStore,
  RedisRateLimitStore,
  TestAdapter,
  bunAdapter,
  createTestAdapter,
  denoAdapter,
  memoryAdapter,
  nodeAdapter,
  redisAdapter,
} from '../index.js'

const adapters: GatewayAdapter[] = [memoryAdapter(), nodeAdapter(), bunAdapter(), denoAdapter(), new TestAdapter(), redisAdapter()]
const rateLimit: RateLimitStore = new MemoryRateLimitStore({ maxKeys: 10 })
const circuits: CircuitBreakerStore = new MemoryCircuitBreakerStore()
const cache: CacheStore = new MemoryCacheStore({ maxBytes: 1024 })

// Stoma declares a private field on its TestAdapter class, which makes that
// class nominal in TypeScript; ours matches every public member.
type PublicMembers<T> = { [K in keyof T]: T[K] }
const testAdapter: PublicMembers<StomaTestAdapter> = createTestAdapter()

// Redis: every store is a Stoma store; the adapter's store slots follow `stores`.
const redisStores: [RateLimitStore, CircuitBreakerStore, CacheStore] = [
  new RedisRateLimitStore({ url: 'redis://127.0.0.1:6379', prefix: 'app:' }),
  new RedisCircuitBreakerStore(),
  new RedisCacheStore({ commandTimeoutMs: 500 }),
]
const redis = redisAdapter({ prefix: 'app:', waitUntil: () => {} })
const redisCache: RedisCacheStore = redis.cacheStore
const closing: Promise<void> = redis.close()
const withoutCache = redisAdapter({ stores: { cache: false } })
const limiter: RedisRateLimitStore = withoutCache.rateLimitStore
// @ts-expect-error the cache store was turned off
const noCache: RedisCacheStore = withoutCache.cacheStore
declare const maybe: boolean
// @ts-expect-error a flag only known as boolean leaves the store optional
const maybeCache: RedisCacheStore = redisAdapter({ stores: { cache: maybe } }).cacheStore

export { adapters, rateLimit, circuits, cache, testAdapter, redisStores, redisCache, closing, limiter, noCache, maybeCache }
