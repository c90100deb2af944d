// The PostgreSQL stores through PgBouncer in transaction pooling mode (issue
// #13): a private pgbouncer (Debian's, installed if missing) in front of the
// real server, with few server connections, so consecutive transactions of
// one client land on different server connections. Statements prepared by
// name on one of them would be missing on the next; each call must carry its
// own statement and leave nothing behind on the server connection.
import { randomBytes } from 'node:crypto'
import { postgresAdapter as stomaPostgresAdapter } from '@homegrower-club/stoma/adapters/postgres'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { postgresAdapter } from '../index.mjs'
import { dropTables } from '../scripts/cleanup.mjs'
import { startPgbouncer } from '../scripts/pgbouncer.mjs'
import { readEachOther } from './support/postgres-compat.mjs'
import { serverTls } from './support/postgres-tls.mjs'
import { storeContract } from './support/store-contract.mjs'

const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres'
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const SERVER_CONNECTIONS = 5

const RUN = `tb${process.pid}_${Date.now().toString(36)}`
const prefixes = []
function freshPrefix(purpose) {
  const prefix = `${RUN}_${purpose}_`
  prefixes.push(prefix)
  return prefix
}

let bouncer
let direct // straight to PostgreSQL, never through the pooler
let pooled // pg through the pooler, as Stoma's adapter uses it
const adapters = []

beforeAll(async () => {
  direct = new pg.Pool({ connectionString: DATABASE_URL, max: 4 })
  bouncer = await startPgbouncer({ poolSize: SERVER_CONNECTIONS })
  pooled = new pg.Pool({ connectionString: bouncer.url, max: 10 })
}, 180_000) // apt-get may have to install pgbouncer first

afterAll(async () => {
  for (const adapter of adapters) await adapter.close()
  await pooled?.end()
  await bouncer?.stop()
  for (const prefix of prefixes) await dropTables(prefix, direct)
  await direct.end()
})

/** Our adapter through the pooler, on fresh tables made with ensureSchema(). */
async function throughPooler(purpose, options) {
  const tablePrefix = freshPrefix(purpose)
  const adapter = postgresAdapter({ url: bouncer.url, tablePrefix, ...options })
  adapters.push(adapter)
  await adapter.ensureSchema()
  return { adapter, tablePrefix }
}

storeContract('postgres through pgbouncer (transaction pooling)', {
  createStores: async () => (await throughPooler('contract')).adapter,
})

describe('postgres through pgbouncer: concurrency and data', () => {
  let adapter
  let tablePrefix
  beforeAll(async () => {
    ;({ adapter, tablePrefix } = await throughPooler('concurrent'))
  })

  it('500 concurrent increments on one key hand out 1..500, each exactly once', async () => {
    const settled = await Promise.allSettled(
      Array.from({ length: 500 }, () => adapter.rateLimitStore.increment('rl:500', 60)),
    )
    expect(settled.filter((s) => s.status === 'rejected').map((s) => s.reason.message)).toEqual([])
    const counts = settled.map((s) => s.value.count).sort((a, b) => a - b)
    expect(counts).toEqual(Array.from({ length: 500 }, (_, i) => i + 1))
    const { rows } = await direct.query(`SELECT count FROM ${tablePrefix}rate_limits WHERE key = 'rl:500'`)
    expect(rows).toEqual([{ count: 500 }])
  })

  it('200 concurrent recordFailure on one key leave 200', async () => {
    await Promise.all(Array.from({ length: 200 }, () => adapter.circuitBreakerStore.recordFailure('cb:200')))
    expect((await adapter.circuitBreakerStore.getState('cb:200')).failureCount).toBe(200)
    const { rows } = await direct.query(`SELECT failure_count FROM ${tablePrefix}circuit_breakers WHERE key = 'cb:200'`)
    expect(rows).toEqual([{ failure_count: 200 }])
  })

  it('a cache round trip keeps a binary body byte for byte, and the row is in the real table', async () => {
    const body = randomBytes(100 * 1024 + 7)
    await adapter.cacheStore.put('c:bin', new Response(body, { status: 201, headers: { 'x-a': '1' } }), 60)
    const hit = await adapter.cacheStore.get('c:bin')
    expect(hit.status).toBe(201)
    expect(hit.headers.get('x-a')).toBe('1')
    expect(Buffer.from(await hit.arrayBuffer()).equals(body)).toBe(true)
    const { rows } = await direct.query(`SELECT status, headers, body FROM ${tablePrefix}cache WHERE key = 'c:bin'`)
    expect(rows).toEqual([{ status: 201, headers: [['x-a', '1']], body: body.toString('base64') }])
    expect(await adapter.cacheStore.delete('c:bin')).toBe(true)
    expect(await adapter.cacheStore.get('c:bin')).toBeNull()
  })

  it('a mixed concurrent load of reads and grouped writes on several keys counts exactly', async () => {
    const calls = []
    for (let i = 0; i < 1200; i++) {
      const key = `mix:${i % 5}`
      if (i % 4 === 3) calls.push(adapter.circuitBreakerStore.getState(key))
      else if (i % 4 === 2) calls.push(adapter.cacheStore.put(key, new Response(`b${i}`), 60))
      else calls.push(adapter.rateLimitStore.increment(key, 60))
    }
    const settled = await Promise.allSettled(calls)
    expect(settled.filter((s) => s.status === 'rejected').map((s) => s.reason.message)).toEqual([])
    const { rows } = await direct.query(
      `SELECT key, count FROM ${tablePrefix}rate_limits WHERE key LIKE 'mix:%' ORDER BY key`,
    )
    expect(rows).toEqual(Array.from({ length: 5 }, (_, k) => ({ key: `mix:${k}`, count: 120 })))
  })

  it('statements other clients left prepared on the server connections change nothing', async () => {
    // Each pg client takes a server connection of its own in a transaction
    // (all begin before any commits) and prepares statements there by name,
    // the names tokio-postgres gives its own (s0, s1, …); they stay on those
    // server connections.
    const clients = await Promise.all(Array.from({ length: SERVER_CONNECTIONS }, () => pooled.connect()))
    try {
      await Promise.all(clients.map((client) => client.query('BEGIN')))
      for (const name of ['s0', 's1', 's2', 's3']) {
        await Promise.all(
          clients.map((client) => client.query({ name, text: 'SELECT 42 AS count, 0::bigint AS reset_at' })),
        )
      }
      await Promise.all(clients.map((client) => client.query('COMMIT')))
    } finally {
      for (const client of clients) client.release(true) // pg would reuse the names
    }
    const hits = await Promise.all(Array.from({ length: 50 }, () => adapter.rateLimitStore.increment('rl:names', 60)))
    expect(hits.map((h) => h.count).sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1))
  })
})

describe("postgres through pgbouncer: same tables as Stoma's adapter on pg through the same pooler", () => {
  let ours
  let stoma
  let prefix
  beforeAll(async () => {
    ;({ adapter: ours, tablePrefix: prefix } = await throughPooler('compat'))
    stoma = stomaPostgresAdapter({ client: pooled, tablePrefix: prefix })
  })

  readEachOther(() => ({ ours, stoma, direct, prefix }))
})

describe('postgres through pgbouncer: session state, schema, timeouts, cleanup', () => {
  /**
   * A trigger on `tablePrefix`'s rate_limits that logs the
   * synchronous_commit each write ran with (inside the write's transaction,
   * so it sees a transaction-local setting); every upsert fires BEFORE INSERT
   * once.
   */
  async function logCommitSetting(tablePrefix) {
    await direct.query(`
      CREATE TABLE ${tablePrefix}commit_log (setting text);
      CREATE FUNCTION ${tablePrefix}log_commit() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        INSERT INTO ${tablePrefix}commit_log VALUES (current_setting('synchronous_commit'));
        RETURN NEW;
      END $$;
      CREATE TRIGGER log_commit BEFORE INSERT ON ${tablePrefix}rate_limits
        FOR EACH ROW EXECUTE FUNCTION ${tablePrefix}log_commit();`)
    return async () => {
      const { rows } = await direct.query(
        `SELECT setting, count(*)::int AS n FROM ${tablePrefix}commit_log GROUP BY setting ORDER BY setting`,
      )
      await direct.query(`TRUNCATE ${tablePrefix}commit_log`)
      return Object.fromEntries(rows.map((r) => [r.setting, r.n]))
    }
  }

  afterAll(async () => {
    for (const prefix of prefixes) {
      await direct.query(
        `DROP TABLE IF EXISTS ${prefix}commit_log; DROP FUNCTION IF EXISTS ${prefix}log_commit() CASCADE`,
      )
    }
  })

  it('synchronousCommit: false holds for every write, alone or grouped, and leaves no server connection changed', async () => {
    const { adapter, tablePrefix } = await throughPooler('async_commit', { synchronousCommit: false })
    const settings = await logCommitSetting(tablePrefix)
    for (let i = 0; i < 5; i++) await adapter.rateLimitStore.increment(`alone:${i}`, 60) // one at a time: alone
    expect(await settings()).toEqual({ off: 5 })
    await Promise.all(Array.from({ length: 300 }, (_, i) => adapter.rateLimitStore.increment(`group:${i % 7}`, 60)))
    expect(await settings()).toEqual({ off: 300 })

    // The durable default writes with the server's setting, and the
    // setting above stayed in its transactions: every server connection of
    // the pooler still has synchronous_commit on.
    const durable = postgresAdapter({ url: bouncer.url, tablePrefix })
    adapters.push(durable)
    await Promise.all(Array.from({ length: 40 }, (_, i) => durable.rateLimitStore.increment(`group:${i % 7}`, 60)))
    expect(await settings()).toEqual({ on: 40 })
    const clients = await Promise.all(Array.from({ length: SERVER_CONNECTIONS * 2 }, () => pooled.connect()))
    try {
      const seen = await Promise.all(
        clients.map(async (client) => {
          await client.query('BEGIN') // holds a server connection until COMMIT
          const { rows } = await client.query("SELECT current_setting('synchronous_commit') AS s")
          await client.query('COMMIT')
          return rows[0].s
        }),
      )
      expect(new Set(seen)).toEqual(new Set(['on']))
    } finally {
      for (const client of clients) client.release()
    }
  })

  it('ensureSchema() from several adapters at once, through the pooler, creates the tables once', async () => {
    const tablePrefix = freshPrefix('schema')
    const many = Array.from({ length: 6 }, () => postgresAdapter({ url: bouncer.url, tablePrefix }))
    adapters.push(...many)
    const settled = await Promise.allSettled(many.map((a) => a.ensureSchema()))
    expect(settled.filter((s) => s.status === 'rejected').map((s) => s.reason.message)).toEqual([])
    const { rows } = await direct.query('SELECT count(*)::int AS n FROM pg_tables WHERE tablename LIKE $1', [
      `${tablePrefix}%`,
    ])
    // Stoma's three and our sliding windows.
    expect(rows[0].n).toBe(4)
    expect((await many[0].rateLimitStore.increment('k', 60)).count).toBe(1)
  })

  it('a statement held up past statementTimeoutMs rejects naming the option; the store recovers', async () => {
    const { adapter, tablePrefix } = await throughPooler('timeout', { statementTimeoutMs: 300 })
    await adapter.rateLimitStore.increment('held', 60)
    const holder = await direct.connect()
    try {
      await holder.query('BEGIN')
      await holder.query(`SELECT * FROM ${tablePrefix}rate_limits WHERE key = 'held' FOR UPDATE`)
      const started = Date.now()
      await expect(adapter.rateLimitStore.increment('held', 60)).rejects.toThrow(
        /^PostgresRateLimitStore: PostgreSQL at 127\.0\.0\.1:\d+ did not answer within 300 ms \(statementTimeoutMs\)/,
      )
      expect(Date.now() - started).toBeLessThan(1000)
      expect((await adapter.rateLimitStore.increment('free', 60)).count).toBe(1)
    } finally {
      await holder.query('ROLLBACK')
      holder.release()
    }
    expect((await adapter.rateLimitStore.increment('held', 60)).count).toBeGreaterThanOrEqual(2)
  })

  it('the background cleanup deletes expired rows through the pooler', async () => {
    const { tablePrefix } = await throughPooler('cleanup', { cleanupIntervalMs: 50 })
    await direct.query(`INSERT INTO ${tablePrefix}rate_limits (key, count, reset_at) VALUES ('old', 1, 1)`)
    await direct.query(`INSERT INTO ${tablePrefix}cache (key, status, expires_at) VALUES ('old', 200, 1)`)
    const left = async () =>
      (
        await direct.query(
          `SELECT (SELECT count(*) FROM ${tablePrefix}rate_limits) + (SELECT count(*) FROM ${tablePrefix}cache) AS n`,
        )
      ).rows[0].n
    for (let i = 0; i < 40 && Number(await left()) > 0; i++) await sleep(50)
    expect(Number(await left())).toBe(0)
  })
})

// TLS between us and the pooler: a second pgbouncer that refuses clients
// without TLS, serving the PostgreSQL server's own certificate.
const tls = await serverTls(DATABASE_URL)

describe.skipIf(!tls)('postgres through pgbouncer over TLS', () => {
  let secure
  beforeAll(async () => {
    secure = await startPgbouncer({
      poolSize: 2,
      settings: {
        client_tls_sslmode: 'require',
        client_tls_cert_file: tls.certFile,
        client_tls_key_file: tls.keyFile,
      },
    })
  }, 60_000)
  afterAll(() => secure?.stop())

  it('connects with sslmode=require and tls.ca, and a client without TLS is refused', async () => {
    const url = (sslmode) => {
      const u = new URL(secure.url)
      u.hostname = tls.name
      u.search = `?sslmode=${sslmode}`
      return u.href
    }
    const { adapter } = await throughPooler('tls', { url: url('require'), tls: { ca: tls.ca } })
    expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
    const body = randomBytes(64 * 1024)
    await adapter.cacheStore.put('k', new Response(body), 60)
    expect(Buffer.from(await (await adapter.cacheStore.get('k')).arrayBuffer()).equals(body)).toBe(true)

    const plain = postgresAdapter({ url: url('disable'), tablePrefix: freshPrefix('tls_plain') })
    adapters.push(plain)
    await expect(plain.rateLimitStore.increment('k', 60)).rejects.toThrow(/^PostgresRateLimitStore: .*(SSL|TLS)/i)
  })
})
