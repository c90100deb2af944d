// Child process for lifecycle.spec.mjs: 10,000 (argv[3]) create/close cycles
// of one adapter kind (argv[2]), calls in every 100th cycle, then a GC; prints
// RSS and open file descriptors before (after a warm-up) and after, as JSON.
// Run with --expose-gc.
import { readdirSync } from 'node:fs'
import { createRequire } from 'node:module'

const { memoryAdapter, redisAdapter, postgresAdapter } = createRequire(import.meta.url)(process.env.STOMA_NATIVE)
const kind = process.argv[2]
const cycles = Number(process.argv[3] ?? 10_000)
const rss = () => process.memoryUsage().rss / 2 ** 20
const heap = () => process.memoryUsage().heapUsed / 2 ** 20
const external = () => process.memoryUsage().external / 2 ** 20
const fds = () => readdirSync('/proc/self/fd').length
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// memory-dropped: adapters never closed, left to the GC, each holding a
// 4 KiB cache entry (~40 MiB over 10,000 cycles if they were never freed).
const dropped = kind === 'memory-dropped'
const make = {
  memory: () => memoryAdapter(),
  'memory-dropped': () => memoryAdapter(),
  redis: () => redisAdapter({ url: process.env.REDIS_URL, prefix: process.env.PREFIX }),
  postgres: () => postgresAdapter({ url: process.env.DATABASE_URL, tablePrefix: process.env.PREFIX, poolSize: 2 }),
}[kind]

async function close(adapter) {
  if (adapter.close) {
    await adapter.close()
    await adapter.close() // twice is fine
  } else {
    adapter.rateLimitStore.destroy()
    adapter.circuitBreakerStore.destroy()
    adapter.cacheStore.destroy()
  }
}

async function use(adapter, i) {
  const hit = await adapter.rateLimitStore.increment(`k${i}`, 60)
  if (hit.count !== 1) throw new Error(`count ${hit.count}`)
  await adapter.circuitBreakerStore.recordFailure('c')
  await adapter.cacheStore.put('p', new Response('x'), 60)
  if ((await (await adapter.cacheStore.get('p')).text()) !== 'x') throw new Error('cache')
}

let serial = 0
const body = new Uint8Array(4096)
async function cycle(i) {
  const adapter = make()
  if (dropped) {
    await adapter.cacheStore.put('p', new Response(body), 60)
    return
  }
  if (i % 100 === 0) await use(adapter, serial++)
  await close(adapter)
  if (i % 1000 === 0) {
    // Calls after close reject with a clear error naming the store.
    const error = await adapter.rateLimitStore.increment('k', 60).then(
      () => null,
      (e) => e,
    )
    if (
      !(error instanceof Error) ||
      !/^(Memory|Redis|Postgres)RateLimitStore: .*(destroyed|closed)/.test(error.message)
    ) {
      throw new Error(`after close: ${error?.message}`)
    }
  }
}

const settle = async () => {
  for (let i = 0; i < 5; i++) {
    global.gc()
    await sleep(100)
  }
}

// Node runs N-API finalizers from the event loop, so a loop that never
// yields a macrotask turn defers them all; yield as a server would.
const turn = () => new Promise((resolve) => setImmediate(resolve))

// Warm up (first connections, JIT, tokio threads, the allocator's and V8's
// steady state: RSS rises for the first ~20,000 memory adapters, then stays
// flat), then measure.
const warmUp = Number(process.argv[4] ?? 200)
for (let i = 0; i < warmUp; i++) {
  await cycle(i)
  if (i % 100 === 99) await turn()
}
await settle()
const before = { rss: rss(), heap: heap(), external: external(), fds: fds() }
const started = Date.now()
for (let i = 0; i < cycles; i++) {
  await cycle(i)
  if (i % 100 === 99) await turn()
}
const ms = Date.now() - started
await settle()
console.log(
  JSON.stringify({ kind, cycles, ms, before, after: { rss: rss(), heap: heap(), external: external(), fds: fds() } }),
)
