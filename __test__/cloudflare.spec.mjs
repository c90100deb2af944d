// The Cloudflare adapter, tested inside the real workerd runtime through
// miniflare: the worker in cloudflare-worker.mjs is bundled with esbuild the
// way wrangler would (workerd/worker conditions), then driven over HTTP.
// Store calls cross into workerd through /store, so the shared store
// contract runs against the real Durable Object, KV and Cache API stores.
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { Miniflare } from 'miniflare'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  CacheApiCacheStore,
  InMemoryCircuitBreakerStore,
  KVRateLimitStore,
  cloudflareAdapter,
} from 'stoma-native/adapters/cloudflare'
import { decode, encode } from './cloudflare-codec.mjs'
import { slidingWindowContract, windowAt } from './support/sliding-window.mjs'
import { storeContract } from './support/store-contract.mjs'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const COMPATIBILITY_DATE = '2025-04-01'

// Stoma 0.1.0-rc.5's package.json exports point at sources it does not
// ship, so its bundle entry is aliased to the shipped dist file.
const STOMA_DIST = fileURLToPath(new URL('../node_modules/@homegrower-club/stoma/dist/', import.meta.url))

/** Bundles a worker from __test__/ as wrangler would for workerd. */
async function bundleWorker(file) {
  const result = await build({
    entryPoints: [fileURLToPath(new URL(file, import.meta.url))],
    bundle: true,
    format: 'esm',
    platform: 'neutral',
    conditions: ['workerd', 'worker', 'browser'],
    mainFields: ['module', 'main'],
    alias: {
      '@homegrower-club/stoma': `${STOMA_DIST}index.js`,
      '@homegrower-club/stoma/adapters/cloudflare': `${STOMA_DIST}adapters/cloudflare.js`,
      '@homegrower-club/stoma/adapters/durable-object': `${STOMA_DIST}adapters/durable-object.js`,
    },
    write: false,
    logLevel: 'silent',
  })
  return result.outputFiles[0].text
}

// The lib/ modules the Cloudflare entry shares with the Node side (plain
// CommonJS with no Node built-in); no other lib/ file may be bundled.
const SHARED_LIB = ['lib/circuit.js', 'lib/stats.js', 'lib/validate.js']

/** esbuild marks each bundled file with a `// path` line; these are ours. */
function bundledFiles(bundle) {
  return [...bundle.matchAll(/^\/\/ (\S+)$/gm)].map((m) => m[1]).filter((path) => !path.startsWith('node_modules/'))
}

/** The backend behind the BACKEND service binding; any .../down fails. */
const BACKEND = {
  name: 'backend',
  modules: true,
  compatibilityDate: COMPATIBILITY_DATE,
  script: `export default { fetch(request) {
    if (new URL(request.url).pathname.endsWith('/down')) return new Response('down', { status: 500 })
    return Response.json({ from: 'backend', url: request.url, header: request.headers.get('x-test') })
  } }`,
}

let bundle
let mf

function workerOptions(name, extra) {
  return {
    name,
    modules: [{ type: 'ESModule', path: `${name}.mjs`, contents: bundle }],
    compatibilityDate: COMPATIBILITY_DATE,
    kvNamespaces: { RATE_LIMIT_KV: 'rate-limit-kv' },
    ...extra,
  }
}

beforeAll(async () => {
  bundle = await bundleWorker('./cloudflare-worker.mjs')
  mf = new Miniflare({
    workers: [
      workerOptions('gateway', {
        durableObjects: {
          RATE_LIMITER: 'RateLimiterDO',
          CIRCUITS: 'CircuitBreakerDO',
          STOMA_RATE_LIMITER: 'StomaRateLimiterDO',
        },
        serviceBindings: { BACKEND: 'backend' },
      }),
      // The same code in a second worker, hence a second isolate, bound to
      // the first worker's Durable Objects.
      workerOptions('gateway-b', {
        durableObjects: {
          RATE_LIMITER: { className: 'RateLimiterDO', scriptName: 'gateway' },
          CIRCUITS: { className: 'CircuitBreakerDO', scriptName: 'gateway' },
        },
      }),
      BACKEND,
    ],
  })
  await mf.ready
}, 60_000)

afterAll(async () => {
  await mf?.dispose()
})

/** A request to the gateway worker, or to `worker` ('gateway-b'). */
async function fetchWorker(path, init, worker = 'gateway') {
  const url = `http://gateway.test${path}`
  return worker === 'gateway' ? mf.dispatchFetch(url, init) : (await mf.getWorker(worker)).fetch(url, init)
}

/** Calls `adapter[store][method](...args)` inside workerd on a fresh adapter. */
async function callStore({ profile, worker, prefix = '' }, store, method, args) {
  const keyed = typeof args[0] === 'string' ? [prefix + args[0], ...args.slice(1)] : args
  const body = JSON.stringify(await encode({ profile, store, method, args: keyed }))
  const response = await fetchWorker('/store', { method: 'POST', body }, worker)
  const { result, error } = await response.json()
  if (error) throw decode(error)
  return decode(result)
}

/** Store-shaped objects whose calls run in workerd. */
function remoteStores(target) {
  const remote = (store, methods) =>
    Object.fromEntries(methods.map((method) => [method, (...args) => callStore(target, store, method, args)]))
  return {
    rateLimitStore: remote('rateLimitStore', ['increment']),
    circuitBreakerStore: remote('circuitBreakerStore', [
      'getState',
      'recordSuccess',
      'recordFailure',
      'transition',
      'reset',
    ]),
    cacheStore: remote('cacheStore', ['get', 'put', 'delete']),
  }
}

// Durable Objects for rate limits and circuits, caches.default for responses.
storeContract('cloudflare (Durable Objects, caches.default)', {
  createStores: () => remoteStores({ profile: 'durable', prefix: 'contract-do:' }),
})
// The fallbacks: per-isolate circuits and a named cache under its own origin.
storeContract('cloudflare (isolate circuits, caches.open)', {
  createStores: () => remoteStores({ profile: 'isolate', prefix: 'contract-isolate:' }),
})

describe('cloudflare: bundling for workerd', () => {
  it('bundles the adapter without the native loader or Node built-ins', () => {
    expect(bundledFiles(bundle).sort()).toEqual([
      '__test__/cloudflare-codec.mjs',
      '__test__/cloudflare-worker.mjs',
      'cloudflare/cache.js',
      'cloudflare/circuit.js',
      'cloudflare/durable-objects.js',
      'cloudflare/index.js',
      'cloudflare/kv.js',
      ...SHARED_LIB,
    ])
    expect(bundle).not.toContain('.node')
    expect(bundle).not.toContain('native.js')
    // Nothing is required by name, nor through esbuild's dynamic-require
    // shim (its wrapper of the CommonJS lib/ files, `__require()`, takes no name).
    expect(bundle).not.toMatch(/require\(\s*['"`]/)
    expect(bundle).not.toContain('Dynamic require')
    expect(bundle).not.toMatch(/from\s*["']node:/)
  })

  it('resolves the bare package to the plain-JS entry under the workerd conditions', async () => {
    const result = await build({
      stdin: {
        contents: "export { cloudflareAdapter } from 'stoma-native'",
        resolveDir: fileURLToPath(new URL('.', import.meta.url)),
      },
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      conditions: ['workerd', 'worker'],
      write: false,
      logLevel: 'silent',
    })
    const text = result.outputFiles[0].text
    expect(bundledFiles(text)).toContain('cloudflare/index.js')
    expect(text).not.toContain('native.js')
  })

  it('picks Durable Objects over KV, and KV plus isolate circuits without them', async () => {
    const kinds = async (profile) => (await fetchWorker(`/kinds?profile=${profile}`)).json()
    expect(await kinds('durable')).toEqual({
      rateLimitStore: 'DurableObjectRateLimitStore',
      circuitBreakerStore: 'DurableObjectCircuitBreakerStore',
      cacheStore: 'CacheApiCacheStore',
      waitUntil: 'function',
      dispatchBinding: 'function',
      close: 'function',
      stats: 'function',
    })
    expect((await kinds('both')).rateLimitStore).toBe('DurableObjectRateLimitStore')
    expect(await kinds('kv')).toEqual({
      rateLimitStore: 'KVRateLimitStore',
      circuitBreakerStore: 'InMemoryCircuitBreakerStore',
      cacheStore: 'CacheApiCacheStore',
      close: 'function',
      stats: 'function',
    })
  })
})

describe('cloudflare: rate limits', () => {
  const kv = { profile: 'kv' }
  const increment = (target, key, windowSeconds) =>
    callStore(target, 'rateLimitStore', 'increment', [key, windowSeconds])

  it('counts on KV across requests, in the { count, resetAt } JSON Stoma uses', async () => {
    const counts = []
    for (let i = 0; i < 5; i++) counts.push((await increment(kv, 'kv:count', 60)).count)
    expect(counts).toEqual([1, 2, 3, 4, 5])
    const namespace = await mf.getKVNamespace('RATE_LIMIT_KV')
    const stored = JSON.parse(await namespace.get('kv:count'))
    expect(stored).toEqual({ count: 5, resetAt: expect.any(Number) })
    expect(stored.resetAt).toBeGreaterThan(Date.now() + 55_000)
  })

  it('keeps windows shorter than KV’s 60-second minimum expiry', async () => {
    expect((await increment(kv, 'kv:short', 1)).count).toBe(1)
    expect((await increment(kv, 'kv:short', 1)).count).toBe(2)
    await sleep(1100)
    expect((await increment(kv, 'kv:short', 1)).count).toBe(1)
  })

  it('rejects bad input on KV naming the argument', async () => {
    await expect(increment(kv, 42, 60)).rejects.toThrow(TypeError)
    await expect(increment(kv, 'kv:bad', -1)).rejects.toThrow(/windowSeconds/)
  })

  it('counts exactly on Durable Objects across requests and isolates, and leaves KV alone', async () => {
    const both = { profile: 'both' }
    const results = await Promise.all(Array.from({ length: 50 }, () => increment(both, 'do:count', 60)))
    expect(results.map((r) => r.count).sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1))
    const fromOtherIsolate = await increment({ profile: 'durable', worker: 'gateway-b' }, 'do:count', 60)
    expect(fromOtherIsolate).toEqual({ count: 51, resetAt: results[0].resetAt })
    expect(await (await mf.getKVNamespace('RATE_LIMIT_KV')).get('do:count')).toBeNull()
  })
})

// The sliding window on Durable Objects, in real time: workerd's clock is
// its own (Date.now()), which the native test clock cannot freeze.
slidingWindowContract('cloudflare (Durable Objects)', {
  createStore: () => remoteStores({ profile: 'sliding', prefix: 'sliding-do:' }).rateLimitStore,
  createWithOptions: (rateLimit) =>
    cloudflareAdapter({ rateLimitDo: { idFromName: () => null, get: () => null }, rateLimit }),
})

describe('cloudflare: sliding window', () => {
  const increment = (target, key, windowSeconds) =>
    callStore(target, 'rateLimitStore', 'increment', [key, windowSeconds])

  it('keeps the fixed window’s data apart: one key counts under both algorithms independently', async () => {
    const fixed = await increment({ profile: 'durable' }, 'both-algorithms', 3600)
    const sliding = await increment({ profile: 'sliding' }, 'both-algorithms', 3600)
    expect(fixed.count).toBe(1)
    expect(sliding).toEqual({ count: 1, resetAt: windowAt(sliding.resetAt - 1, 3600).end })
    expect((await increment({ profile: 'durable' }, 'both-algorithms', 3600)).count).toBe(2)
    expect((await increment({ profile: 'sliding', worker: 'gateway-b' }, 'both-algorithms', 3600)).count).toBe(2)
  })

  it("bound to Stoma's RateLimiterDO, which counts a fixed window, the sliding store fails saying what to bind", async () => {
    await expect(increment({ profile: 'sliding-on-stoma-do' }, 'stoma-class', 60)).rejects.toThrow(
      /did not count a sliding window; bind stoma-native’s RateLimiterDO/,
    )
  })

  it('KV refuses the sliding window, saying why', async () => {
    await expect(increment({ profile: 'sliding-kv' }, 'kv:sliding', 60)).rejects.toThrow(RangeError)
    await expect(increment({ profile: 'sliding-kv' }, 'kv:sliding', 60)).rejects.toThrow(/atomic.*Durable Object/)
  })
})

describe('cloudflare: circuit breaker', () => {
  const circuit = (target, method, ...args) => callStore(target, 'circuitBreakerStore', method, args)

  it('remembers a circuit across requests and isolates with Durable Objects', async () => {
    const gateway = { profile: 'durable' }
    for (let i = 0; i < 3; i++) await circuit(gateway, 'recordFailure', 'cb:upstream')
    await circuit(gateway, 'transition', 'cb:upstream', 'open')
    // A fresh adapter in another isolate sees the open circuit.
    const seen = await circuit({ profile: 'durable', worker: 'gateway-b' }, 'getState', 'cb:upstream')
    expect(seen).toMatchObject({ state: 'open', failureCount: 3, successCount: 0 })
    expect(seen.lastFailureTime).toBeGreaterThan(0)
  })

  it('without circuitBreakerDo, remembers across requests within one isolate only', async () => {
    const here = { profile: 'kv' }
    expect((await circuit(here, 'recordFailure', 'cb:isolate')).failureCount).toBe(1)
    expect((await circuit(here, 'recordFailure', 'cb:isolate')).failureCount).toBe(2)
    const elsewhere = await circuit({ profile: 'kv', worker: 'gateway-b' }, 'getState', 'cb:isolate')
    expect(elsewhere).toMatchObject({ state: 'closed', failureCount: 0 })
  })
})

describe('cloudflare: cache', () => {
  it('round-trips status, headers the Cache API would refuse or rewrite, and a binary body', async () => {
    const target = { profile: 'durable' }
    const body = randomBytes(100 * 1024)
    const headers = [
      ['cache-control', 'private, no-store'],
      ['content-type', 'application/octet-stream'],
      ['set-cookie', 'session=1'],
      ['x-unicode', 'caf\u00e9'],
    ]
    await callStore(target, 'cacheStore', 'put', ['cache:round-trip', new Response(body, { status: 500, headers }), 30])
    const hit = await callStore(target, 'cacheStore', 'get', ['cache:round-trip'])
    expect(hit.status).toBe(500)
    expect([...hit.headers]).toEqual([...new Headers(headers)])
    expect(Buffer.from(await hit.arrayBuffer()).equals(body)).toBe(true)
  })

  it('treats a zero TTL as a delete', async () => {
    const target = { profile: 'durable' }
    await callStore(target, 'cacheStore', 'put', ['cache:zero', new Response('x'), 60])
    await callStore(target, 'cacheStore', 'put', ['cache:zero', new Response('y'), 0])
    expect(await callStore(target, 'cacheStore', 'get', ['cache:zero'])).toBeNull()
  })
})

describe('cloudflare: waitUntil and service bindings', () => {
  it('dispatches to a service binding in env', async () => {
    const response = await fetchWorker('/dispatch?service=BACKEND')
    expect(response.status).toBe(200)
    expect(await response.json()).toEqual({
      from: 'backend',
      url: 'https://backend.internal/hello',
      header: 'via-binding',
    })
  })

  it('names a missing service binding', async () => {
    const response = await fetchWorker('/dispatch?service=BILLING')
    expect(response.status).toBe(502)
    expect(await response.text()).toBe(
      'cloudflareAdapter: dispatchBinding: no service binding named "BILLING" (service bindings in env: BACKEND)',
    )
  })

  it('finishes waitUntil work after the response', async () => {
    const namespace = await mf.getKVNamespace('RATE_LIMIT_KV')
    const response = await fetchWorker('/background?key=bg:done')
    expect(response.status).toBe(202)
    expect(await namespace.get('bg:done')).toBeNull()
    const deadline = Date.now() + 5000
    while ((await namespace.get('bg:done')) === null && Date.now() < deadline) await sleep(50)
    expect(await namespace.get('bg:done')).toBe('done')
  })
})

describe("cloudflare: Stoma's gateway in workerd on this adapter", () => {
  let gateway
  let gatewayBundle
  beforeAll(async () => {
    gatewayBundle = await bundleWorker('./cloudflare-stoma-worker.mjs')
    gateway = new Miniflare({
      workers: [
        {
          name: 'edge',
          modules: [{ type: 'ESModule', path: 'edge.mjs', contents: gatewayBundle }],
          compatibilityDate: COMPATIBILITY_DATE,
          durableObjects: { RATE_LIMITER: 'RateLimiterDO', CIRCUITS: 'CircuitBreakerDO' },
          serviceBindings: { BACKEND: 'backend' },
        },
        BACKEND,
      ],
    })
    await gateway.ready
  }, 60_000)
  afterAll(async () => {
    await gateway?.dispose()
  })
  const get = (path) => gateway.dispatchFetch(`http://edge.test${path}`)

  it('bundles Stoma with the adapter and no native loader', () => {
    expect(bundledFiles(gatewayBundle)).toContain('cloudflare/index.js')
    const shared = bundledFiles(gatewayBundle).filter((path) => !/^(cloudflare|__test__)\//.test(path))
    expect(shared.sort()).toEqual(SHARED_LIB)
    expect(gatewayBundle).not.toContain('native.js')
  })

  it('answers 429 past the limit', async () => {
    expect([(await get('/limited')).status, (await get('/limited')).status, (await get('/limited')).status]).toEqual([
      200, 200, 429,
    ])
  })

  it('serves the second request from the Cache API with x-cache: HIT', async () => {
    const first = await get('/cached')
    expect(first.headers.get('x-cache')).toBe('MISS')
    const second = await get('/cached')
    expect(second.headers.get('x-cache')).toBe('HIT')
    expect(await second.text()).toBe(await first.text())
  })

  it('opens the circuit after repeated upstream failures, though every request builds a new gateway', async () => {
    const statuses = []
    for (let i = 0; i < 4; i++) statuses.push((await get('/down')).status)
    expect(statuses).toEqual([500, 500, 503, 503])
  })

  it("(for contrast) never opens with Stoma's own per-isolate circuit store", async () => {
    const statuses = []
    for (let i = 0; i < 4; i++) statuses.push((await get('/stoma/down')).status)
    expect(statuses).toEqual([500, 500, 500, 500])
  })
})

describe('cloudflare: argument checks (in Node)', () => {
  const kv = { get: async () => null, put: async () => {} }
  const cache = { match: async () => undefined, put: async () => {}, delete: async () => false }

  it('names the adapter option that is wrong', () => {
    expect(() => cloudflareAdapter('env')).toThrow(/bindings must be an object/)
    expect(() => cloudflareAdapter({ cache, rateLimitKv: {} })).toThrow(TypeError)
    expect(() => cloudflareAdapter({ cache, rateLimitKv: {} })).toThrow(/rateLimitKv/)
    expect(() => cloudflareAdapter({ cache, rateLimitDo: kv })).toThrow(/rateLimitDo/)
    expect(() => cloudflareAdapter({ cache, circuitBreakerDo: 1 })).toThrow(/circuitBreakerDo/)
    expect(() => cloudflareAdapter({ cache, executionCtx: {} })).toThrow(/executionCtx/)
    expect(() => cloudflareAdapter({ cache, env: 'x' })).toThrow(/env/)
    expect(() => cloudflareAdapter({ cache, cacheOrigin: 'not a url' })).toThrow(RangeError)
    expect(() => cloudflareAdapter({ cache, cacheOrigin: 'not a url' })).toThrow(/cacheOrigin/)
    expect(() => new KVRateLimitStore()).toThrow(/kv must be a KVNamespace/)
  })

  it('refuses unknown bindings and options with a TypeError naming the key and listing the accepted ones', () => {
    const refused = (build, message) => {
      expect(build).toThrow(TypeError)
      expect(build).toThrow(message)
    }
    refused(
      () => cloudflareAdapter({ cache, ratelimitKv: kv }),
      'cloudflareAdapter: unknown option ratelimitKv; the options are rateLimitKv, rateLimitDo, circuitBreakerDo, cache, cacheOrigin, executionCtx, env, rateLimit',
    )
    refused(() => cloudflareAdapter({ cache, executionContext: {} }), 'unknown option executionContext')
    refused(
      () => new InMemoryCircuitBreakerStore({ maxkeys: 2 }),
      'InMemoryCircuitBreakerStore: unknown option maxkeys; the options are maxKeys',
    )
    // env is the Worker's own: its bindings are whatever the Worker declares
    expect(cloudflareAdapter({ cache, env: { BACKEND: {}, API_TOKEN: 'x' } }).dispatchBinding).toBeTypeOf('function')
  })

  it('close() resolves and leaves the isolate circuits to the next adapter', async () => {
    const adapter = cloudflareAdapter({ cache })
    await adapter.circuitBreakerStore.recordFailure('close:kept')
    await expect(adapter.close()).resolves.toBeUndefined()
    await expect(adapter.close()).resolves.toBeUndefined()
    const next = cloudflareAdapter({ cache })
    expect((await next.circuitBreakerStore.getState('close:kept')).failureCount).toBe(1)
    await next.circuitBreakerStore.reset('close:kept')
  })

  it('explains that caches.default is missing outside Workers', () => {
    expect(() => new CacheApiCacheStore()).toThrow(/caches\.default is not available/)
    expect(() => cloudflareAdapter({})).toThrow(TypeError)
  })

  it('rejects a service name that is not a string', async () => {
    const adapter = cloudflareAdapter({ cache, env: {} })
    await expect(adapter.dispatchBinding(undefined, new Request('https://x.test'))).rejects.toThrow(
      /service must be a string/,
    )
  })

  it('bounds the isolate circuit store, forgetting the least recently used circuit', async () => {
    const store = new InMemoryCircuitBreakerStore({ maxKeys: 2 })
    await store.recordFailure('a')
    await store.recordFailure('b')
    await store.getState('a')
    await store.recordFailure('c')
    expect(store.size).toBe(2)
    expect((await store.getState('a')).failureCount).toBe(1)
    expect((await store.getState('b')).failureCount).toBe(0)
    expect(() => new InMemoryCircuitBreakerStore({ maxKeys: 0 })).toThrow(RangeError)
  })
})
