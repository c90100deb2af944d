// Compile-time proof (tsc --noEmit, part of `npm test`) that our adapters
// and stores are assignable to Stoma's own types.
import type { CacheStore, CircuitBreakerStore, GatewayAdapter, RateLimitStore } from '@homegrower-club/stoma'
import type { TestAdapter as StomaTestAdapter } from '@homegrower-club/stoma/adapters/testing'
import {
  MemoryCacheStore,
  MemoryCircuitBreakerStore,
  MemoryRateLimitStore,
  POSTGRES_SCHEMA_SQL,
  PostgresCacheStore,
  PostgresCircuitBreakerStore,
  PostgresRateLimitStore,
  TestAdapter,
  bunAdapter,
  createTestAdapter,
  denoAdapter,
  memoryAdapter,
  nodeAdapter,
  postgresAdapter,
  postgresSchemaSql,
} from '../index.js'

const adapters: GatewayAdapter[] = [memoryAdapter(), nodeAdapter(), bunAdapter(), denoAdapter(), new TestAdapter()]
const rateLimit: RateLimitStore = new MemoryRateLimitStore({ maxKeys: 10 })
const circuits: CircuitBreakerStore = new MemoryCircuitBreakerStore()
const cache: CacheStore = new MemoryCacheStore({ maxBytes: 1024 })

// Stoma declares a private field on its TestAdapter class, which makes that
// class nominal in TypeScript; ours matches every public member.
type PublicMembers<T> = { [K in keyof T]: T[K] }
const testAdapter: PublicMembers<StomaTestAdapter> = createTestAdapter()

// PostgreSQL: stores and adapters assignable to Stoma's types; `stores`
// flags decide which stores the adapter's type has.
const pg = postgresAdapter({ url: 'postgres://localhost/db', tablePrefix: 'x_', poolSize: 2, cleanupIntervalMs: 60_000 })
const pgAdapter: GatewayAdapter = pg
const pgRateLimit: RateLimitStore = pg.rateLimitStore
const pgCircuits: CircuitBreakerStore = new PostgresCircuitBreakerStore({ statementTimeoutMs: 500 })
const pgCache: CacheStore = new PostgresCacheStore()
const cleaned: Promise<number> = new PostgresRateLimitStore().cleanup()
const noCache = postgresAdapter({ stores: { cache: false } })
const absent: undefined = noCache.cacheStore
const present: PostgresCircuitBreakerStore = noCache.circuitBreakerStore
const lifecycle: Promise<void>[] = [pg.ensureSchema(), pg.close()]
const sql: string = POSTGRES_SCHEMA_SQL + postgresSchemaSql('y_')

export { adapters, rateLimit, circuits, cache, testAdapter }
export { pgAdapter, pgRateLimit, pgCircuits, pgCache, cleaned, absent, present, lifecycle, sql }
