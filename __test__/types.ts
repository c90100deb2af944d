// Compile-time proof (tsc --noEmit, part of `npm test`) that our adapters
// and stores are assignable to Stoma's own types.
import type { CacheStore, CircuitBreakerStore, GatewayAdapter, RateLimitStore } from '@homegrower-club/stoma'
import type { TestAdapter as StomaTestAdapter } from '@homegrower-club/stoma/adapters/testing'
import {
  MemoryCacheStore,
  MemoryCircuitBreakerStore,
  MemoryRateLimitStore,
  TestAdapter,
  bunAdapter,
  createTestAdapter,
  denoAdapter,
  memoryAdapter,
  nodeAdapter,
} from '../index.js'

const adapters: GatewayAdapter[] = [memoryAdapter(), nodeAdapter(), bunAdapter(), denoAdapter(), new TestAdapter()]
const rateLimit: RateLimitStore = new MemoryRateLimitStore({ maxKeys: 10 })
const circuits: CircuitBreakerStore = new MemoryCircuitBreakerStore()
const cache: CacheStore = new MemoryCacheStore({ maxBytes: 1024 })

// Stoma declares a private field on its TestAdapter class, which makes that
// class nominal in TypeScript; ours matches every public member.
type PublicMembers<T> = { [K in keyof T]: T[K] }
const testAdapter: PublicMembers<StomaTestAdapter> = createTestAdapter()

export { adapters, rateLimit, circuits, cache, testAdapter }
