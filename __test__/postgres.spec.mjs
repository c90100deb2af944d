// The PostgreSQL stores against a real server (DATABASE_URL, else
// postgres://postgres@127.0.0.1:5432/postgres): the shared store contract,
// table compatibility with Stoma's own postgresAdapter in both directions,
// circuits through Stoma's real gateway, and behaviour when the database is
// missing tables, unreachable, stalled or back.
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { fileURLToPath } from 'node:url'
import { circuitBreaker, createGateway } from '@homegrower-club/stoma'
import {
  POSTGRES_SCHEMA_SQL as STOMA_SCHEMA_SQL,
  postgresAdapter as stomaPostgresAdapter,
} from '@homegrower-club/stoma/adapters/postgres'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  POSTGRES_SCHEMA_SQL,
  PostgresCacheStore,
  PostgresCircuitBreakerStore,
  PostgresRateLimitStore,
  postgresAdapter,
  postgresSchemaSql,
} from '../index.mjs'
import { readEachOther } from './support/postgres-compat.mjs'
import { serverTls as serverTlsOf } from './support/postgres-tls.mjs'
import { storeContract } from './support/store-contract.mjs'
import { dropTables } from '../scripts/cleanup.mjs'

const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres'
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// One prefix per run (and per purpose), so parallel runs never share tables.
const RUN = `t${process.pid}_${Date.now().toString(36)}`
const prefixes = []
function freshPrefix(purpose) {
  const prefix = `${RUN}_${purpose}_`
  prefixes.push(prefix)
  return prefix
}

let admin
beforeAll(() => {
  admin = new pg.Pool({ connectionString: DATABASE_URL, max: 10 })
})
afterAll(async () => {
  for (const prefix of prefixes) {
    await dropTables(prefix, admin)
  }
  await admin.end()
})

/** An adapter on the tables of `tablePrefix`, created with ensureSchema(). */
async function adapterOn(tablePrefix, options) {
  const adapter = postgresAdapter({ tablePrefix, ...options })
  await adapter.ensureSchema()
  return adapter
}

const freshAdapter = (purpose, options) => adapterOn(freshPrefix(purpose), options)

storeContract('postgres', {
  createStores: () => freshAdapter('contract'),
  close: (adapter) => adapter.close(),
})

describe('postgres schema', () => {
  it("POSTGRES_SCHEMA_SQL is Stoma's text, and postgresSchemaSql() renames every table and index", () => {
    expect(POSTGRES_SCHEMA_SQL).toBe(STOMA_SCHEMA_SQL)
    expect(postgresSchemaSql()).toBe(STOMA_SCHEMA_SQL)
    const other = postgresSchemaSql('tenant_7_')
    expect(other).toBe(STOMA_SCHEMA_SQL.replaceAll('stoma_', 'tenant_7_'))
    expect(other).not.toContain('stoma_')
  })

  it('refuses a tablePrefix that is not a plain identifier, at construction, naming tablePrefix', () => {
    const bad = ['', '1x_', 'a-b', 'x; DROP TABLE users; --', 'a"b', 'x'.repeat(42), 'é_']
    for (const tablePrefix of bad) {
      expect(() => postgresAdapter({ tablePrefix })).toThrow(RangeError)
      expect(() => postgresAdapter({ tablePrefix })).toThrow(/tablePrefix/)
      expect(() => new PostgresRateLimitStore({ tablePrefix })).toThrow(/tablePrefix/)
      expect(() => new PostgresCircuitBreakerStore({ tablePrefix })).toThrow(/tablePrefix/)
      expect(() => new PostgresCacheStore({ tablePrefix })).toThrow(/tablePrefix/)
      expect(() => postgresSchemaSql(tablePrefix)).toThrow(/tablePrefix/)
    }
    expect(() => postgresAdapter({ tablePrefix: 7 })).toThrow(TypeError)
    expect(() => postgresAdapter({ tablePrefix: 'x'.repeat(41) }).close()).not.toThrow()
  })

  it('checks its other options at construction', () => {
    expect(() => postgresAdapter({ poolSize: 0 })).toThrow(RangeError)
    expect(() => postgresAdapter({ poolSize: 0 })).toThrow(/poolSize/)
    expect(() => postgresAdapter({ poolSize: 2 ** 32 })).toThrow(/^postgresAdapter: poolSize must be at most 1000, got/)
    expect(() => postgresAdapter({ statementTimeoutMs: 1e12 })).toThrow(RangeError)
    expect(() => postgresAdapter({ cleanupIntervalMs: 2 ** 31 })).toThrow(/cleanupIntervalMs must be at most/)
    expect(() => postgresAdapter({ statementTimeoutMs: 'soon' })).toThrow(/statementTimeoutMs/)
    expect(() => postgresAdapter({ cleanupIntervalMs: -1 })).toThrow(/cleanupIntervalMs/)
    expect(() => postgresAdapter({ url: 5432 })).toThrow(TypeError)
    expect(() => postgresAdapter({ url: 'postgres://h:notaport/db' })).toThrow(TypeError)
    expect(() => postgresAdapter({ url: 'postgres://h:notaport/db' })).toThrow(/url is not a valid .*port/)
    expect(() => postgresAdapter({ url: 'postgres://h/db?sslmode=strict' })).toThrow(
      /sslmode may be disable, prefer, require, verify-ca or verify-full/,
    )
    expect(() => postgresAdapter({ url: 'dbname=x' })).toThrow(/url names no host/)
    expect(() => postgresAdapter({ tls: 'on' })).toThrow(
      /postgresAdapter: tls must be a boolean or \{ ca, cert, key, servername \}/,
    )
    expect(() => postgresAdapter({ tls: { ca: 'not a certificate' } })).toThrow(TypeError)
    expect(() => postgresAdapter({ tls: { ca: 'not a certificate' } })).toThrow(/tls.ca holds no PEM certificate/)
    expect(() => postgresAdapter({ waitUntil: 'later' })).toThrow(/waitUntil/)
    expect(() => postgresAdapter({ synchronousCommit: 'yes' })).toThrow(/synchronousCommit/)
  })

  it('says to call ensureSchema() or run POSTGRES_SCHEMA_SQL when the tables are missing', async () => {
    const adapter = postgresAdapter({ tablePrefix: freshPrefix('missing') })
    const advice = /does not exist.*ensureSchema\(\).*POSTGRES_SCHEMA_SQL/
    await expect(adapter.rateLimitStore.increment('k', 60)).rejects.toThrow(advice)
    await expect(adapter.circuitBreakerStore.getState('k')).rejects.toThrow(
      /PostgresCircuitBreakerStore: table \w+circuit_breakers does not exist/,
    )
    await expect(adapter.cacheStore.get('k')).rejects.toThrow(/PostgresCacheStore: table \w+cache does not exist/)
    await adapter.ensureSchema()
    await adapter.ensureSchema() // idempotent
    expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
    expect(await adapter.cacheStore.get('k')).toBeNull()
    await adapter.close()
  })
})

describe("postgres: same tables as Stoma's postgresAdapter, both ways", () => {
  let ours
  let stoma
  let prefix
  beforeAll(async () => {
    prefix = freshPrefix('compat')
    ours = await adapterOn(prefix)
    stoma = stomaPostgresAdapter({ client: admin, tablePrefix: prefix })
  })
  afterAll(() => ours.close())

  readEachOther(() => ({ ours, stoma, direct: admin, prefix }))

  it("circuit breaker: Stoma's own transition() fails on PostgreSQL, ours does not", async () => {
    await expect(stoma.circuitBreakerStore.transition('cb:defect', 'open')).rejects.toThrow(/ambiguous/)
    await stoma.circuitBreakerStore.recordFailure('cb:defect')
    expect(await ours.circuitBreakerStore.transition('cb:defect', 'open')).toMatchObject({
      state: 'open',
      failureCount: 1,
    })
  })

  it('cache: expired and garbage rows read as a miss (Stoma throws on garbage)', async () => {
    const insert = (key, body, expiresAt, headers = '[]') =>
      admin.query(`INSERT INTO ${prefix}cache (key, status, headers, body, expires_at) VALUES ($1, 200, $2, $3, $4)`, [
        key,
        headers,
        body,
        expiresAt,
      ])
    await insert('c:expired', 'aGk=', Date.now() - 1)
    await insert('c:bad-base64', '%%%not base64%%%', Date.now() + 60_000)
    await insert('c:bad-headers', 'aGk=', Date.now() + 60_000, '{"x": 1}')
    await insert('c:bad-shape', 'aGk=', Date.now() + 60_000, '[["only-a-name"]]')
    for (const key of ['c:expired', 'c:bad-base64', 'c:bad-headers', 'c:bad-shape']) {
      expect(await ours.cacheStore.get(key)).toBeNull()
    }
    await expect(stoma.cacheStore.get('c:bad-base64')).rejects.toThrow()
  })
})

describe('postgres circuits through the real Stoma gateway', () => {
  /** A gateway whose /svc upstream answers 500 until `healthy`, counting calls. */
  function gatewayWith(store) {
    const upstream = { healthy: false, calls: 0 }
    const gateway = createGateway({
      routes: [
        {
          path: '/svc',
          pipeline: {
            policies: [circuitBreaker({ store, failureThreshold: 3, resetTimeoutMs: 400 })],
            upstream: {
              type: 'handler',
              handler: () => {
                upstream.calls++
                return upstream.healthy ? new Response('ok') : new Response('boom', { status: 500 })
              },
            },
          },
        },
      ],
    })
    return { upstream, request: () => gateway.app.request('/svc') }
  }

  it('opens after the threshold, half-opens after resetTimeoutMs, and closes on a good probe', async () => {
    const adapter = await freshAdapter('gateway')
    const { upstream, request } = gatewayWith(adapter.circuitBreakerStore)
    for (let i = 0; i < 3; i++) expect((await request()).status).toBe(500)
    expect(await adapter.circuitBreakerStore.getState('/svc')).toMatchObject({ state: 'open', failureCount: 3 })

    const refused = await request()
    expect(refused.status).toBe(503)
    expect(refused.headers.get('retry-after')).toBe('1')
    expect(upstream.calls).toBe(3)

    await sleep(450)
    upstream.healthy = true
    expect((await request()).status).toBe(200) // the half-open probe
    expect(upstream.calls).toBe(4)
    expect(await adapter.circuitBreakerStore.getState('/svc')).toMatchObject({
      state: 'closed',
      failureCount: 0,
      successCount: 0,
    })
    expect((await request()).status).toBe(200)
    await adapter.close()
  })

  it('re-opens when the half-open probe fails', async () => {
    const adapter = await freshAdapter('gateway2')
    const { upstream, request } = gatewayWith(adapter.circuitBreakerStore)
    for (let i = 0; i < 3; i++) await request()
    await sleep(450)
    expect((await request()).status).toBe(500) // probe fails
    expect((await adapter.circuitBreakerStore.getState('/svc')).state).toBe('open')
    expect((await request()).status).toBe(503)
    expect(upstream.calls).toBe(4)
    await adapter.close()
  })

  it("for contrast: with Stoma's PostgreSQL store the circuit never opens", async () => {
    const prefix = freshPrefix('gateway_stoma')
    await (await adapterOn(prefix)).close()
    const stoma = stomaPostgresAdapter({ client: admin, tablePrefix: prefix })
    const { upstream, request } = gatewayWith(stoma.circuitBreakerStore)
    for (let i = 0; i < 6; i++) expect((await request()).status).toBe(500)
    expect(upstream.calls).toBe(6)
  })
})

describe('postgres atomicity and cleanup', () => {
  let adapter
  let prefix
  beforeAll(async () => {
    prefix = freshPrefix('atomic')
    adapter = await adapterOn(prefix)
  })
  afterAll(() => adapter.close())

  it('500 concurrent recordFailure on one key leave 500', async () => {
    await Promise.all(Array.from({ length: 500 }, () => adapter.circuitBreakerStore.recordFailure('cb:500')))
    expect((await adapter.circuitBreakerStore.getState('cb:500')).failureCount).toBe(500)
  })

  it('500 concurrent increments on one key count 1..500', async () => {
    const hits = await Promise.all(Array.from({ length: 500 }, () => adapter.rateLimitStore.increment('rl:500', 60)))
    expect(hits.map((h) => h.count).sort((a, b) => a - b)).toEqual(Array.from({ length: 500 }, (_, i) => i + 1))
  })

  it('a mixed concurrent workload over overlapping keys, from two pools and with cleanups, counts exactly and never deadlocks', async () => {
    // Two adapters on the same tables stand for two gateway processes: their
    // groups of writes take row locks on the same keys at the same time.
    const tablePrefix = freshPrefix('mixed')
    const [one, other] = [await adapterOn(tablePrefix, { poolSize: 2 }), await adapterOn(tablePrefix, { poolSize: 1 })]
    const keys = Array.from({ length: 7 }, (_, i) => `mix:${i}`)
    const expected = { hits: new Map(), failures: new Map() }
    const bump = (map, key) => map.set(key, (map.get(key) ?? 0) + 1)
    const calls = []
    for (let i = 0; i < 2400; i++) {
      const side = i % 3 === 0 ? other : one
      // Walk the keys forwards on one side and backwards on the other, so
      // groups list the same keys in opposite orders.
      const key = keys[side === other ? keys.length - 1 - (i % keys.length) : (i * 5) % keys.length]
      switch (i % 6) {
        case 0:
        case 1:
          bump(expected.hits, key)
          calls.push(side.rateLimitStore.increment(key, 60))
          break
        case 2:
          bump(expected.failures, key)
          calls.push(side.circuitBreakerStore.recordFailure(key))
          break
        case 3:
          calls.push(side.circuitBreakerStore.getState(key))
          break
        case 4:
          calls.push(side.cacheStore.put(key, new Response(`body ${i}`), 60))
          break
        case 5:
          calls.push(i % 12 === 5 ? side.cacheStore.get(key) : side.rateLimitStore.cleanup())
          break
      }
    }
    const deadlocks = async () =>
      Number(
        (await admin.query('SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()')).rows[0]
          .deadlocks,
      )
    const deadlocksBefore = await deadlocks()
    const settled = await Promise.allSettled(calls)
    await other.close()
    expect(settled.filter((s) => s.status === 'rejected').map((s) => s.reason.message)).toEqual([])
    await sleep(1100) // the server publishes its statistics at most once a second
    expect(await deadlocks()).toBe(deadlocksBefore)
    for (const key of keys) {
      const { rows } = await admin.query(`SELECT count FROM ${tablePrefix}rate_limits WHERE key = $1`, [key])
      expect(rows[0].count, key).toBe(expected.hits.get(key))
      expect((await one.circuitBreakerStore.getState(key)).failureCount, key).toBe(expected.failures.get(key))
      expect(await (await one.cacheStore.get(key)).text()).toMatch(/^body \d+$/)
    }
    await one.close()
  })

  it('a call that fails in a group of writes fails alone; its neighbours succeed with their own results', async () => {
    // One connection, so every write below queues behind the first and they
    // go together; the counter at INTEGER's maximum cannot be incremented.
    const tablePrefix = freshPrefix('group')
    const single = await adapterOn(tablePrefix, { poolSize: 1 })
    await admin.query(`INSERT INTO ${tablePrefix}rate_limits (key, count, reset_at) VALUES ('full', 2147483647, $1)`, [
      Date.now() + 60_000,
    ])
    const hit = (i) => single.rateLimitStore.increment(`group:${i % 4}`, 60)
    const good = Array.from({ length: 40 }, (_, i) => i)
    const calls = [
      ...good.slice(0, 20).map(hit),
      single.rateLimitStore.increment('full', 60),
      ...good.slice(20).map(hit),
    ]
    const settled = await Promise.allSettled(calls)
    await single.close()
    const [bad] = settled.splice(20, 1)
    expect(bad.status).toBe('rejected')
    expect(bad.reason.message).toMatch(/^PostgresRateLimitStore: PostgreSQL error: integer out of range/)
    expect(settled.filter((s) => s.status === 'rejected')).toEqual([])
    // Each of the four keys counted exactly 1..10, each caller its own hit.
    for (let k = 0; k < 4; k++) {
      const mine = settled.filter((_, i) => i % 4 === k).map((s) => s.value.count)
      expect(mine.sort((x, y) => x - y)).toEqual(Array.from({ length: 10 }, (_, n) => n + 1))
    }
  })

  it('cleanup() deletes expired rows only and answers how many', async () => {
    await adapter.rateLimitStore.increment('rl:short', 0.05)
    await adapter.rateLimitStore.increment('rl:long', 60)
    await adapter.cacheStore.put('c:short', new Response('x'), 0.05)
    await adapter.cacheStore.put('c:long', new Response('x'), 60)
    await sleep(100)
    expect(await adapter.rateLimitStore.cleanup()).toBeGreaterThanOrEqual(1)
    expect(await adapter.cacheStore.cleanup()).toBeGreaterThanOrEqual(1)
    const keys = async (table) => (await admin.query(`SELECT key FROM ${prefix}${table}`)).rows.map((r) => r.key)
    expect(await keys('rate_limits')).not.toContain('rl:short')
    expect(await keys('rate_limits')).toContain('rl:long')
    expect(await keys('cache')).toEqual(['c:long'])
  })

  it('cleans expired rows in the background every cleanupIntervalMs, until close()', async () => {
    const bgPrefix = freshPrefix('background')
    const background = await adapterOn(bgPrefix, { cleanupIntervalMs: 50 })
    const plant = (key) =>
      Promise.all([
        admin.query(`INSERT INTO ${bgPrefix}rate_limits (key, count, reset_at) VALUES ($1, 1, 1)`, [key]),
        admin.query(`INSERT INTO ${bgPrefix}cache (key, status, expires_at) VALUES ($1, 200, 1)`, [key]),
      ])
    const count = async () =>
      Number(
        (
          await admin.query(
            `SELECT (SELECT count(*) FROM ${bgPrefix}rate_limits) + (SELECT count(*) FROM ${bgPrefix}cache) AS n`,
          )
        ).rows[0].n,
      )
    await plant('old')
    await sleep(300)
    expect(await count()).toBe(0)
    await background.close()
    await plant('after-close')
    await sleep(300)
    expect(await count()).toBe(2)
  })
})

// The server's own certificate, trusted as the CA in the TLS tests, and the
// name it is valid for; null when the server has TLS off.
const serverTls = await serverTlsOf(DATABASE_URL)

describe.skipIf(!serverTls)('postgres over TLS (the server must have ssl on)', () => {
  /** DATABASE_URL for the certificate's name, with `query` appended. */
  const tlsUrl = (query, host = serverTls.name) => {
    const url = new URL(DATABASE_URL)
    url.hostname = host
    url.search = query
    return url.href
  }
  /** Whether the connections named `applicationName` use TLS, as the server sees them. */
  const sessionsUseTls = async (applicationName) => {
    const { rows } = await admin.query(
      'SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1',
      [applicationName],
    )
    expect(rows.length).toBeGreaterThan(0)
    return rows.every((row) => row.ssl)
  }

  it('checks the server certificate against tls.ca and serves all three stores over it', async () => {
    const name = `${RUN}_tls_require`
    const adapter = await freshAdapter('tls', {
      url: tlsUrl(`?sslmode=require&application_name=${name}`),
      tls: { ca: serverTls.ca },
    })
    try {
      expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
      expect((await adapter.circuitBreakerStore.recordFailure('k')).failureCount).toBe(1)
      const body = randomBytes(256 * 1024)
      await adapter.cacheStore.put('k', new Response(body), 60)
      expect(Buffer.from(await (await adapter.cacheStore.get('k')).arrayBuffer()).equals(body)).toBe(true)
      expect(await sessionsUseTls(name)).toBe(true)
    } finally {
      await adapter.close()
    }
  })

  it("the tls option alone asks for TLS, an sslmode in the url has the last word, and libpq's verify-full is read as require", async () => {
    for (const [query, expected] of [
      ['', true],
      ['sslmode=disable', false],
      ['sslmode=verify-full', true],
    ]) {
      const name = `${RUN}_tls_${query.replace(/\W/g, '_')}`
      const adapter = postgresAdapter({
        url: tlsUrl(`?${[query, `application_name=${name}`].filter(Boolean).join('&')}`),
        tls: { ca: serverTls.ca },
        tablePrefix: freshPrefix('tls_option'),
      })
      try {
        await adapter.ensureSchema()
        expect(await sessionsUseTls(name)).toBe(expected)
      } finally {
        await adapter.close()
      }
    }
  })

  it('refuses a certificate it cannot check: unknown issuer, or not valid for the name', async () => {
    const unknown = postgresAdapter({ url: tlsUrl('?sslmode=require') }) // Mozilla's roots only
    const misnamed = postgresAdapter({ url: tlsUrl('?sslmode=require', '127.0.0.1'), tls: { ca: serverTls.ca } })
    try {
      await expect(unknown.rateLimitStore.increment('k', 60)).rejects.toThrow(
        /^PostgresRateLimitStore: .*TLS handshake: invalid peer certificate: UnknownIssuer/,
      )
      await expect(misnamed.rateLimitStore.increment('k', 60)).rejects.toThrow(
        /^PostgresRateLimitStore: .*not valid for name "127.0.0.1"/,
      )
    } finally {
      await unknown.close()
      await misnamed.close()
    }
  })
})

describe('postgres lifecycle', () => {
  const tablePrefix = freshPrefix('lifecycle')

  it('close() is idempotent and later calls reject naming the store', async () => {
    const adapter = await adapterOn(tablePrefix)
    await adapter.rateLimitStore.increment('k', 60)
    await adapter.close()
    await adapter.close()
    await expect(adapter.rateLimitStore.increment('k', 60)).rejects.toThrow(
      /PostgresRateLimitStore: the store was closed/,
    )
    await expect(adapter.circuitBreakerStore.getState('k')).rejects.toThrow(/PostgresCircuitBreakerStore: .*closed/)
    await expect(adapter.cacheStore.get('k')).rejects.toThrow(/PostgresCacheStore: .*closed/)
    await expect(adapter.ensureSchema()).rejects.toThrow(/closed/)
  })

  it('stores built directly own their connections; closing one leaves the others working', async () => {
    const counter = new PostgresRateLimitStore({ tablePrefix, poolSize: 1 })
    const cache = new PostgresCacheStore({ tablePrefix })
    expect((await counter.increment('own', 60)).count).toBe(1)
    await counter.close()
    await expect(counter.increment('own', 60)).rejects.toThrow(/PostgresRateLimitStore: the store was closed/)
    expect(await cache.get('own')).toBeNull()
    cache.destroy()
    await expect(cache.get('own')).rejects.toThrow(/closed/)
  })

  it('a process holding an adapter (with background cleanup) exits by itself', async () => {
    const entry = fileURLToPath(new URL('../index.js', import.meta.url))
    const script = `
      const { postgresAdapter } = require(${JSON.stringify(entry)})
      const idle = postgresAdapter({ tablePrefix: ${JSON.stringify(tablePrefix)} })
      const busy = postgresAdapter({ tablePrefix: ${JSON.stringify(tablePrefix)}, cleanupIntervalMs: 20 })
      busy.rateLimitStore.increment('exit', 60).then((hit) => console.log('count', hit.count))
    `
    const started = Date.now()
    const { stdout } = await new Promise((resolve, reject) => {
      execFile(process.execPath, ['-e', script], { timeout: 15_000 }, (error, stdout, stderr) =>
        error ? reject(Object.assign(error, { stderr })) : resolve({ stdout }),
      )
    })
    expect(stdout.trim()).toBe('count 1')
    expect(Date.now() - started).toBeLessThan(10_000)
  })
})

describe('postgres with the database unreachable, stalled and back', () => {
  it('rejects quickly naming the store and the cause when nothing listens', async () => {
    const adapter = postgresAdapter({ url: 'postgres://postgres@127.0.0.1:1/postgres' })
    const started = Date.now()
    await expect(adapter.rateLimitStore.increment('k', 60)).rejects.toThrow(
      /^PostgresRateLimitStore: could not connect to PostgreSQL at 127\.0\.0\.1:1: .*refused/i,
    )
    await expect(adapter.circuitBreakerStore.recordFailure('k')).rejects.toThrow(
      /^PostgresCircuitBreakerStore: could not connect/,
    )
    await expect(adapter.cacheStore.put('k', new Response('x'), 60)).rejects.toThrow(
      /^PostgresCacheStore: could not connect/,
    )
    expect(Date.now() - started).toBeLessThan(2000)
    await adapter.close()
  })

  it('times out while the server stalls, and recovers once it answers or listens again', async () => {
    const proxy = await startProxy(new URL(DATABASE_URL))
    const tablePrefix = freshPrefix('proxy')
    const adapter = postgresAdapter({
      url: proxy.url,
      tablePrefix,
      poolSize: 2,
      connectTimeoutMs: 300,
      statementTimeoutMs: 300,
    })
    await adapter.ensureSchema()
    expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)

    // Stalled: bytes go nowhere, on open connections and on new ones.
    proxy.mode = 'stall'
    let started = Date.now()
    await expect(adapter.rateLimitStore.increment('k', 60)).rejects.toThrow(
      /^PostgresRateLimitStore: (PostgreSQL at 127\.0\.0\.1:\d+ did not answer within 300 ms|could not connect .* within 300 ms)/,
    )
    expect(Date.now() - started).toBeLessThan(300 + 300 + 400)
    started = Date.now()
    const stalled = await Promise.allSettled(
      Array.from({ length: 20 }, () => adapter.circuitBreakerStore.getState('k')),
    )
    expect(
      stalled.every((s) => s.status === 'rejected' && /^PostgresCircuitBreakerStore: /.test(s.reason.message)),
    ).toBe(true)
    expect(Date.now() - started).toBeLessThan(300 + 300 + 400)

    proxy.mode = 'forward'
    expect((await adapter.rateLimitStore.increment('k', 60)).count).toBeGreaterThanOrEqual(2)

    // Down: every connection dropped and nothing listening.
    await proxy.stop()
    await expect(adapter.cacheStore.get('k')).rejects.toThrow(/^PostgresCacheStore: /)
    await proxy.start()
    expect(await adapter.cacheStore.get('k')).toBeNull()
    expect((await adapter.circuitBreakerStore.recordFailure('k')).failureCount).toBe(1)

    await adapter.close()
    await proxy.stop()
  })
})

/**
 * A TCP proxy in front of the real server, to break the path to it on
 * demand: mode 'forward' passes bytes, 'stall' swallows them (a hung
 * network); stop() drops every connection and stops listening.
 */
async function startProxy(target) {
  const sockets = new Set()
  const proxy = {
    mode: 'forward',
    server: undefined,
    port: 0,
    get url() {
      const url = new URL(target)
      url.hostname = '127.0.0.1'
      url.port = String(proxy.port)
      return url.toString()
    },
    start() {
      proxy.server = net.createServer((client) => {
        const upstream = net.connect(Number(target.port || 5432), target.hostname)
        for (const [from, to] of [
          [client, upstream],
          [upstream, client],
        ]) {
          sockets.add(from)
          from.on('data', (chunk) => {
            if (proxy.mode === 'forward') to.write(chunk)
          })
          from.on('error', () => to.destroy())
          from.on('close', () => {
            sockets.delete(from)
            to.destroy()
          })
        }
      })
      return new Promise((resolve) => proxy.server.listen(proxy.port, '127.0.0.1', resolve)).then(() => {
        proxy.port = proxy.server.address().port
      })
    },
    stop() {
      for (const socket of sockets) socket.destroy()
      return new Promise((resolve) => proxy.server.close(() => resolve()))
    },
  }
  await proxy.start()
  return proxy
}
