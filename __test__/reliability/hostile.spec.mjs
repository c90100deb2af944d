// Hostile input on every backend: huge keys, control characters and
// non-ASCII in keys, many or huge headers, extreme TTLs and windows. Each
// case has the behaviour README "Limits and hostile input" documents, or a
// clear error naming the store; none crashes. Memory runs every case; Redis
// and PostgreSQL run on the shared servers under a fresh prefix.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { memoryAdapter, postgresAdapter, redisAdapter } from '../../index.mjs'
import { DATABASE_URL, REDIS_URL, sleep } from '../support/processes.mjs'
import { deleteRedisKeys, dropTables } from '../../scripts/cleanup.mjs'

const RUN = `hostile${process.pid}_${Date.now().toString(36)}`
const MIB = 1 << 20
const TEN_YEARS = 10 * 365.25 * 86400
const MAX_DURATION_MS = 2 ** 52
const MAX_DATE_MS = 8.64e15

/** A 1 MiB key that compresses badly (PostgreSQL would TOAST-compress a repeated one). */
const mibKey = Array.from({ length: MIB }, (_, i) => String.fromCharCode(33 + ((i * 7919 + (i >> 7)) % 90))).join('')
const oddKeys = [
  'a\0b',
  '\0',
  'line\nbreak\r\n',
  'tab\tkey',
  'café',
  '日本語',
  'emoji 😀',
  'lone \ud800 surrogate',
  '',
  ' ',
]

const backends = {
  memory: { create: () => memoryAdapter(), close: () => {} },
  redis: {
    create: () => redisAdapter({ url: REDIS_URL, prefix: `${RUN}:` }),
    close: (adapter) => adapter.close(),
  },
  postgres: {
    create: async () => {
      const adapter = postgresAdapter({ url: DATABASE_URL, tablePrefix: `${RUN}_` })
      await adapter.ensureSchema()
      return adapter
    },
    close: (adapter) => adapter.close(),
  },
}

afterAll(async () => {
  await deleteRedisKeys(`${RUN}:`)
  await dropTables(`${RUN}_`)
})

for (const [name, backend] of Object.entries(backends)) {
  describe(`reliability: hostile input on ${name}`, () => {
    let adapter
    beforeAll(async () => {
      adapter = await backend.create()
    })
    afterAll(() => backend.close(adapter))

    it('a 1 MiB key: counted, circuited and cached (memory, Redis) or refused naming the store (PostgreSQL)', async () => {
      const calls = {
        PostgresRateLimitStore: () => adapter.rateLimitStore.increment(mibKey, 60),
        PostgresCircuitBreakerStore: () => adapter.circuitBreakerStore.recordFailure(mibKey),
        PostgresCacheStore: () => adapter.cacheStore.put(mibKey, new Response('big key'), 60),
      }
      if (name === 'postgres') {
        // A btree index entry holds at most ~2.7 kB: refused up front.
        for (const [store, call] of Object.entries(calls)) {
          await expect(call()).rejects.toThrow(RangeError)
          await expect(call()).rejects.toThrow(new RegExp(`^${store}: key must be at most 2600 bytes`))
        }
        expect((await adapter.rateLimitStore.increment('after-big-key', 60)).count).toBe(1)
        return
      }
      expect((await calls.PostgresRateLimitStore()).count).toBe(1)
      expect((await adapter.rateLimitStore.increment(mibKey, 60)).count).toBe(2)
      expect((await adapter.rateLimitStore.increment(`${mibKey}x`, 60)).count).toBe(1)
      expect((await calls.PostgresCircuitBreakerStore()).failureCount).toBe(1)
      await calls.PostgresCacheStore()
      expect(await (await adapter.cacheStore.get(mibKey)).text()).toBe('big key')
      expect(await adapter.cacheStore.delete(mibKey)).toBe(true)
    })

    it('keys with NUL, CR/LF, tabs, non-ASCII, lone surrogates and empty keys are distinct keys (PostgreSQL refuses NUL)', async () => {
      for (const key of oddKeys) {
        const call = adapter.rateLimitStore.increment(key, 60)
        if (name === 'postgres' && key.includes('\0')) {
          await expect(call).rejects.toThrow(RangeError)
          await expect(adapter.rateLimitStore.increment(key, 60)).rejects.toThrow(
            /^PostgresRateLimitStore: key must not contain NUL/,
          )
          await expect(adapter.cacheStore.get(key)).rejects.toThrow(/^PostgresCacheStore: key must not contain NUL/)
          continue
        }
        expect((await call).count, JSON.stringify(key)).toBe(1)
        expect((await adapter.rateLimitStore.increment(key, 60)).count).toBe(2)
        expect((await adapter.circuitBreakerStore.recordFailure(key)).failureCount).toBe(1)
        await adapter.cacheStore.put(key, new Response(key), 60)
        // A lone surrogate becomes U+FFFD on the way in (as everywhere in N-API).
        expect(await (await adapter.cacheStore.get(key)).text()).toBe(key.replace(/[\ud800-\udfff]/gu, '\ufffd'))
      }
      // "a\0b" is neither "a" nor "a\0c".
      if (name !== 'postgres') {
        expect((await adapter.rateLimitStore.increment('a', 60)).count).toBe(1)
        expect((await adapter.rateLimitStore.increment('a\0c', 60)).count).toBe(1)
      }
    })

    it('1,000 headers and a 64 KiB header value round-trip in order', async () => {
      const many = new Headers()
      for (let i = 0; i < 1000; i++) many.append(`x-h${i}`, `v${i}`)
      many.append('set-cookie', 'a=1')
      many.append('set-cookie', 'b=2')
      const sent = new Response('m', { headers: many })
      const expected = [...sent.headers]
      expect(expected).toHaveLength(1003) // + content-type
      await adapter.cacheStore.put('many', sent, 60)
      const got = await adapter.cacheStore.get('many')
      expect([...got.headers]).toEqual(expected)
      expect(got.headers.getSetCookie()).toEqual(['a=1', 'b=2'])

      const huge = 'v'.repeat(64 * 1024)
      await adapter.cacheStore.put(
        'huge',
        new Response('h', { headers: { 'x-huge': huge, 'x-latin1': 'caf\u00e9' } }),
        60,
      )
      const back = await adapter.cacheStore.get('huge')
      expect(back.headers.get('x-huge')).toBe(huge)
      expect(back.headers.get('x-latin1')).toBe('caf\u00e9')
    })

    it('ttl 0 stores nothing and removes the older entry; ttl over ten years and Number.MAX_VALUE are kept', async () => {
      await adapter.cacheStore.put('ttl', new Response('old'), 60)
      await adapter.cacheStore.put('ttl', new Response('new'), 0)
      expect(await adapter.cacheStore.get('ttl')).toBeNull()
      await adapter.cacheStore.put('decade', new Response('d'), TEN_YEARS + 86400)
      expect(await (await adapter.cacheStore.get('decade')).text()).toBe('d')
      await adapter.cacheStore.put('forever', new Response('f'), Number.MAX_VALUE)
      expect(await (await adapter.cacheStore.get('forever')).text()).toBe('f')
      await adapter.cacheStore.put('tiny', new Response('t'), 1e-9) // rounds up to 1 ms
      await sleep(5)
      expect(await adapter.cacheStore.get('tiny')).toBeNull()
    })

    it('windows: over ten years, Number.MAX_VALUE (capped at 2^52 ms), fractional and zero', async () => {
      const started = Date.now()
      const decade = await adapter.rateLimitStore.increment('w-decade', TEN_YEARS + 86400)
      expect(decade.resetAt - started).toBeGreaterThanOrEqual((TEN_YEARS + 86400) * 1000 - 5)
      expect((await adapter.rateLimitStore.increment('w-decade', TEN_YEARS + 86400)).count).toBe(2)

      const huge = await adapter.rateLimitStore.increment('w-max', Number.MAX_VALUE)
      expect(huge.count).toBe(1)
      expect(Number.isSafeInteger(huge.resetAt)).toBe(true)
      expect(huge.resetAt).toBeLessThan(MAX_DATE_MS)
      expect(Math.abs(huge.resetAt - (started + MAX_DURATION_MS))).toBeLessThan(5000)
      expect(new Date(huge.resetAt).getTime()).toBe(huge.resetAt)

      // 0.0015 s → a 2 ms window (rounded up to whole ms), then a new window.
      const before = Date.now()
      const frac = await adapter.rateLimitStore.increment('w-frac', 0.0015)
      expect(frac.count).toBe(1)
      expect(frac.resetAt - before).toBeGreaterThanOrEqual(0)
      expect(frac.resetAt - before).toBeLessThanOrEqual(2 + 50)
      await sleep(20)
      expect((await adapter.rateLimitStore.increment('w-frac', 0.0015)).count).toBe(1)

      // 1e-9 s rounds up to 1 ms; 0 makes every hit a window of its own.
      expect((await adapter.rateLimitStore.increment('w-tiny', 1e-9)).count).toBe(1)
      for (let i = 0; i < 3; i++) expect((await adapter.rateLimitStore.increment('w-zero', 0)).count).toBe(1)
    })

    it('NaN, negative and infinite durations and non-Response statuses are refused with RangeError', async () => {
      for (const bad of [NaN, -1, Infinity, -Infinity]) {
        await expect(adapter.rateLimitStore.increment('k', bad)).rejects.toThrow(RangeError)
        await expect(adapter.cacheStore.put('k', new Response('x'), bad)).rejects.toThrow(RangeError)
      }
      const fake = (status) => ({
        status,
        headers: new Headers(),
        body: null,
        arrayBuffer: async () => new ArrayBuffer(0),
      })
      for (const status of [0, 99, 101, 600, 70_000, 200.5, NaN]) {
        await expect(adapter.cacheStore.put('fake', fake(status), 60)).rejects.toThrow(RangeError)
      }
      await adapter.cacheStore.put('fake', fake(599), 60)
      expect((await adapter.cacheStore.get('fake')).status).toBe(599)
    })
  })
}
