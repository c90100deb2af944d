'use strict'
// stoma-native: native runtime adapters for the Stoma API gateway.
// The public entry (CommonJS; index.mjs re-exports it for ESM).

const memory = require('./lib/memory.js')
const adapters = require('./lib/adapters.js')
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
  redisAdapter: redis.redisAdapter,
  RedisRateLimitStore: redis.RedisRateLimitStore,
  RedisCircuitBreakerStore: redis.RedisCircuitBreakerStore,
  RedisCacheStore: redis.RedisCacheStore,
}
