// A worker thread for ffi.test.mjs: counts `count` hits, failures and one
// cached response under the named state it is sent, and answers the road
// its stores took.
import { memoryAdapter } from 'stoma-native'
import { road } from './ffi-road.mjs'

self.onmessage = async ({ data: { name, count, id } }) => {
  const adapter = memoryAdapter({ name })
  for (let i = 0; i < count; i++) {
    await adapter.rateLimitStore.increment('shared', 60)
    await adapter.circuitBreakerStore.recordFailure('upstream')
  }
  await adapter.cacheStore.put(`from:${id}`, new Response(`worker ${id}`, { headers: { 'x-worker': `${id}` } }), 60)
  self.postMessage({ road: road() })
}
