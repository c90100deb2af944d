'use strict'
// stoma-native: native runtime adapters for the Stoma API gateway.
// The public entry (CommonJS; index.mjs re-exports it for ESM).

const memory = require('./lib/memory.js')
const adapters = require('./lib/adapters.js')
const postgres = require('./lib/postgres.js')
const redis = require('./lib/redis.js')

module.exports = {
  memoryAdapter: adapters.memoryAdapter,
  nodeAdapter: adapters.nodeAdapter,
  bunAdapter: adapters.bunAdapter,
  denoAdapter: adapters.denoAdapter,
  TestAdapter: adapters.TestAdapter,
  createTestAdapter: adapters.createTestAdapter,
  MemoryRateLimitStore: memory.MemoryRateLimitStore,
  MemoryCircuitBreakerStore: memory.MemoryCircuitBreakerStore,
  MemoryCacheStore: memory.MemoryCacheStore,
  releaseMemoryState: memory.releaseMemoryState,
  postgresAdapter: postgres.postgresAdapter,
  postgresSchemaSql: postgres.postgresSchemaSql,
  POSTGRES_SCHEMA_SQL: postgres.POSTGRES_SCHEMA_SQL,
  PostgresRateLimitStore: postgres.PostgresRateLimitStore,
  PostgresCircuitBreakerStore: postgres.PostgresCircuitBreakerStore,
  PostgresCacheStore: postgres.PostgresCacheStore,
  redisAdapter: redis.redisAdapter,
  RedisRateLimitStore: redis.RedisRateLimitStore,
  RedisCircuitBreakerStore: redis.RedisCircuitBreakerStore,
  RedisCacheStore: redis.RedisCacheStore,
}
