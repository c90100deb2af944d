// The real Stoma gateway (npm @homegrower-club/stoma 0.1.0-rc.5) running its
// rateLimit, cache and circuitBreaker policies on this package's stores.
import { cache, circuitBreaker, createGateway, rateLimit } from '@homegrower-club/stoma'
import { createPolicyTestHarness } from '@homegrower-club/stoma/sdk'
import { createRequire } from 'node:module'
import { describe, expect, it } from 'vitest'
import { TestAdapter, memoryAdapter } from '../index.mjs'
import { windowAt } from './support/sliding-window.mjs'

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe('Stoma gateway on native memory stores', () => {
  it('answers 429 once the rate limit is spent', async () => {
    const adapter = memoryAdapter()
    const gateway = createGateway({
      adapter,
      routes: [
        {
          path: '/limited',
          pipeline: {
            policies: [
              rateLimit({ max: 3, windowSeconds: 60, store: adapter.rateLimitStore, keyBy: () => 'client-1' }),
            ],
            upstream: { type: 'handler', handler: () => new Response('ok') },
          },
        },
      ],
    })
    const statuses = []
    for (let i = 0; i < 5; i++) statuses.push((await gateway.app.request('/limited')).status)
    expect(statuses).toEqual([200, 200, 200, 429, 429])
  })

  it('sliding window: a burst at the end of a window still counts after the boundary (429 where fixed allows)', async () => {
    // The native clock, frozen at chosen instants (src/testing.rs).
    const native = createRequire(import.meta.url)('../native.js')
    const hooks = process.env.STOMA_NATIVE_TEST_HOOKS
    process.env.STOMA_NATIVE_TEST_HOOKS = '1'
    const windowSeconds = 60
    const start = windowAt(Date.now() + 3_600_000, windowSeconds).start
    const end = start + windowSeconds * 1000
    // One request at the window's start, 9 near its end, 10 just after it.
    const instants = [start, ...Array.from({ length: 9 }, (_, i) => end - 100 + i)]
    instants.push(...Array.from({ length: 10 }, (_, i) => end + 1 + i))

    const statuses = async (algorithm: 'fixed-window' | 'sliding-window') => {
      const adapter = memoryAdapter({ rateLimit: { algorithm } })
      const gateway = createGateway({
        adapter,
        routes: [
          {
            path: '/limited',
            pipeline: {
              policies: [rateLimit({ max: 10, windowSeconds, store: adapter.rateLimitStore, keyBy: () => 'client-1' })],
              upstream: { type: 'handler', handler: () => new Response('ok') },
            },
          },
        ],
      })
      const seen: number[] = []
      for (const now of instants) {
        native.__setTestClock(now)
        seen.push((await gateway.app.request('/limited')).status)
      }
      return seen
    }
    try {
      const sliding = await statuses('sliding-window')
      const fixed = await statuses('fixed-window')
      expect(sliding.slice(0, 10)).toEqual(Array(10).fill(200))
      expect(fixed.slice(0, 10)).toEqual(Array(10).fill(200))
      // Just after the boundary: 9 of the 10 earlier requests still count, so 1 more passes.
      expect(sliding.slice(10)).toEqual([200, ...Array(9).fill(429)])
      expect(fixed.slice(10)).toEqual(Array(10).fill(200))
    } finally {
      native.__setTestClock(null)
      if (hooks === undefined) delete process.env.STOMA_NATIVE_TEST_HOOKS
      else process.env.STOMA_NATIVE_TEST_HOOKS = hooks
    }
  })

  it('serves x-cache: HIT with the body intact byte for byte', async () => {
    const adapter = memoryAdapter()
    const body = new Uint8Array(100_000).map((_, i) => (i * 7919) % 256)
    let upstreamCalls = 0
    const gateway = createGateway({
      adapter,
      routes: [
        {
          path: '/cached',
          methods: ['GET'],
          pipeline: {
            policies: [cache({ ttlSeconds: 60, store: adapter.cacheStore })],
            upstream: {
              type: 'handler',
              handler: () => {
                upstreamCalls++
                return new Response(body, {
                  headers: { 'content-type': 'application/octet-stream', 'x-origin': 'yes' },
                })
              },
            },
          },
        },
      ],
    })
    const miss = await gateway.app.request('/cached')
    expect(miss.headers.get('x-cache')).toBe('MISS')
    expect(new Uint8Array(await miss.arrayBuffer())).toEqual(body)
    const hit = await gateway.app.request('/cached')
    expect(hit.headers.get('x-cache')).toBe('HIT')
    expect(hit.headers.get('x-origin')).toBe('yes')
    expect(new Uint8Array(await hit.arrayBuffer())).toEqual(body)
    expect(upstreamCalls).toBe(1)
  })

  it('opens the circuit (503), half-opens after the timeout and closes on success', async () => {
    const adapter = memoryAdapter()
    let healthy = false
    const gateway = createGateway({
      adapter,
      routes: [
        {
          path: '/flaky',
          pipeline: {
            policies: [
              circuitBreaker({ failureThreshold: 3, resetTimeoutMs: 300, store: adapter.circuitBreakerStore }),
            ],
            upstream: { type: 'handler', handler: () => new Response('x', { status: healthy ? 200 : 500 }) },
          },
        },
      ],
    })
    const statuses = []
    for (let i = 0; i < 5; i++) statuses.push((await gateway.app.request('/flaky')).status)
    expect(statuses).toEqual([500, 500, 500, 503, 503])
    expect((await adapter.circuitBreakerStore.getState('/flaky')).state).toBe('open')

    healthy = true
    await sleep(350)
    expect((await gateway.app.request('/flaky')).status).toBe(200)
    expect(await adapter.circuitBreakerStore.getState('/flaky')).toMatchObject({ state: 'closed', failureCount: 0 })
    expect((await gateway.app.request('/flaky')).status).toBe(200)
  })

  it('runs a policy in createPolicyTestHarness with our TestAdapter and flushes waitUntil work', async () => {
    const adapter = new TestAdapter()
    const policy = rateLimit({ max: 1, windowSeconds: 60, store: adapter.rateLimitStore, keyBy: () => 'k' })
    // Stoma's TestAdapter type has a private field, so TypeScript treats it
    // nominally; ours has every public member (see __test__/types.ts).
    const { request } = createPolicyTestHarness(policy, { adapter: adapter as never })
    expect((await request('/x')).status).toBe(200)
    expect((await request('/x')).status).toBe(429)
    let flushed = false
    adapter.waitUntil(sleep(20).then(() => (flushed = true)))
    await adapter.waitAll()
    expect(flushed).toBe(true)
  })
})
