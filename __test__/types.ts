// Compile-time proof (tsc --noEmit, part of `npm test`) that our adapters
// and stores are assignable to Stoma's own types.
import type { CacheStore, CircuitBreakerStore, GatewayAdapter, RateLimitStore } from '@homegrower-club/stoma'
import type { TestAdapter as StomaTestAdapter } from '@homegrower-club/stoma/adapters/testing'
import {
  type AdapterStats,
  type CacheStoreStats,
  type StoreStats,
  MemoryCacheStore,
  MemoryCircuitBreakerStore,
  MemoryRateLimitStore,
  POSTGRES_SCHEMA_SQL,
  PostgresCacheStore,
  PostgresCircuitBreakerStore,
  PostgresRateLimitStore,
  RedisCacheStore,
  RedisCircuitBreakerStore,
  RedisRateLimitStore,
  TestAdapter,
  bunAdapter,
  createTestAdapter,
  denoAdapter,
  memoryAdapter,
  nodeAdapter,
  postgresAdapter,
  postgresSchemaSql,
  redisAdapter,
  releaseMemoryState,
} from '../index.js'

const adapters: GatewayAdapter[] = [
  memoryAdapter(),
  nodeAdapter(),
  bunAdapter(),
  denoAdapter(),
  new TestAdapter(),
  redisAdapter(),
]
const rateLimit: RateLimitStore = new MemoryRateLimitStore({ maxKeys: 10 })
const sliding: RateLimitStore[] = [
  new MemoryRateLimitStore({ algorithm: 'sliding-window' }),
  memoryAdapter({ rateLimit: { maxKeys: 10, algorithm: 'sliding-window' } }).rateLimitStore,
  new TestAdapter({ rateLimit: { algorithm: 'fixed-window' } }).rateLimitStore,
]
// @ts-expect-error the algorithms are 'fixed-window' and 'sliding-window'
new MemoryRateLimitStore({ algorithm: 'sliding' })
const circuits: CircuitBreakerStore = new MemoryCircuitBreakerStore()
const cache: CacheStore = new MemoryCacheStore({ maxBytes: 1024 })

// Stoma declares a private field on its TestAdapter class, which makes that
// class nominal in TypeScript; ours matches every public member.
type PublicMembers<T> = { [K in keyof T]: T[K] }
const testAdapter: PublicMembers<StomaTestAdapter> = createTestAdapter()

// Every adapter closes alike.
const closings: Promise<void>[] = [memoryAdapter().close(), nodeAdapter().close(), new TestAdapter().close()]
const released: boolean = releaseMemoryState('pool')

// PostgreSQL: stores and adapters assignable to Stoma's types; `stores`
// flags decide which stores the adapter's type has.
const pg = postgresAdapter({
  url: 'postgres://localhost/db',
  tablePrefix: 'x_',
  poolSize: 2,
  cleanupIntervalMs: 60_000,
})
const pgAdapter: GatewayAdapter = pg
const pgRateLimit: RateLimitStore = pg.rateLimitStore
const pgCircuits: CircuitBreakerStore = new PostgresCircuitBreakerStore({ statementTimeoutMs: 500 })
const pgCache: CacheStore = new PostgresCacheStore()
const cleaned: Promise<number> = new PostgresRateLimitStore().cleanup()
const pgNoCache = postgresAdapter({ stores: { cache: false } })
const absent: undefined = pgNoCache.cacheStore
const present: PostgresCircuitBreakerStore = pgNoCache.circuitBreakerStore
const lifecycle: Promise<void>[] = [pg.ensureSchema(), pg.close()]
const sql: string = POSTGRES_SCHEMA_SQL + postgresSchemaSql('y_')

// Stoma's ways in: a pg Pool / Client or a postgres.js sql as `client`, and
// the store constructors' (client, table); TLS with a client certificate.
declare const pgPool: object
declare const postgresJs: (strings: TemplateStringsArray) => Promise<unknown>
const pgFromClient: CacheStore = postgresAdapter({
  client: pgPool,
  tablePrefix: 'x_',
  tls: { ca: 'PEM', cert: 'PEM', key: 'PEM', servername: 'db.internal' },
}).cacheStore
const pgStomaShaped: RateLimitStore = new PostgresRateLimitStore(postgresJs, 'x_rate_limits')
// @ts-expect-error the client says where PostgreSQL is
postgresAdapter({ client: pgPool, url: 'postgres://localhost/db' })

export {
  pgAdapter,
  pgRateLimit,
  pgCircuits,
  pgCache,
  cleaned,
  absent,
  present,
  lifecycle,
  sql,
  pgFromClient,
  pgStomaShaped,
}
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
const clustered: RedisCacheStore = redisAdapter({
  cluster: { nodes: ['redis://10.0.0.1:6379'] },
  prefix: 'app:',
}).cacheStore
const failingOver: RedisCacheStore = redisAdapter({
  sentinel: { name: 'mymaster', nodes: ['redis://10.0.0.2:26379'], password: 'sentinel' },
  password: 'data',
  db: 2,
}).cacheStore
declare const ioredisClient: object
const fromClient: RedisCacheStore = redisAdapter({
  client: ioredisClient,
  prefix: 'app:',
  setWithTTL: () => {},
}).cacheStore
const stomaShaped = new RedisCircuitBreakerStore(ioredisClient, 'app:', () => {})
// @ts-expect-error the client says where Redis is
redisAdapter({ client: ioredisClient, url: 'redis://10.0.0.1:6379' })
// @ts-expect-error one deployment at a time: url or cluster
redisAdapter({ url: 'redis://10.0.0.1:6379', cluster: { nodes: ['redis://10.0.0.1:6379'] } })

// stats() everywhere; a cache store's has hits and misses, the others' not.
const operated: AdapterStats[] = [memoryAdapter().stats(), redisAdapter().stats(), postgresAdapter().stats()]
const hits: number = (new MemoryCacheStore().stats() satisfies CacheStoreStats).hits
const counted: StoreStats = new RedisRateLimitStore().stats()
// @ts-expect-error a rate-limit store has no hits
const noHits: number = new PostgresRateLimitStore().stats().hits
// @ts-expect-error whenUnavailable is 'reject' or 'memory'
redisAdapter({ whenUnavailable: 'retry' })

export {
  operated,
  hits,
  counted,
  noHits,
  clustered,
  fromClient,
  stomaShaped,
  failingOver,
  adapters,
  rateLimit,
  sliding,
  circuits,
  cache,
  testAdapter,
  closings,
  released,
  redisStores,
  redisCache,
  closing,
  limiter,
  noCache,
  maybeCache,
}
