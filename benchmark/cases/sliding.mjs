// The sliding window's cost (issue #18): stoma-native's memory store with
// `algorithm: 'sliding-window'` as "ours" against the same store's fixed
// window as "theirs" (not Stoma's JS store), so the ratio is sliding's
// throughput over fixed's. The target 0.77 is the bound: sliding
// takes at most 1.3× fixed's time per call. Run in Node and, by
// benchmark/runtime.mjs, in Bun and Deno.
import { MemoryRateLimitStore } from 'stoma-native'

const KEYS = 100_000
// Shuffled like memory.mjs's 100k-key case, so neither store reads its keys in insertion order.
const keys = Array.from({ length: KEYS }, (_, i) => `client:${i}`)
for (let i = KEYS - 1, seed = 7; i > 0; i--) {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0
  const j = seed % (i + 1)
  ;[keys[i], keys[j]] = [keys[j], keys[i]]
}

const SLIDING_TARGET = 1 / 1.3

export default function slidingCases() {
  return [
    {
      name: 'memory: sliding ÷ fixed window (both native), 1 key',
      target: SLIDING_TARGET,
      setup() {
        const sliding = new MemoryRateLimitStore({ algorithm: 'sliding-window' })
        const fixed = new MemoryRateLimitStore()
        return {
          ours: () => sliding.increment('client:1', 60),
          theirs: () => fixed.increment('client:1', 60),
        }
      },
    },
    {
      name: 'memory: sliding ÷ fixed window (both native), 100k keys, shuffled',
      target: SLIDING_TARGET,
      async setup() {
        const sliding = new MemoryRateLimitStore({ algorithm: 'sliding-window' })
        const fixed = new MemoryRateLimitStore()
        for (const key of keys) {
          await sliding.increment(key, 600)
          await fixed.increment(key, 600)
        }
        return {
          ours: (i) => sliding.increment(keys[i % KEYS], 600),
          theirs: (i) => fixed.increment(keys[i % KEYS], 600),
        }
      },
    },
  ]
}
