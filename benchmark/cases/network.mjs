// Case builders shared by the network backends (Redis, PostgreSQL): each
// takes `adapters(stoma)`, which answers `{ ours, theirs, teardown }` — two
// GatewayAdapters on the same server under separate names.

import { SLIDING_DETAIL, SLIDING_TARGET } from '../harness.mjs'

/** Rate-limit increments over 1,000 keys with `concurrency` callers in flight. */
export function incrementCase(name, { adapters, concurrency, target }) {
  return {
    name,
    target,
    concurrency,
    async setup({ stoma }) {
      const { ours, theirs, teardown } = await adapters(stoma)
      return {
        ours: (i) => ours.rateLimitStore.increment(`client:${i % 1000}`, 60),
        theirs: (i) => theirs.rateLimitStore.increment(`client:${i % 1000}`, 60),
        teardown,
      }
    },
  }
}

/** Circuit `recordFailure` over 16 circuits with `concurrency` callers in flight. */
export function circuitCase(name, { adapters, concurrency }) {
  return {
    name,
    concurrency,
    async setup({ stoma }) {
      const { ours, theirs, teardown } = await adapters(stoma)
      return {
        ours: (i) => ours.circuitBreakerStore.recordFailure(`upstream:${i % 16}`),
        theirs: (i) => theirs.circuitBreakerStore.recordFailure(`upstream:${i % 16}`),
        teardown,
      }
    },
  }
}

/** A cache put of `bytes` bytes, then a get whose body is read in full. */
export function cacheCase(name, { adapters, bytes, target }) {
  const body = new Uint8Array(bytes).map((_, i) => (i * 7) % 256)
  const roundTrip = (store) => async (i) => {
    const key = `page:${i % 8}`
    await store.put(key, new Response(body, { headers: { 'content-type': 'application/octet-stream' } }), 60)
    await (await store.get(key)).arrayBuffer()
  }
  return {
    name,
    target,
    samples: 5,
    async setup({ stoma }) {
      const { ours, theirs, teardown } = await adapters(stoma)
      return { ours: roundTrip(ours.cacheStore), theirs: roundTrip(theirs.cacheStore), teardown }
    },
  }
}

/**
 * Our sliding-window increments ("ours") against our fixed-window ones
 * ("theirs" here, not Stoma's) on one backend, over 1,000 keys with
 * `concurrency` callers in flight. `open()` answers `{ sliding, fixed,
 * teardown }`: two of our adapters on the same server, one per algorithm.
 */
export function slidingCase(name, { open, concurrency }) {
  return {
    name,
    target: SLIDING_TARGET,
    detail: SLIDING_DETAIL,
    concurrency,
    async setup() {
      const { sliding, fixed, teardown } = await open()
      return {
        ours: (i) => sliding.rateLimitStore.increment(`client:${i % 1000}`, 60),
        theirs: (i) => fixed.rateLimitStore.increment(`client:${i % 1000}`, 60),
        teardown,
      }
    },
  }
}
