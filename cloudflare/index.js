// stoma-native/adapters/cloudflare: Stoma's Cloudflare Workers adapter in
// plain JavaScript. Workers cannot load native code, so this entry uses no
// Node built-ins and never imports the native loader; bundlers pick it
// through the `workerd` / `worker` export conditions.

import { CacheApiCacheStore } from './cache.js'
import { InMemoryCircuitBreakerStore } from './circuit.js'
import {
  CircuitBreakerDO,
  DurableObjectCircuitBreakerStore,
  DurableObjectRateLimitStore,
  RateLimiterDO,
} from './durable-objects.js'
import { KVRateLimitStore } from './kv.js'
import { adapterStats } from '../lib/stats.js'
import { checkBinding, checkKey, checkKnownKeys, optionsObject, rateLimitAlgorithm } from '../lib/validate.js'

export {
  CacheApiCacheStore,
  CircuitBreakerDO,
  DurableObjectCircuitBreakerStore,
  DurableObjectRateLimitStore,
  InMemoryCircuitBreakerStore,
  KVRateLimitStore,
  RateLimiterDO,
}

// Workers commonly build the adapter per request; the fallback circuit
// store lives at module level so it outlives the request (one per isolate).
let isolateCircuits

/** The per-isolate circuit store every adapter without circuitBreakerDo shares. */
export function isolateCircuitBreakerStore() {
  isolateCircuits ??= new InMemoryCircuitBreakerStore()
  return isolateCircuits
}

const given = (value) => value !== undefined && value !== null

const BINDINGS = [
  'rateLimitKv',
  'rateLimitDo',
  'circuitBreakerDo',
  'cache',
  'cacheOrigin',
  'executionCtx',
  'env',
  'rateLimit',
]

/**
 * A GatewayAdapter from Cloudflare bindings. Rate limits: Durable Objects
 * (`rateLimitDo`, exact) win over KV (`rateLimitKv`, approximate); none
 * without either. Circuits: Durable Objects (`circuitBreakerDo`) or this
 * isolate's memory. Cache: the Cache API (`cache`, else `caches.default`).
 * `executionCtx` enables waitUntil; `env` enables dispatchBinding.
 * `rateLimit: { algorithm }` picks 'fixed-window' (default) or
 * 'sliding-window' (Durable Objects only; KV refuses it).
 */
export function cloudflareAdapter(bindings) {
  const opts = optionsObject('cloudflareAdapter', bindings, 'bindings')
  checkKnownKeys('cloudflareAdapter', opts, BINDINGS)
  const adapter = {}

  // Checked even without a rate-limit binding, so a bad option never passes unseen.
  rateLimitAlgorithm('cloudflareAdapter', opts.rateLimit)
  if (given(opts.rateLimitDo)) {
    adapter.rateLimitStore = fromBinding(
      'rateLimitDo',
      () => new DurableObjectRateLimitStore(opts.rateLimitDo, opts.rateLimit),
    )
  } else if (given(opts.rateLimitKv)) {
    adapter.rateLimitStore = fromBinding('rateLimitKv', () => new KVRateLimitStore(opts.rateLimitKv, opts.rateLimit))
  }

  adapter.circuitBreakerStore = given(opts.circuitBreakerDo)
    ? fromBinding('circuitBreakerDo', () => new DurableObjectCircuitBreakerStore(opts.circuitBreakerDo))
    : isolateCircuitBreakerStore()

  // The cache store's errors already name `cache` and `cacheOrigin`.
  adapter.cacheStore = new CacheApiCacheStore(opts.cache, opts.cacheOrigin)

  if (given(opts.executionCtx)) {
    const ctx = checkBinding('cloudflareAdapter', opts.executionCtx, 'executionCtx', 'ExecutionContext', ['waitUntil'])
    adapter.waitUntil = (promise) => ctx.waitUntil(promise)
  }

  if (given(opts.env)) {
    const env = optionsObject('cloudflareAdapter', opts.env, 'env')
    adapter.dispatchBinding = (service, request) => dispatchBinding(env, service, request)
  }

  // For shutdown code written for every backend. There is nothing to close:
  // the bindings are the platform's, and the isolate's circuit store is
  // shared by every adapter in the isolate, so it must outlive this one.
  adapter.close = () => Promise.resolve()
  // The isolate's circuit store counts the calls of every adapter sharing it.
  adapter.stats = () => adapterStats(adapter)

  return adapter
}

/** Builds a store, naming the adapter option in any argument error. */
function fromBinding(option, build) {
  try {
    return build()
  } catch (error) {
    if (error instanceof TypeError) throw new TypeError(`cloudflareAdapter: ${option}: ${error.message}`)
    if (error instanceof RangeError) throw new RangeError(`cloudflareAdapter: ${option}: ${error.message}`)
    throw error
  }
}

/** Sends `request` to the service binding named `service` in `env`. */
async function dispatchBinding(env, service, request) {
  checkKey('cloudflareAdapter: dispatchBinding', service, 'service')
  const binding = env[service]
  if (!binding || typeof binding.fetch !== 'function') {
    const available = Object.keys(env).filter((name) => typeof env[name]?.fetch === 'function')
    const hint =
      available.length > 0 ? `service bindings in env: ${available.join(', ')}` : 'env has no service bindings'
    throw new Error(`cloudflareAdapter: dispatchBinding: no service binding named ${JSON.stringify(service)} (${hint})`)
  }
  return binding.fetch(request)
}
