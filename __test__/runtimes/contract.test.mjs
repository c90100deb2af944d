// The store contract suite (store-contract.mjs, written against vitest's API)
// run by another runtime's test runner on the installed package:
//   bun test ./contract.test.mjs       (bun maps `import … from 'vitest'` to bun:test)
//   deno test … contract.test.mjs      (deno.json maps 'vitest' to vitest-deno-shim.mjs)
import process from 'node:process'
import { TestAdapter, memoryAdapter, redisAdapter } from 'stoma-native'
import { storeContract } from './store-contract.mjs'

const runtime = typeof globalThis.Bun !== 'undefined' ? 'bun' : 'deno'
const prefix = `${process.env.STOMA_SMOKE_PREFIX ?? 'stoma-native-contract:'}contract:${runtime}:`

storeContract(`${runtime} memory`, { createStores: () => memoryAdapter() })
storeContract(`${runtime} TestAdapter`, { createStores: () => new TestAdapter() })
storeContract(`${runtime} redis`, {
  createStores: () => redisAdapter({ url: process.env.REDIS_URL || 'redis://127.0.0.1:6379', prefix }),
  close: (adapter) => adapter.close(),
})
