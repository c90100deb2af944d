// Type-checked in the temporary project against the installed package:
// the declarations come from the tarball's index.d.ts through `exports`.
import { memoryAdapter, TestAdapter, redisAdapter, type MemoryGatewayAdapter } from 'stoma-native'
import { nodeAdapter } from 'stoma-native/adapters/node'

const adapter: MemoryGatewayAdapter = memoryAdapter({ name: 'typed', cache: { maxEntries: 10 } })
const counted: Promise<{ count: number; resetAt: number }> = adapter.rateLimitStore.increment('k', 60)
const waited: Promise<void> = new TestAdapter().waitAll()
const size: number = nodeAdapter().cacheStore.size
const redis = redisAdapter({ prefix: 'typed:' })
// @ts-expect-error windowSeconds is a number
adapter.rateLimitStore.increment('k', '60')
export { counted, waited, size, redis }
