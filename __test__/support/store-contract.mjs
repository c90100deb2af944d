// The store contract: one suite, written once, that every backend runs.
// `createStores()` returns `{ rateLimitStore, circuitBreakerStore, cacheStore }`
// with fresh, isolated state (e.g. a unique key prefix); `close()` (optional)
// releases them after the suite.
import { randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

export function storeContract(backend, { createStores, close }) {
  describe(`${backend}: store contract`, () => {
    let stores
    beforeAll(async () => {
      stores = await createStores()
    })
    afterAll(async () => {
      await close?.(stores)
    })

    describe('rate limit', () => {
      it('opens a window on the first hit and counts within it', async () => {
        const before = Date.now()
        const first = await stores.rateLimitStore.increment('rl:a', 60)
        expect(first.count).toBe(1)
        expect(first.resetAt).toBeGreaterThanOrEqual(before + 60_000 - 1000)
        expect(first.resetAt).toBeLessThanOrEqual(Date.now() + 60_000 + 1000)
        const second = await stores.rateLimitStore.increment('rl:a', 60)
        expect(second).toEqual({ count: 2, resetAt: first.resetAt })
        expect((await stores.rateLimitStore.increment('rl:b', 60)).count).toBe(1)
      })

      it('starts a new window at count 1 once the window has passed', async () => {
        await stores.rateLimitStore.increment('rl:window', 1)
        expect((await stores.rateLimitStore.increment('rl:window', 1)).count).toBe(2)
        await sleep(1100)
        expect((await stores.rateLimitStore.increment('rl:window', 1)).count).toBe(1)
      })

      it('loses no update under 200 concurrent increments', async () => {
        const results = await Promise.all(
          Array.from({ length: 200 }, () => stores.rateLimitStore.increment('rl:concurrent', 60)),
        )
        expect(results.map((r) => r.count).sort((a, b) => a - b)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1))
      })

      it('rejects bad input with TypeError or RangeError naming the argument', async () => {
        await expect(stores.rateLimitStore.increment(42, 60)).rejects.toThrow(TypeError)
        await expect(stores.rateLimitStore.increment(42, 60)).rejects.toThrow(/key/)
        for (const bad of [Number.NaN, -1, Number.POSITIVE_INFINITY]) {
          await expect(stores.rateLimitStore.increment('rl:bad', bad)).rejects.toThrow(RangeError)
          await expect(stores.rateLimitStore.increment('rl:bad', bad)).rejects.toThrow(/windowSeconds/)
        }
        await expect(stores.rateLimitStore.increment('rl:bad', '60')).rejects.toThrow(TypeError)
      })
    })

    describe('circuit breaker', () => {
      it('reads an unknown key as a fresh closed circuit', async () => {
        const before = Date.now()
        const snapshot = await stores.circuitBreakerStore.getState('cb:unknown')
        expect(snapshot).toMatchObject({ state: 'closed', failureCount: 0, successCount: 0, lastFailureTime: 0 })
        expect(snapshot.lastStateChange).toBeGreaterThanOrEqual(before - 1000)
      })

      it("follows Stoma's transitions and counter resets", async () => {
        const store = stores.circuitBreakerStore
        const before = Date.now()
        await store.recordFailure('cb:t')
        const failed = await store.recordFailure('cb:t')
        expect(failed).toMatchObject({ state: 'closed', failureCount: 2, successCount: 0 })
        expect(failed.lastFailureTime).toBeGreaterThanOrEqual(before - 1000)
        expect((await store.recordSuccess('cb:t')).successCount).toBe(1)

        const opened = await store.transition('cb:t', 'open')
        expect(opened).toMatchObject({ state: 'open', failureCount: 2, successCount: 1 })
        expect(opened.lastStateChange).toBeGreaterThanOrEqual(before - 1000)
        expect(await store.getState('cb:t')).toEqual(opened)

        const halfOpen = await store.transition('cb:t', 'half-open')
        expect(halfOpen).toMatchObject({ state: 'half-open', failureCount: 2, successCount: 0 })
        await store.recordSuccess('cb:t')
        expect(await store.transition('cb:t', 'closed')).toMatchObject({
          state: 'closed',
          failureCount: 0,
          successCount: 0,
        })

        await store.recordFailure('cb:t')
        await store.reset('cb:t')
        expect(await store.getState('cb:t')).toMatchObject({ state: 'closed', failureCount: 0, lastFailureTime: 0 })
      })

      it('loses no failure under 200 concurrent recordFailure calls', async () => {
        await Promise.all(Array.from({ length: 200 }, () => stores.circuitBreakerStore.recordFailure('cb:concurrent')))
        expect((await stores.circuitBreakerStore.getState('cb:concurrent')).failureCount).toBe(200)
      })

      it('rejects an unknown state and a non-string key', async () => {
        await expect(stores.circuitBreakerStore.transition('cb:bad', 'ajar')).rejects.toThrow(RangeError)
        await expect(stores.circuitBreakerStore.transition('cb:bad', 1)).rejects.toThrow(TypeError)
        await expect(stores.circuitBreakerStore.getState(undefined)).rejects.toThrow(TypeError)
        await expect(stores.circuitBreakerStore.recordFailure({})).rejects.toThrow(/key/)
      })
    })

    describe('cache', () => {
      it('misses on an unknown key', async () => {
        expect(await stores.cacheStore.get('c:unknown')).toBeNull()
      })

      it('returns a new Response with status, headers in order and the body byte for byte', async () => {
        const body = randomBytes(64 * 1024)
        const headers = [
          ['content-type', 'application/octet-stream'],
          ['set-cookie', 'a=1'],
          ['set-cookie', 'b=2'],
          ['x-unicode', 'caf\u00e9'],
        ]
        await stores.cacheStore.put('c:binary', new Response(body, { status: 203, headers }), 60)
        for (let i = 0; i < 2; i++) {
          const hit = await stores.cacheStore.get('c:binary')
          expect(hit).toBeInstanceOf(Response)
          expect(hit.status).toBe(203)
          expect([...hit.headers]).toEqual([...new Headers(headers)])
          expect(Buffer.from(await hit.arrayBuffer()).equals(body)).toBe(true)
        }
      })

      it('answers 204 and 304 without a body', async () => {
        for (const status of [204, 304]) {
          await stores.cacheStore.put(`c:${status}`, new Response(null, { status, headers: { etag: '"x"' } }), 60)
          const hit = await stores.cacheStore.get(`c:${status}`)
          expect(hit.status).toBe(status)
          expect(hit.body).toBeNull()
          expect(hit.headers.get('etag')).toBe('"x"')
        }
      })

      it('replaces an entry and forgets it after its TTL', async () => {
        await stores.cacheStore.put('c:ttl', new Response('old'), 60)
        await stores.cacheStore.put('c:ttl', new Response('new'), 1)
        expect(await (await stores.cacheStore.get('c:ttl')).text()).toBe('new')
        await sleep(1100)
        expect(await stores.cacheStore.get('c:ttl')).toBeNull()
      })

      it('deletes, answering whether something was removed', async () => {
        await stores.cacheStore.put('c:del', new Response('x'), 60)
        expect(await stores.cacheStore.delete('c:del')).toBe(true)
        expect(await stores.cacheStore.delete('c:del')).toBe(false)
        expect(await stores.cacheStore.get('c:del')).toBeNull()
      })

      it('rejects a put of something that is not a Response, and bad keys and TTLs', async () => {
        await expect(stores.cacheStore.put('c:bad', 'body', 60)).rejects.toThrow(TypeError)
        await expect(stores.cacheStore.put('c:bad', { status: 200 }, 60)).rejects.toThrow(/response/)
        await expect(stores.cacheStore.put('c:bad', new Response('x'), Number.NaN)).rejects.toThrow(RangeError)
        await expect(stores.cacheStore.put('c:bad', new Response('x'), -5)).rejects.toThrow(/ttlSeconds/)
        await expect(stores.cacheStore.get(7)).rejects.toThrow(TypeError)
        await expect(stores.cacheStore.delete(null)).rejects.toThrow(TypeError)
      })
    })
  })
}
