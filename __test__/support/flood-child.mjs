// Child process for flood.spec.mjs: floods one memory store with 1,000,000
// (or argv[3]) distinct keys and prints, as JSON, the RSS before and at its
// peak (sampled every batch) and after a GC, plus the mean cost per call of
// each batch of 100,000. Run with --expose-gc.
import { createRequire } from 'node:module'

const { MemoryRateLimitStore, MemoryCacheStore, MemoryCircuitBreakerStore } = createRequire(import.meta.url)(
  process.env.STOMA_NATIVE,
)
const kind = process.argv[2]
const total = Number(process.argv[3] ?? 1_000_000)
const BATCH = 100_000
const MiB = 2 ** 20
const rss = () => process.memoryUsage().rss / MiB

const headers = new Headers({ 'content-type': 'application/octet-stream', etag: '"abc"' })
const noBody = new Response(null, { headers })
const chunk = new Uint8Array(1024)
// Response-shaped, with a one-chunk 1 KiB body stream: the store's own cost
// without the ~30 µs of building a real Response per call.
const withBody = () => ({
  status: 200,
  headers,
  arrayBuffer: async () => chunk.buffer,
  body: {
    getReader() {
      let done = false
      return {
        read: async () => {
          if (done) return { done }
          done = true
          return { done: false, value: chunk }
        },
      }
    },
  },
})

const stores = {
  rateLimit: () => {
    const store = new MemoryRateLimitStore({ maxKeys: 100_000 })
    return { store, call: (i) => store.increment(`ip:10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:${i}`, 60) }
  },
  circuit: () => {
    const store = new MemoryCircuitBreakerStore({ maxKeys: 10_000 })
    return { store, call: (i) => store.recordFailure(`upstream-${i}`) }
  },
  // 64 MiB binds: each entry is a ~16-byte key and ~48 bytes of headers.
  cacheBytes: () => {
    const store = new MemoryCacheStore({ maxEntries: 100_000_000, maxBytes: 64 * MiB })
    return { store, call: (i) => store.put(`GET /item/${i}`, noBody, 60) }
  },
  // 10,000 entries bind: each holds a 1 KiB body.
  cacheEntries: () => {
    const store = new MemoryCacheStore({ maxEntries: 10_000, maxBytes: 64 * MiB })
    return { store, call: (i) => store.put(`GET /item/${i}`, withBody(), 60) }
  },
}

global.gc()
const base = rss()
const { store, call } = stores[kind]()
let peak = base
let refused = 0
const nsPerCall = []
for (let start = 0; start < total; start += BATCH) {
  const t = process.hrtime.bigint()
  for (let i = start; i < start + BATCH; i++) {
    const result = await call(i)
    if (result?.count === Number.MAX_SAFE_INTEGER) refused++
  }
  nsPerCall.push(Number(process.hrtime.bigint() - t) / BATCH)
  peak = Math.max(peak, rss())
}
global.gc()
await new Promise((resolve) => setTimeout(resolve, 20))
global.gc()
console.log(
  JSON.stringify({
    kind,
    total,
    base,
    peak,
    after: rss(),
    size: store.size,
    bytes: store.bytes ?? null,
    refused,
    nsPerCall,
  }),
)
