// ESM entry: the same objects as the CommonJS entry, so both share one state.
import stomaNative from './index.js'

export const {
  memoryAdapter,
  nodeAdapter,
  bunAdapter,
  denoAdapter,
  TestAdapter,
  createTestAdapter,
  MemoryRateLimitStore,
  MemoryCircuitBreakerStore,
  MemoryCacheStore,
  releaseMemoryState,
  postgresAdapter,
  postgresSchemaSql,
  POSTGRES_SCHEMA_SQL,
  PostgresRateLimitStore,
  PostgresCircuitBreakerStore,
  PostgresCacheStore,
  redisAdapter,
  RedisRateLimitStore,
  RedisCircuitBreakerStore,
  RedisCacheStore,
} = stomaNative
export default stomaNative
