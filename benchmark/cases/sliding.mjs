// The sliding window's cost (issue #18): stoma-native's memory store with
// `algorithm: 'sliding-window'` as "ours" against the same store's fixed
// window as "theirs" (not Stoma's JS store), so the ratio is sliding's
// throughput over fixed's. The target 0.77 is the bound: sliding
// takes at most 1.3× fixed's time per call. With 60 s and 600 s windows
// nearly every hit lands in a window with nothing carried into it (the fast
// path); with 1 s windows most hits carry the previous window's share (a
// precise clock read and a division). Run in Node and, by
// benchmark/runtime.mjs, in Bun and Deno.
import { MemoryRateLimitStore } from 'stoma-native'
import { SLIDING_DETAIL as DETAIL, SLIDING_TARGET } from '../harness.mjs'

const KEYS = 100_000
// Shuffled like memory.mjs's 100k-key case, so neither store reads its keys in insertion order.
const keys = Array.from({ length: KEYS }, (_, i) => `client:${i}`)
for (let i = KEYS - 1, seed = 7; i > 0; i--) {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0
  const j = seed % (i + 1)
  ;[keys[i], keys[j]] = [keys[j], keys[i]]
}

/** Both algorithms counting one key in windows of `windowSeconds`. */
function oneKey(name, windowSeconds) {
  return {
    name,
    target: SLIDING_TARGET,
    detail: DETAIL,
    setup() {
      const sliding = new MemoryRateLimitStore({ algorithm: 'sliding-window' })
      const fixed = new MemoryRateLimitStore()
      return {
        ours: () => sliding.increment('client:1', windowSeconds),
        theirs: () => fixed.increment('client:1', windowSeconds),
      }
    },
  }
}

export default function slidingCases() {
  return [
    oneKey('memory: sliding ÷ fixed window (both native), 1 key', 60),
    oneKey('memory: sliding ÷ fixed window (both native), 1 key, 1 s windows (carrying over)', 1),
    {
      name: 'memory: sliding ÷ fixed window (both native), 100k keys, shuffled',
      target: SLIDING_TARGET,
      detail: DETAIL,
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
