// Memory stores: stoma-native's native stores against Stoma's
// InMemoryRateLimitStore / InMemoryCircuitBreakerStore / InMemoryCacheStore.
// Run in Node and, by benchmark/runtime.mjs, in Bun and Deno, where
// `runtimeTarget` (if set) replaces `target`.
import { MemoryCacheStore, MemoryCircuitBreakerStore, MemoryRateLimitStore } from 'stoma-native'

const KEYS = 100_000
const keys = Array.from({ length: KEYS }, (_, i) => `client:${i}`)
// The same keys in a fixed shuffled order (a linear congruential generator
// driving Fisher–Yates), for traffic that does not arrive in the order the
// keys were first seen: in that order, V8's and JavaScriptCore's Maps, which
// keep entries in insertion order, read memory sequentially and the CPU
// prefetches it (docs/runtimes-speed.md).
const shuffled = [...keys]
for (let i = KEYS - 1, seed = 7; i > 0; i--) {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0
  const j = seed % (i + 1)
  ;[shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]]
}

/** A rate-limit case over 100k live keys, hit in the order `order` lists them. */
function manyKeys(stoma, name, order) {
  return {
    name,
    target: 1.0,
    async setup() {
      const ours = new MemoryRateLimitStore()
      const theirs = new stoma.InMemoryRateLimitStore()
      for (const key of keys) {
        await ours.increment(key, 600)
        await theirs.increment(key, 600)
      }
      return {
        ours: (i) => ours.increment(order[i % KEYS], 600),
        theirs: (i) => theirs.increment(order[i % KEYS], 600),
        teardown: () => theirs.destroy(),
      }
    },
  }
}
const body64k = new Uint8Array(64 * 1024).map((_, i) => i % 251)
const headers = [
  ['content-type', 'application/octet-stream'],
  ['cache-control', 'public, max-age=60'],
]

export default function memoryCases({ stoma }) {
  return [
    {
      name: 'memory: rate-limit increment, 1 key',
      target: 0.7,
      runtimeTarget: 0.8,
      setup() {
        const ours = new MemoryRateLimitStore()
        const theirs = new stoma.InMemoryRateLimitStore()
        return {
          ours: () => ours.increment('client:1', 60),
          theirs: () => theirs.increment('client:1', 60),
          teardown: () => theirs.destroy(),
        }
      },
    },
    manyKeys(stoma, 'memory: rate-limit increment, 100k keys', keys),
    manyKeys(stoma, 'memory: rate-limit increment, 100k keys, shuffled', shuffled),
    {
      name: 'memory: new key at capacity (100k live keys)',
      target: 100,
      async setup() {
        const ours = new MemoryRateLimitStore({ maxKeys: KEYS })
        const theirs = new stoma.InMemoryRateLimitStore({ maxKeys: KEYS })
        for (const key of keys) {
          await ours.increment(key, 600)
          await theirs.increment(key, 600)
        }
        let fresh = 0
        return {
          ours: () => ours.increment(`new:${fresh++}`, 600),
          theirs: () => theirs.increment(`new:${fresh++}`, 600),
          teardown: () => theirs.destroy(),
        }
      },
    },
    {
      name: 'memory: circuit recordFailure + getState',
      runtimeTarget: 0.8,
      setup() {
        const ours = new MemoryCircuitBreakerStore()
        const theirs = new stoma.InMemoryCircuitBreakerStore()
        return {
          ours: async () => {
            await ours.recordFailure('upstream:1')
            return ours.getState('upstream:1')
          },
          theirs: async () => {
            await theirs.recordFailure('upstream:1')
            return theirs.getState('upstream:1')
          },
        }
      },
    },
    {
      name: 'memory: cache put+get 64 KiB (body read)',
      target: 1.0,
      setup() {
        const ours = new MemoryCacheStore()
        const theirs = new stoma.InMemoryCacheStore({ maxEntries: 10_000 })
        const roundTrip = (store) => async (i) => {
          const key = `page:${i % 64}`
          await store.put(key, new Response(body64k, { headers }), 60)
          const hit = await store.get(key)
          await hit.arrayBuffer()
        }
        return { ours: roundTrip(ours), theirs: roundTrip(theirs) }
      },
    },
  ]
}
