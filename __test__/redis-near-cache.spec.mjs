// Asking Redis only what it must, on a private redis-server whose command
// count the tests read: the near cache (`nearCache`: RESP3 client-side
// caching, copies dropped by the server's invalidations), single flight
// (concurrent reads of one key share one round trip), and how fast another
// client's change is seen; a server killed and restarted empty, the race of
// an invalidation with a read, and the near cache's memory bound.
import Redis from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { redisAdapter } from '../index.mjs'
import { kill, sleep, sparePort, startRedisAt } from './support/redis-servers.mjs'

let prefixes = 0
const newPrefix = () => `near:${++prefixes}:`

describe('redis: asking the server only what it must', () => {
  let port
  let server
  let redis
  beforeAll(async () => {
    port = await sparePort()
    server = await startRedisAt(port)
    redis = new Redis(port, '127.0.0.1')
    // It reconnects by itself after the server is killed and restarted.
    redis.on('error', () => {})
  })
  afterAll(async () => {
    redis.disconnect()
    await kill(server)
  })

  /** Commands the server has processed, not counting the ones asking this. */
  let asked = 0
  async function commands() {
    const stats = await redis.info('stats')
    asked++
    return Number(/total_commands_processed:(\d+)/.exec(stats)[1]) - asked
  }

  /** Polls `read` until `done(value)`; resolves with the ms it took (or Infinity after 2 s). */
  async function seenWithin(read, done) {
    const started = performance.now()
    while (performance.now() - started < 2000) {
      if (done(await read())) return performance.now() - started
      await sleep(2)
    }
    return Number.POSITIVE_INFINITY
  }

  const body = new Uint8Array(64 * 1024).map((_, i) => (i * 31) % 251)

  it('500 gets of a cached 64 KiB response and 500 getState of a closed circuit reach Redis a few times', async () => {
    const adapter = redisAdapter({ url: `redis://127.0.0.1:${port}`, prefix: newPrefix(), nearCache: true })
    try {
      await adapter.cacheStore.put('page', new Response(body, { headers: { 'x-v': '1' } }), 60)
      const before = await commands()
      for (let i = 0; i < 500; i++) {
        const hit = await adapter.cacheStore.get('page')
        expect(hit.headers.get('x-v')).toBe('1')
        expect(Buffer.from(await hit.arrayBuffer()).equals(Buffer.from(body))).toBe(true)
      }
      const gets = (await commands()) - before
      await adapter.circuitBreakerStore.recordFailure('upstream')
      const again = await commands()
      for (let i = 0; i < 500; i++) {
        expect(await adapter.circuitBreakerStore.getState('upstream')).toMatchObject({
          state: 'closed',
          failureCount: 1,
        })
      }
      const getStates = (await commands()) - again
      console.log(`500 cache gets: ${gets} commands; 500 getState: ${getStates} commands`)
      expect(gets).toBeLessThan(25)
      expect(getStates).toBeLessThan(25)
      expect(adapter.nearCacheSize().entries).toBe(2)
    } finally {
      await adapter.close()
    }
  })

  it('another client’s overwrite, DEL, FLUSHALL and a circuit it opens are seen within 100 ms', async () => {
    const prefix = newPrefix()
    const adapter = redisAdapter({ url: `redis://127.0.0.1:${port}`, prefix, nearCache: true })
    const other = redisAdapter({ url: `redis://127.0.0.1:${port}`, prefix })
    try {
      const status = async () => (await adapter.cacheStore.get('page'))?.status ?? null
      await other.cacheStore.put('page', new Response('one', { status: 200 }), 60)
      expect(await status()).toBe(200)
      await other.cacheStore.put('page', new Response('two', { status: 201 }), 60)
      const overwrite = await seenWithin(status, (s) => s === 201)
      await other.cacheStore.delete('page')
      const deleted = await seenWithin(status, (s) => s === null)
      await other.cacheStore.put('page', new Response('three', { status: 202 }), 60)
      expect(await seenWithin(status, (s) => s === 202)).toBeLessThan(100)
      await redis.flushall()
      const flushed = await seenWithin(status, (s) => s === null)

      const state = async () => (await adapter.circuitBreakerStore.getState('upstream')).state
      expect(await state()).toBe('closed')
      await other.circuitBreakerStore.transition('upstream', 'open')
      const opened = await seenWithin(state, (s) => s === 'open')
      console.log(`seen after: overwrite ${overwrite} ms, DEL ${deleted} ms, FLUSHALL ${flushed} ms, open ${opened} ms`)
      for (const ms of [overwrite, deleted, flushed, opened]) expect(ms).toBeLessThan(100)
    } finally {
      await adapter.close()
      await other.close()
    }
  })

  it('never serves a copy after the server is killed, nor once it is back empty', async () => {
    const adapter = redisAdapter({
      url: `redis://127.0.0.1:${port}`,
      prefix: newPrefix(),
      nearCache: true,
      commandTimeoutMs: 300,
      connectTimeoutMs: 300,
    })
    try {
      await adapter.cacheStore.put('page', new Response('before the kill'), 60)
      await adapter.circuitBreakerStore.transition('upstream', 'open')
      expect(await (await adapter.cacheStore.get('page')).text()).toBe('before the kill')
      expect((await adapter.circuitBreakerStore.getState('upstream')).state).toBe('open')
      await kill(server)
      // A copy read before the connection's end is noticed is as stale as any
      // client cache's; the claim is about after: the call that finds the
      // connection gone settles after the near cache was emptied.
      await expect(adapter.rateLimitStore.increment('notices', 60)).rejects.toThrow()
      const served = []
      const until = Date.now() + 500
      while (Date.now() < until) {
        const [page, circuit] = await Promise.allSettled([
          adapter.cacheStore.get('page'),
          adapter.circuitBreakerStore.getState('upstream'),
        ])
        if (page.status === 'fulfilled' && page.value !== null) served.push('page')
        if (circuit.status === 'fulfilled' && circuit.value.state === 'open') served.push('circuit')
        await sleep(10)
      }
      server = await startRedisAt(port)
      redis.disconnect()
      redis = new Redis(port, '127.0.0.1')
      redis.on('error', () => {})
      asked = 0
      const back = await seenWithin(
        () => adapter.cacheStore.get('page').catch(() => 'failed'),
        (value) => value !== 'failed',
      )
      expect(back).toBeLessThan(2000)
      expect(await adapter.cacheStore.get('page')).toBeNull()
      expect((await adapter.circuitBreakerStore.getState('upstream')).state).toBe('closed')
      expect(served).toEqual([])
    } finally {
      await adapter.close()
    }
  })

  it('an invalidation racing a read never leaves a stale copy', async () => {
    const prefix = newPrefix()
    const adapter = redisAdapter({ url: `redis://127.0.0.1:${port}`, prefix, nearCache: true })
    const writer = new Redis(port, '127.0.0.1')
    const envelope = (version) => JSON.stringify({ status: 200, headers: [['x-v', String(version)]], body: '' })
    const version = async () => Number((await adapter.cacheStore.get('raced'))?.headers.get('x-v') ?? -1)
    try {
      for (let round = 0; round < 200; round++) {
        // Reads in flight while the value changes under them, again and again.
        const reads = Array.from({ length: 4 }, (_, i) => sleep(i).then(version))
        await writer.set(`${prefix}cache:raced`, envelope(round), 'PX', 60_000)
        await Promise.all(reads)
        const settled = await seenWithin(version, (v) => v === round)
        expect(settled, `round ${round}`).toBeLessThan(100)
      }
      // Once settled, the copy is the last value and stays it.
      await sleep(50)
      for (let i = 0; i < 20; i++) expect(await version()).toBe(199)
    } finally {
      writer.disconnect()
      await adapter.close()
    }
  })

  it('stays within maxBytes and maxEntries under 1,000,000 distinct keys', async () => {
    const adapter = redisAdapter({
      url: `redis://127.0.0.1:${port}`,
      prefix: newPrefix(),
      nearCache: { maxEntries: 20_000, maxBytes: 2 * 1024 * 1024 },
    })
    try {
      let next = 0
      let largest = 0
      await Promise.all(
        Array.from({ length: 128 }, async () => {
          while (next < 1_000_000) {
            const key = `k${next++}`
            await adapter.cacheStore.get(key)
            if (next % 50_000 === 0) largest = Math.max(largest, adapter.nearCacheSize().bytes)
          }
        }),
      )
      const { entries, bytes } = adapter.nearCacheSize()
      console.log(`1,000,000 keys read: ${entries} copies, ${bytes} bytes held (largest seen ${largest})`)
      expect(bytes).toBeLessThanOrEqual(2 * 1024 * 1024)
      expect(largest).toBeLessThanOrEqual(2 * 1024 * 1024)
      expect(entries).toBeLessThanOrEqual(20_000)
      expect(entries).toBeGreaterThan(1000)
    } finally {
      await adapter.close()
    }
  }, 120_000)

  it('concurrent reads of one key share one round trip (single flight), near cache or not', async () => {
    const adapter = redisAdapter({ url: `redis://127.0.0.1:${port}`, prefix: newPrefix() })
    try {
      await adapter.cacheStore.put('shared', new Response(body), 60)
      await adapter.circuitBreakerStore.recordFailure('shared')
      await redis.config('RESETSTAT')
      const [pages, circuits] = await Promise.all([
        Promise.all(Array.from({ length: 100 }, () => adapter.cacheStore.get('shared'))),
        Promise.all(Array.from({ length: 100 }, () => adapter.circuitBreakerStore.getState('shared'))),
      ])
      const stats = await redis.info('commandstats')
      const calls = (command) => Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(stats)?.[1] ?? 0)
      // One read each — or a few, when a read's answer comes back within the
      // burst (16 calls are written at a time) and a later call starts anew.
      expect(calls('get')).toBeGreaterThanOrEqual(1)
      expect(calls('get') + calls('evalsha')).toBeLessThanOrEqual(8)
      // Each caller has its own Response and snapshot.
      expect(new Set(pages).size).toBe(100)
      for (const page of pages) expect(Buffer.from(await page.arrayBuffer()).equals(Buffer.from(body))).toBe(true)
      expect(new Set(circuits).size).toBe(100)
      expect(circuits.every((c) => c.failureCount === 1)).toBe(true)
    } finally {
      await adapter.close()
    }
  })

  it("a read asked for after this connection's write sees the write, not a read sent before it", async () => {
    for (const nearCache of [false, true]) {
      const adapter = redisAdapter({ url: `redis://127.0.0.1:${port}`, prefix: newPrefix(), nearCache })
      try {
        const { circuitBreakerStore: circuits, cacheStore: cache } = adapter
        const [before, , after] = await Promise.all([
          circuits.getState('c'),
          circuits.recordFailure('c'),
          circuits.getState('c'),
        ])
        expect([before.failureCount, after.failureCount], `nearCache ${nearCache}`).toEqual([0, 1])
        await cache.put('p', new Response('one'), 60)
        const [old, , gone] = await Promise.all([cache.get('p'), cache.delete('p'), cache.get('p')])
        expect(await old.text(), `nearCache ${nearCache}`).toBe('one')
        expect(gone, `nearCache ${nearCache}`).toBeNull()
      } finally {
        await adapter.close()
      }
    }
  })

  it('refuses bad nearCache options, naming them', () => {
    const url = `redis://127.0.0.1:${port}`
    expect(() => redisAdapter({ url, nearCache: { maxEntries: 0 } })).toThrow(RangeError)
    expect(() => redisAdapter({ url, nearCache: { maxEntries: 0 } })).toThrow(/nearCache.maxEntries/)
    expect(() => redisAdapter({ url, nearCache: { maxbytes: 1 } })).toThrow(
      /unknown option nearCache.maxbytes; the options are maxEntries, maxBytes/,
    )
    expect(() => redisAdapter({ url, nearCache: 'yes' })).toThrow(TypeError)
  })
})
