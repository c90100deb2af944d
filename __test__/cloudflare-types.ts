// Compile-time proof (tsc --noEmit) that the Cloudflare adapter's types are
// assignable to Stoma's own, and that its binding interfaces accept
// KV/Durable Object/Cache shaped objects.
import type { CacheStore, CircuitBreakerStore, GatewayAdapter, RateLimitStore } from '@homegrower-club/stoma'
import {
  CacheApiCacheStore,
  DurableObjectCircuitBreakerStore,
  DurableObjectRateLimitStore,
  InMemoryCircuitBreakerStore,
  KVRateLimitStore,
  cloudflareAdapter,
  type CacheLike,
  type DurableObjectNamespaceLike,
  type KVNamespaceLike,
} from 'stoma-native/adapters/cloudflare'

declare const kv: KVNamespaceLike
declare const namespace: DurableObjectNamespaceLike
declare const cache: CacheLike

const adapter: GatewayAdapter = cloudflareAdapter({
  rateLimitKv: kv,
  rateLimitDo: namespace,
  circuitBreakerDo: namespace,
  cache,
  cacheOrigin: 'https://cache.example',
  executionCtx: { waitUntil: () => {} },
  env: {},
})
const rateLimits: RateLimitStore[] = [
  new KVRateLimitStore(kv),
  new DurableObjectRateLimitStore(namespace),
  new DurableObjectRateLimitStore(namespace, { algorithm: 'sliding-window' }),
  cloudflareAdapter({ rateLimitDo: namespace, rateLimit: { algorithm: 'sliding-window' } })
    .rateLimitStore as RateLimitStore,
]
// @ts-expect-error KV cannot count a sliding window (a RangeError at run time too)
new KVRateLimitStore(kv, { algorithm: 'sliding-window' })
const circuits: CircuitBreakerStore[] = [
  new DurableObjectCircuitBreakerStore(namespace),
  new InMemoryCircuitBreakerStore({ maxKeys: 5 }),
]
const caches: CacheStore = new CacheApiCacheStore(cache, 'https://cache.example')
const closing: Promise<void> = cloudflareAdapter({ cache }).close()

// @ts-expect-error cacheOrigin must be a string
cloudflareAdapter({ cacheOrigin: 1 })

export { adapter, rateLimits, circuits, caches, closing }
